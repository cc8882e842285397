"""tokenizer.py against Hugging Face `tokenizers`: every fixture case must give HF's ids and decoded text exactly.

Fixtures, all in tests/fixtures/tokenizers (see its README.md): the real GPT-2, SmolLM2 and stories260K
vocabularies with HF's ids, and our own small ones in the Llama-3 / Qwen2 / Metaspace / Llama-2 styles and
variants.jsonl, made by tests/fixtures/make_tokenizer_fixtures.py with `tokenizers` 0.23.
"""
import copy
import functools
import itertools
import json
import random
import re
import time
import unicodedata

import pytest
from conftest import HERE_FIXTURES, fixture

from tokenizer import WHITE_SPACE, Tokenizer, translate_regex

OURS = HERE_FIXTURES / "tokenizers"
VARIANTS = [json.loads(line) for line in open(OURS / "variants.jsonl", encoding="utf-8")]


@functools.cache
def load(path) -> Tokenizer:
    return Tokenizer.from_file(path)


def read_cases(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def assert_cases(tok: Tokenizer, cases: list[dict], label: str):
    """Fails at the first case whose encode or decode differs from HF, showing the text and both results."""
    for i, case in enumerate(cases):
        ids = tok.encode(case["text"])
        assert ids == case["ids"], f"{label} case {i} {case['text'][:80]!r}: encode\n ours {ids}\n HF   {case['ids']}"
        text = tok.decode(case["ids"])
        assert text == case["decoded"], f"{label} case {i}: decode\n ours {text!r}\n HF   {case['decoded']!r}"


def apply_patch(base: dict, patch: dict) -> dict:
    """variants.jsonl's patch: replace top-level fields; under "model", keys ending in "+" extend the field."""
    spec = copy.deepcopy(base)
    for key, value in patch.items():
        if key != "model":
            spec[key] = value
            continue
        for field, v in value.items():
            if field.endswith("+"):
                target = spec["model"][field[:-1]]
                target.update(v) if isinstance(target, dict) else target.extend(v)
            else:
                spec["model"][field] = v
    return spec


def write_spec(tmp_path, spec) -> str:
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    return str(path)


# --- parity with HF on the fixtures ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpt2", "smollm2", "stories260K"])
def test_real_vocabulary_cases_match_hf(name):
    assert_cases(load(fixture("tokenizers", name, "tokenizer.json")), read_cases(OURS / name / "cases.jsonl"), name)


@pytest.mark.parametrize("name", ["llama3-bpe", "qwen2-bpe", "metaspace-bpe", "llama2-bpe"])
def test_generated_cases_match_hf(name):
    tok = load(OURS / name / "tokenizer.json")
    assert_cases(tok, read_cases(OURS / name / "cases.jsonl"), name)
    for case in read_cases(OURS / name / "decode_cases.jsonl"):  # broken UTF-8, special tokens, unknown ids
        assert tok.decode(case["ids"]) == case["decoded"], f"{name} decode {case['ids']}"


@pytest.mark.parametrize("variant", VARIANTS, ids=[v["name"] for v in VARIANTS])
def test_variant_cases_match_hf(variant, tmp_path):
    base = json.loads((OURS / variant["base"] / "tokenizer.json").read_text(encoding="utf-8"))
    tok = Tokenizer.from_file(write_spec(tmp_path, apply_patch(base, variant["patch"])))
    assert_cases(tok, variant["cases"], variant["name"])


def test_stories260K_greedy_prompts_and_continuations():
    folder = fixture("models", "stories260K")
    tok = Tokenizer.from_file(folder / "tokenizer.json")
    for run in json.loads((folder / "greedy.json").read_text()):
        assert tok.encode(run["prompt"], bos=True) == run["prompt_ids"], run["prompt"]
        assert tok.decode(run["new_ids"]) == run["new_text"]  # HF drops the continuation's leading space too


# --- special ids and vocabulary ------------------------------------------------------------------------------


@pytest.mark.parametrize("name, bos, eos, size", [("gpt2", 50256, 50256, 50257), ("smollm2", 1, 2, 49152),
                                                   ("llama2-bpe", 1, 2, 1404), ("stories260K", 1, 2, 512)])
def test_bos_eos_by_convention(name, bos, eos, size):
    tok = load(fixture("tokenizers", name, "tokenizer.json"))
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (bos, eos, None, size)
    assert tok.encode("Hi there", bos=True, eos=True) == [bos, *tok.encode("Hi there"), eos]


@pytest.mark.parametrize("name, adds_bos", [("llama2-bpe", True), ("stories260K", True), ("smollm2", False),
                                             ("gpt2", False)])
def test_add_bos_follows_the_post_processor(name, adds_bos):
    """Llama-2's TemplateProcessing puts <s> first (HF's add_special_tokens=True); byte-level ones add nothing."""
    assert load(fixture("tokenizers", name, "tokenizer.json")).add_bos is adds_bos


def test_add_bos_token_in_tokenizer_config_wins(tmp_path):
    spec = json.loads((OURS / "llama2-bpe" / "tokenizer.json").read_text(encoding="utf-8"))
    path = write_spec(tmp_path, spec)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False}))
    assert Tokenizer.from_file(path).add_bos is False


