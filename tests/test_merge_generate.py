"""merge.py (an adapter folded into a plain Hugging Face model folder) and generate.py (a prompt, streamed).

merge.py's output is checked against logits that transformers + PEFT computed with PEFT's own adapter
files (tests/fixtures/peft), and for PERA, which PEFT lacks, against the unmerged adapter; generate.py's
greedy text against the ids transformers generated for stories260K (tests/fixtures/models/stories260K/greedy.json).
"""
import io
import json
import random

import pytest
import torch
from conftest import HERE_FIXTURES, fixture

import generate
import merge
from model import Transformer
from support import adapters, commonsense
from support.safetensors_io import load_safetensors
from tokenizer import BYTE_TO_CHAR, Tokenizer


@pytest.fixture(scope="module")
def stories_dir():
    return fixture("models", "stories260K")


def input_ids(model_dir):
    return torch.tensor(json.loads((model_dir / "input_ids.json").read_text()))


def random_adapter(model_dir, folder, method, seed=0, **kw):
    """An adapter folder for model_dir with random, non-zero A, B (h), as train.py would write it."""
    model = Transformer.from_pretrained(model_dir)
    spec = adapters.settings(method, 4, **kw)
    adapters.inject(model, spec)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    adapters.save_adapter(model, folder, spec, base_model=str(model_dir))
    return folder


# -----------------------------------------------------------------------------
# merge.py

@pytest.mark.parametrize("method", ["lora", "hira", "dora"])
def test_merged_folder_gives_the_logits_transformers_and_peft_compute(tmp_path, method):
    base = fixture("models", "tiny-llama")
    out = tmp_path / "merged"
    merge.main(["--adapter", str(HERE_FIXTURES / "peft" / method), "--model", str(base), "--out", str(out)])
    reference = load_safetensors(HERE_FIXTURES / "peft" / method / "reference.safetensors")["logits"]
    with torch.no_grad():
        assert (Transformer.from_pretrained(out)(input_ids(base)) - reference).abs().max() < 1e-4
    # what transformers reads: the base's own config (so the plain architecture) and the base's tensor names
    assert (out / "config.json").read_bytes() == (base / "config.json").read_bytes()
    ours, theirs = load_safetensors(out / "model.safetensors"), load_safetensors(base / "model.safetensors")
    assert {k: (t.shape, t.dtype) for k, t in ours.items()} == {k: (t.shape, t.dtype) for k, t in theirs.items()}
    assert not (out / "adapter_config.json").exists()  # transformers would take the folder for an adapter
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # no temporary folder left behind