def test_tokenizer_config_and_explicit_names_win(tmp_path):
    spec = json.loads((OURS / "metaspace-bpe" / "tokenizer.json").read_text(encoding="utf-8"))
    path = write_spec(tmp_path, spec)
    assert (Tokenizer.from_file(path).bos_id, Tokenizer.from_file(path).eos_id) == (1, 2)  # <s>, </s> by convention
    config = {"bos_token": {"content": "</s>", "__type": "AddedToken"}, "eos_token": "<unk>", "pad_token": "<s>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = Tokenizer.from_file(path)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (2, 0, 1)
    assert Tokenizer.from_file(path, bos="<s>", eos="<0x0A>").bos_id == 1
    assert Tokenizer.from_file(path, bos="<s>", eos="<0x0A>").eos_id == spec["model"]["vocab"]["<0x0A>"]
    with pytest.raises(ValueError, match="'<nope>' is not a token"):
        Tokenizer.from_file(path, bos="<nope>")


def test_qwen2_config_null_bos():
    tok = load(OURS / "qwen2-bpe" / "tokenizer.json")  # its config: bos null, eos <|im_end|>, pad <|endoftext|>
    spec = json.loads((OURS / "qwen2-bpe" / "tokenizer.json").read_text(encoding="utf-8"))
    added = {t["content"]: t["id"] for t in spec["added_tokens"]}
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (None, added["<|im_end|>"], added["<|endoftext|>"])
    assert tok.token_to_id("<|im_end|>") == added["<|im_end|>"]
    assert tok.id_to_token(added["<|im_start|>"]) == "<|im_start|>"
    assert tok.encode("hi", eos=True)[-1] == added["<|im_end|>"]
    with pytest.raises(ValueError, match="no bos token"):
        tok.encode("hi", bos=True)


def test_token_id_lookups_follow_hf():
    """Llama-2 style (normalized added tokens): HF's token_to_id and id_to_token, recorded in lookups.json."""
    tok = load(OURS / "llama2-bpe" / "tokenizer.json")
    lookups = json.loads((OURS / "llama2-bpe" / "lookups.json").read_text(encoding="utf-8"))
    assert [tok.token_to_id(t) for t in lookups["token_to_id"]] == list(lookups["token_to_id"].values())
    assert [tok.id_to_token(int(i)) for i in lookups["id_to_token"]] == list(lookups["id_to_token"].values())
    assert tok.token_to_id("<s>") == 1 and tok.token_to_id("<0x0A>") == 13 and tok.token_to_id("not a token") is None
    assert tok.id_to_token(1) == "▁<s>"  # HF returns a normalized added token in normalized form
    assert tok.id_to_token(tok.vocab_size) is None
    the = tok.token_to_id("▁the")
    assert tok.decode([1, 99999, the]) == "<s> the"  # unknown ids are skipped, special tokens kept (HF's, in
    # decode_cases.jsonl)


# --- the algorithms on their own -------------------------------------------------------------------------------


def test_translated_classes_equal_unicode_definitions():
    """\\p{..}, \\P{..}, \\s and \\S inside and outside classes, checked at every category boundary."""
    # Oniguruma's \s is White_Space = Python's isspace without the information separators \x1c-\x1f
    assert set(WHITE_SPACE) == {chr(c) for c in range(0x110000) if chr(c).isspace()} - set("\x1c\x1d\x1e\x1f")
    every = [unicodedata.category(chr(cp)) for cp in range(0x110000)]
    # the whole BMP, and above it every code point next to a category change (plus 1 in 64; keeps it fast)
    picked = [cp for cp in range(0x110000) if cp < 0x10000 or cp % 64 == 0 or every[cp] != every[cp - 1]
              or every[cp] != every[min(cp + 1, 0x10FFFF)]]
    text, categories = "".join(map(chr, picked)), [every[cp] for cp in picked]
    for pattern, keep in [
        (r"\p{L}", lambda c, cat: cat[0] == "L"),
        (r"\P{N}", lambda c, cat: cat[0] != "N"),
        (r"\p{^Lu}", lambda c, cat: cat != "Lu"),
        (r"[^\s\p{L}\p{N}]", lambda c, cat: c not in WHITE_SPACE and cat[0] not in "LN"),
        (r"[\P{L}\p{Lu}]", lambda c, cat: cat[0] != "L" or cat == "Lu"),
        (r"\S", lambda c, cat: c not in WHITE_SPACE),
        (r"[^\S\n]", lambda c, cat: c in WHITE_SPACE and c != "\n"),
    ]:
        expected = "".join(itertools.compress(text, [not keep(c, cat) for c, cat in zip(text, categories)]))
        assert re.sub(translate_regex(pattern), "", text) == expected, pattern


def naive_bpe(ids, merges):
    """Textbook BPE: merge the lowest-rank adjacent pair, leftmost first, until none is left."""
    ids = list(ids)
    while ranked := [(merges[pair][0], i) for i, pair in enumerate(zip(ids, ids[1:])) if pair in merges]:
        _, i = min(ranked)
        ids[i:i + 2] = [merges[ids[i], ids[i + 1]][1]]
    return ids


def test_heap_merge_and_chunking_equal_naive_bpe():
    """stories260K has no pre-tokenizer, so encode() runs the heap merge on "▁"-chunks of the whole text."""
    tok = load(fixture("tokenizers", "stories260K", "tokenizer.json"))
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice("abdehilmnorstuwy ") for _ in range(rng.randint(1, 60)))
        symbols = [tok.token_to_id(c) for c in "▁" + text.replace(" ", "▁")]
        assert tok.encode(text) == naive_bpe(symbols, tok.model.merges), text


def test_long_word_is_not_quadratic():
    tok = load(OURS / "llama2-bpe" / "tokenizer.json")
    rng = random.Random(1)
    word = "".join(rng.choice("etaoinshr") for _ in range(30_000))  # frequent letters: ~10,000 merges
    start = time.perf_counter()
    ids = tok.encode(word)  # one 30,000-char BPE word: a quadratic merge loop takes minutes
    assert time.perf_counter() - start < 5 and tok.decode(ids) == word and len(ids) < len(word)


# --- bad input: one clear error naming the file and the field ---------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Tokenizer.from_file(tmp_path / "nowhere" / "tokenizer.json")


@pytest.mark.parametrize("content, message", [("{not json", "not valid JSON"), ("[1, 2]", "not a JSON object")])
def test_invalid_json(tmp_path, content, message):
    path = tmp_path / "tokenizer.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(f"{path}: ") + ".*" + message):
        Tokenizer.from_file(path)


@pytest.mark.parametrize("patch, message", [
    ({"model": {"type": "WordPiece"}}, "model type 'WordPiece' is not supported"),
    ({"pre_tokenizer": {"type": "Whitespace"}}, "pre_tokenizer type 'Whitespace' is not supported"),
    ({"normalizer": {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "BertNormalizer"}]}},
     "normalizer.normalizers[1] type 'BertNormalizer' is not supported"),
    ({"decoder": {"type": "Sequence", "decoders": [{"type": "CTC"}]}},
     "decoder.decoders[0] type 'CTC' is not supported"),
    ({"pre_tokenizer": {"type": "Split", "pattern": {"Regex": r"\p{Han}+"}, "behavior": "Isolated"}},
     "pre_tokenizer.pattern: regex '\\\\p{Han}+' is not supported"),
    ({"pre_tokenizer": {"type": "Split", "pattern": {"Regex": " "}, "behavior": "Sideways"}},
     "pre_tokenizer.behavior 'Sideways'"),
    ({"pre_tokenizer": {"type": "Metaspace"}}, "pre_tokenizer.replacement is missing"),
    ({"normalizer": {"prepend": "▁"}}, "normalizer.type is missing"),
    ({"model": {"vocab": ["a", "b"]}}, "model.vocab is not a JSON object"),
    ({"model": {"merges+": [["▁", "qq"]]}}, "model.merges[541] ['▁', 'qq']: 'qq' is not in the vocab"),
    ({"model": {"dropout": 0.1}}, "model.dropout is not supported"),
    ({"model": {"unk_token": "<missing>"}}, "model.unk_token '<missing>' is not in the vocab"),
])
def test_unsupported_or_malformed_fields(tmp_path, patch, message):
    base = json.loads((OURS / "metaspace-bpe" / "tokenizer.json").read_text(encoding="utf-8"))
    path = write_spec(tmp_path, apply_patch(base, patch))
    with pytest.raises(ValueError) as error:
        Tokenizer.from_file(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value), str(error.value)