@pytest.mark.parametrize("kw", [{}, {"terms": "cross"}, {"degree": 3}], ids=["all", "cross", "degree3"])
def test_merged_pera_is_unmerged_pera_and_keeps_the_tokenizer(tmp_path, stories_dir, kw):
    adapter = random_adapter(stories_dir, tmp_path / "pera", "pera", **kw)
    out = tmp_path / "merged"
    info = merge.main(["--adapter", str(adapter), "--out", str(out)])  # the base model from adapter_config.json
    assert info["merged_layers"] == 5 * 5 and info["copied_files"] == ["tokenizer.json", "tokenizer_config.json"]
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (stories_dir / name).read_bytes()
    unmerged = Transformer.from_pretrained(stories_dir)
    adapters.load_adapter(unmerged, adapter)
    ids = input_ids(stories_dir)
    with torch.no_grad():
        expected, base = unmerged(ids), Transformer.from_pretrained(stories_dir)(ids)
        merged = Transformer.from_pretrained(out)(ids)
    assert (merged - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert (base - expected).abs().max() > 0.1  # the adapter does change the model
    assert json.loads((out / "merged_from.json").read_text())["settings"] == adapters.settings("pera", 4, **kw)


@pytest.mark.parametrize("method", ["lora", "hira", "pera", "dora", "loran", "hilora"])
def test_merged_qwen2_keeps_its_biases_and_gives_the_adapted_logits(tmp_path, method):
    base = HERE_FIXTURES / "models" / "tiny-qwen2"  # q/k/v biases, tied embeddings
    adapter = random_adapter(base, tmp_path / method, method, **({"lora_rank": 3} if method == "hilora" else {}))
    merge.main(["--adapter", str(adapter), "--out", str(tmp_path / "merged")])
    unmerged = Transformer.from_pretrained(base)
    adapters.load_adapter(unmerged, adapter)
    with torch.no_grad():
        expected, merged = unmerged(input_ids(base)), Transformer.from_pretrained(tmp_path / "merged")(input_ids(base))
    assert (merged - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert (tmp_path / "merged" / "config.json").read_bytes() == (base / "config.json").read_bytes()
    tensors, stored = load_safetensors(tmp_path / "merged" / "model.safetensors"), load_safetensors(base / "model.safetensors")
    assert tensors.keys() == stored.keys() and torch.equal(tensors["model.layers.0.self_attn.q_proj.bias"],
                                                           stored["model.layers.0.self_attn.q_proj.bias"])


def test_merge_to_bf16_rounds_once_and_says_so_in_the_config(tmp_path, stories_dir):
    adapter = random_adapter(stories_dir, tmp_path / "lora", "lora")
    merge.main(["--adapter", str(adapter), "--out", str(tmp_path / "f32")])
    merge.main(["--adapter", str(adapter), "--out", str(tmp_path / "bf16"), "--dtype", "bf16"])
    f32, bf16 = load_safetensors(tmp_path / "f32" / "model.safetensors"), load_safetensors(tmp_path / "bf16" / "model.safetensors")
    assert f32.keys() == bf16.keys() and all(t.dtype == torch.bfloat16 for t in bf16.values())
    assert all(torch.equal(bf16[k], f32[k].to(torch.bfloat16)) for k in f32)  # W0 + ΔW in float32, rounded once
    config, base_config = (json.loads((d / "config.json").read_text()) for d in (tmp_path / "bf16", stories_dir))
    changed = {k for k in config.keys() | base_config.keys() if config.get(k) != base_config.get(k)}
    assert changed <= {"dtype", "torch_dtype"} and "bfloat16" in (config.get("dtype"), config.get("torch_dtype"))


def test_merge_errors_are_one_line_and_write_nothing(tmp_path, stories_dir, capsys, monkeypatch):
    adapter = random_adapter(stories_dir, tmp_path / "pera", "pera")
    tiny = fixture("models", "tiny-llama")
    cases = [
        (["--adapter", str(tmp_path), "--out", str(tmp_path / "x")], "no adapter_config.json"),
        (["--adapter", str(adapter), "--model", str(tiny), "--out", str(tmp_path / "x")], "does not fit the model"),
        (["--adapter", str(adapter), "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")],
         "no model.safetensors"),
        (["--adapter", str(adapter), "--out", str(adapter)], "already exists"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            merge.main(argv)
        assert str(e.value).startswith("error: ") and message in str(e.value) and "\n" not in str(e.value)
    # interrupted while writing the weights: no folder appears, and no temporary one is left
    def interrupted(*args, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(merge, "save_safetensors", interrupted)
    with pytest.raises(KeyboardInterrupt):
        merge.main(["--adapter", str(adapter), "--out", str(tmp_path / "x")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pera"]


# -----------------------------------------------------------------------------
# generate.py

def test_greedy_output_is_the_models_own_greedy_continuation(stories_dir):
    """transformers' greedy ids for stories260K, through the CLI: same tokens, and the streamed text is their decode."""
    tokenizer = Tokenizer.from_file(stories_dir / "tokenizer.json")
    for case in json.loads((stories_dir / "greedy.json").read_text())[:2]:
        out = io.StringIO()
        ids, text = generate.main(["--model", str(stories_dir), "--raw", case["prompt"], "--device", "cpu",
                                   "--max-new-tokens", str(len(case["new_ids"]))], out=out)
        assert tokenizer.encode(case["prompt"], bos=True) == case["prompt_ids"]
        assert ids == case["new_ids"]
        assert out.getvalue() == text + "\n" and text == tokenizer.decode(ids) == case["new_text"]


def test_the_text_goes_in_the_training_prompt_with_the_adapter(tmp_path, stories_dir):
    adapter = random_adapter(stories_dir, tmp_path / "pera", "pera", dropout=0.1)
    out = io.StringIO()
    ids, text = generate.main(["--adapter", str(adapter), "Is the sky blue?", "--max-new-tokens", "12",
                               "--device", "cpu"], out=out)
    model, tokenizer = Transformer.from_pretrained(stories_dir), Tokenizer.from_file(stories_dir / "tokenizer.json")
    adapters.load_adapter(model, adapter)
    prompt = tokenizer.encode(commonsense.prompt({"instruction": "Is the sky blue?"}), bos=True)
    expected = model.generate(torch.tensor([prompt]), 12, eos_id=tokenizer.eos_id)[0, len(prompt):].tolist()
    expected = expected[:expected.index(tokenizer.eos_id)] if tokenizer.eos_id in expected else expected
    assert ids == expected and out.getvalue() == tokenizer.decode(expected) + "\n"


def test_sampling_with_top_k_1_is_greedy_and_a_seed_repeats(stories_dir):
    run = lambda *extra: generate.main(["--model", str(stories_dir), "--raw", "One day, a", "--device", "cpu",  # noqa: E731
                                        "--max-new-tokens", "20", *extra], out=io.StringIO())[0]
    greedy = run()
    assert run("--temperature", "0.9", "--top-k", "1") == greedy
    assert run("--temperature", "1.5", "--seed", "3") == run("--temperature", "1.5", "--seed", "3") != greedy


@pytest.mark.parametrize("tokenizer_dir", [("tokenizers", "smollm2"), ("models", "stories260K")],
                         ids=["byte-level", "byte-fallback"])
def test_streamed_pieces_are_whole_characters_and_add_up_to_the_decode(tokenizer_dir):
    """Characters of 2-4 UTF-8 bytes split over several tokens are shown once complete, never as U+FFFD."""
    tokenizer = Tokenizer.from_file(fixture(*tokenizer_dir, "tokenizer.json"))
    text = "Café, naïve, Ελληνικά, 日本語のテキスト, emoji 🙂👍🏽 and a family 👨‍👩‍👧."
    ids = tokenizer.encode(text)
    assert any(tokenizer.decode(ids[:i]).endswith("\ufffd") for i in range(1, len(ids)))  # characters do split
    stream = generate.TextStream(tokenizer)
    pieces = [stream.push(i) for i in ids] + [stream.end()]
    assert not any("\ufffd" in p for p in pieces)
    assert "".join(pieces) == tokenizer.decode(ids) == text
    assert sum(1 for p in pieces if p) > len(text) // 4  # it streams: many pieces, not the text at the end

    broken = generate.TextStream(tokenizer)  # a response cut inside a character still shows all it decodes to
    cut = ids[:next(i for i in range(len(ids)) if tokenizer.decode(ids[:i + 1]).endswith("\ufffd")) + 1]
    assert "".join([broken.push(i) for i in cut] + [broken.end()]) == tokenizer.decode(cut)


STREAM_TEXT = "Café, naïve, Ελληνικά, 日本語のテキスト, emoji 🙂👍🏽, a family 👨‍👩‍👧, ∑∫√ 한국어 עברית\n\tend"


def id_sequences(tokenizer, n, seed):
    """n id sequences of 1 to 12 ids: uniform over the vocabulary (sampling at a high temperature), mostly single
    bytes (<0xNN> or byte-level) among pieces of multilingual text and any id, and a random text's own encoding
    (what greedy decoding of a model that learned the text emits)."""
    rng = random.Random(seed)
    vocab = max(tokenizer.id_to_str) + 1
    byte_ids = [tokenizer.token_to_id(f"<0x{b:02X}>") for b in range(256)]
    if None in byte_ids:  # byte-level: a byte is a character of its own (SmolLM2's vocabulary lacks a few)
        byte_ids = [i for i in map(tokenizer.token_to_id, BYTE_TO_CHAR.values()) if i is not None]
    assert len(byte_ids) > 200 and None not in byte_ids
    text_ids = tokenizer.encode(STREAM_TEXT)
    for k in range(n):
        length = rng.randint(1, 12)
        if k % 3 == 0:
            yield [rng.randrange(vocab) for _ in range(length)]
        elif k % 3 == 1:
            yield [rng.choice(byte_ids) if r < 0.5 else rng.choice(text_ids) if r < 0.85 else rng.randrange(vocab)
                   for r in (rng.random() for _ in range(length))]
        else:
            yield tokenizer.encode("".join(rng.choice(STREAM_TEXT) for _ in range(length)))


@pytest.mark.parametrize("name", ["stories260K", "llama2-bpe", "metaspace-bpe", "gpt2", "llama3-bpe", "qwen2-bpe", "smollm2"])
def test_the_stream_is_the_decode_for_any_ids(name):
    """Property: for 2,100 id sequences, the streamed pieces add up to tokenizer.decode(ids) exactly, with byte
    fallback too, where one more byte token can turn text decoded so far into U+FFFDs (<0xC3><0xA9> is "é",
    <0xC3><0xA9><0xA9> three U+FFFD); and no piece is ever taken back, so the text shown so far is always a
    prefix of the decode of the ids so far."""
    tokenizer = Tokenizer.from_file(fixture("tokenizers", name, "tokenizer.json"))
    changed = 0
    for ids in id_sequences(tokenizer, 2100, seed=sum(map(ord, name))):
        stream, shown, decoded = generate.TextStream(tokenizer), "", ""
        for k, token in enumerate(ids):
            shown += stream.push(token)
            before, decoded = decoded, tokenizer.decode(ids[:k + 1])
            assert decoded.startswith(shown), ids[:k + 1]
            changed += not decoded.startswith(before.rstrip("\ufffd"))
        assert shown + stream.end() == decoded, ids
    assert (changed > 0) == (name in ("stories260K", "llama2-bpe", "metaspace-bpe"))  # where a later token does rewrite


def test_what_generate_prints_is_the_decode_of_its_ids(stories_dir):
    """Sampled at temperature 20 with byte fallback, the response is mostly byte tokens that do not form UTF-8."""
    tokenizer = Tokenizer.from_file(stories_dir / "tokenizer.json")
    out = io.StringIO()
    ids, text = generate.main(["--model", str(stories_dir), "--raw", "Once upon a time", "--temperature", "20",
                               "--seed", "2", "--max-new-tokens", "40", "--device", "cpu"], out=out)
    assert len(ids) == 40 and out.getvalue() == tokenizer.decode(ids) + "\n" and len(text) > 40


def test_generate_errors_are_one_line(tmp_path, stories_dir):
    for argv, message in [(["--adapter", str(tmp_path), "hi"], "no adapter_config.json"),
                          (["--model", str(tmp_path), "hi"], "no tokenizer.json")]:
        with pytest.raises(SystemExit) as e:
            generate.main(argv)
        assert str(e.value).startswith("error: ") and message in str(e.value)
