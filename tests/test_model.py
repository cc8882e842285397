"""model.py against transformers' logits, and the properties generation and loading must have."""
import ast
import inspect
import json
import shutil
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from conftest import HERE_FIXTURES, fixture

from model import Config, KVCache, Transformer, check_vocabulary
from support.safetensors_io import load_safetensors, save_safetensors
from tokenizer import Tokenizer

MODELS = ["tiny-llama", "tiny-llama3", "stories260K", "tiny-qwen2", "tiny-llama-linear"]  # tests/fixtures/README.md


def model_dir(name):
    return fixture("models", name)


@pytest.mark.parametrize("name", MODELS)
def test_logits_match_transformers(name):
    folder = model_dir(name)
    model = Transformer.from_pretrained(folder)
    ids = torch.tensor(json.loads((folder / "input_ids.json").read_text()))
    reference = load_safetensors(folder / "reference.safetensors")["logits"]
    with torch.no_grad():
        logits = model(ids)
    assert logits.shape == reference.shape
    assert (logits - reference).abs().max().item() < 1e-4


def test_stories260K_greedy_generation_is_exact():
    folder = fixture("models", "stories260K")
    model = Transformer.from_pretrained(folder)
    for case in json.loads((folder / "greedy.json").read_text()):
        out = model.generate(torch.tensor([case["prompt_ids"]]), len(case["new_ids"]))
        assert out[0, len(case["prompt_ids"]):].tolist() == case["new_ids"], case["prompt"]


@pytest.fixture(scope="module")
def stories():
    return Transformer.from_pretrained(fixture("models", "stories260K"))


def naive_greedy(model, ids, n):
    """Greedy decoding without a cache: the whole sequence through the model for every new token."""
    for _ in range(n):
        ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def test_kv_cache_logits_equal_full_forward(stories):
    torch.manual_seed(0)
    ids = torch.randint(3, 512, (2, 20))
    with torch.no_grad():
        full = stories(ids)
        cache = KVCache(stories.config, 2, 20, torch.float32, "cpu")
        steps = [stories(ids[:, :8], cache=cache)]  # a prompt, then a chunk, then single positions
        steps.append(stories(ids[:, 8:12], cache=cache))
        steps += [stories(ids[:, t:t + 1], cache=cache) for t in range(12, 20)]
    assert cache.length == 20
    assert (torch.cat(steps, dim=1) - full).abs().max().item() < 1e-4  # logits are ~10: float32 rounding


def test_greedy_with_cache_equals_greedy_without(stories):
    prompt = torch.tensor([[1, 403, 407, 261, 378], [1, 317, 269, 274, 287]])
    assert torch.equal(stories.generate(prompt, 30), naive_greedy(stories, prompt, 30))


def test_left_padded_batch_gives_each_row_its_own_logits_and_tokens(stories):
    prompts = [[1, 403, 407, 261, 378], [1, 317, 269, 274, 287, 263, 377, 267, 265], [1, 415, 426]]
    T = max(map(len, prompts))
    pad = 0
    ids = torch.tensor([[pad] * (T - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        batched = stories(ids, attention_mask=mask)
        for row, p in enumerate(prompts):
            alone = stories(torch.tensor([p]))
            assert (batched[row, T - len(p):] - alone[0]).abs().max().item() < 1e-4
    out = stories.generate(ids, 25, attention_mask=mask)
    for row, p in enumerate(prompts):
        alone = stories.generate(torch.tensor([p]), 25)
        assert out[row, T:].tolist() == alone[0, len(p):].tolist()


def test_generate_stops_at_eos_and_fills_finished_rows(stories):
    prompt = torch.tensor([[1, 403, 407, 261, 378]])
    free = stories.generate(prompt, 20)[0, 5:].tolist()
    eos = free[6]  # pretend the 7th generated token ends the text
    out = stories.generate(prompt, 20, eos_id=eos)[0, 5:].tolist()
    assert out == free[:free.index(eos) + 1]
    two = stories.generate(torch.cat([prompt, torch.tensor([[1, 317, 269, 274, 287]])]), 20, eos_id=eos)
    first = two[0, 5:].tolist()
    assert first[:len(out)] == out and set(first[len(out):]) <= {eos}  # filled after its end


def test_sampling_top_k_1_is_greedy_and_seeded_sampling_repeats(stories):
    prompt = torch.tensor([[1, 403, 407, 261, 378]])
    greedy = stories.generate(prompt, 15)
    assert torch.equal(stories.generate(prompt, 15, temperature=0.8, top_k=1), greedy)
    a = stories.generate(prompt, 15, temperature=2.0, generator=torch.Generator().manual_seed(3))
    b = stories.generate(prompt, 15, temperature=2.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, greedy)


def test_bf16_weights_load_and_stay_close():
    folder = fixture("models", "stories260K")
    ids = torch.tensor(json.loads((folder / "input_ids.json").read_text()))
    reference = load_safetensors(folder / "reference.safetensors")["logits"]
    model = Transformer.from_pretrained(folder, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    with torch.no_grad():
        logits = model(ids).float()
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() > 0.9
    assert (logits - reference).abs().max() < 0.1 * reference.abs().max()


# -----------------------------------------------------------------------------
# strict loading

def copy_model(tmp_path, name="tiny-llama"):
    folder = tmp_path / name
    shutil.copytree(fixture("models", name), folder)
    return folder


def test_strict_loading_names_missing_unexpected_and_misshapen_tensors(tmp_path):
    folder = copy_model(tmp_path)
    tensors = dict(load_safetensors(folder / "model.safetensors"))
    cases = [
        ({k: v for k, v in tensors.items() if k != "model.layers.1.mlp.up_proj.weight"},
         "missing 1 tensor.*model.layers.1.mlp.up_proj.weight"),
        ({**tensors, "model.layers.0.self_attn.extra.weight": torch.zeros(2)},
         "unexpected tensor.*model.layers.0.self_attn.extra.weight"),
        ({**tensors, "model.norm.weight": torch.ones(65)}, r"'model.norm.weight' has shape \(65,\).*\(64,\)"),
    ]
    for bad, message in cases:
        save_safetensors(bad, folder / "model.safetensors")
        with pytest.raises(ValueError, match=message):
            Transformer.from_pretrained(folder)


def test_sharded_checkpoint_loads_like_the_single_file(tmp_path):
    folder = copy_model(tmp_path)
    tensors = load_safetensors(folder / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for shard, keys in shards.items():
        save_safetensors({k: tensors[k] for k in keys}, folder / shard)
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "model.safetensors").unlink()
    ids = torch.tensor(json.loads((folder / "input_ids.json").read_text()))
    reference = load_safetensors(folder / "reference.safetensors")["logits"]
    with torch.no_grad():
        assert (Transformer.from_pretrained(folder)(ids) - reference).abs().max() < 1e-4
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors is missing"):
        Transformer.from_pretrained(folder)


def hf_config(config: Config) -> dict:
    """The config.json that transformers reads back as the same model: every field of Config is written,
    so the round trip below fails if Config.from_hf ignores one."""
    d = {"architectures": ["Qwen2ForCausalLM" if config.model_type == "qwen2" else "LlamaForCausalLM"],
         "model_type": config.model_type, "hidden_act": "silu"}
    for f in fields(config):
        if f.name not in ("qkv_bias", "o_bias", "model_type", "rope_scaling"):
            d[f.name] = getattr(config, f.name)
    d["rope_scaling"] = config.rope_scaling
    if config.model_type == "llama":
        d["attention_bias"] = config.qkv_bias
        d["mlp_bias"] = config.mlp_bias
    return d


def test_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        Transformer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(hf_config(Config(64, 16, 32, 1, 2))))
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        Transformer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(ValueError, match="config.json: invalid JSON"):
        Transformer.from_pretrained(tmp_path)


BASE = dict(model_type="llama", vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2)


@pytest.mark.parametrize("change, message", [
    ({"model_type": "mistral"}, "model_type 'mistral' is not supported"),
    ({"model_type": "qwen2", "use_sliding_window": True}, "use_sliding_window"),
    ({"layer_types": ["sliding_attention"]}, "layer_types"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope type 'yarn' is not supported"),
    ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}}, "rope type 'dynamic'"),
    ({"rope_scaling": {"type": "llama3", "factor": 8.0}}, "needs field.*low_freq_factor"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"hidden_size": None}, "'hidden_size' is missing"),
    ({"num_key_value_heads": 3}, "not a multiple of num_key_value_heads"),
])
def test_unsupported_configs_name_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        Config.from_hf({**BASE, **change})


def test_config_reads_both_rope_layouts_and_round_trips():
    old = Config.from_hf({**BASE, "rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 2.0}})
    new = Config.from_hf({**BASE, "rope_parameters": {"rope_theta": 5e5, "rope_type": "linear", "factor": 2.0}})
    assert old == new and old.rope_scaling == {"rope_type": "linear", "factor": 2.0} and old.rope_theta == 5e5
    qwen = Config.from_hf({**BASE, "model_type": "qwen2", "tie_word_embeddings": True})
    assert qwen.qkv_bias and not qwen.o_bias and qwen.tie_word_embeddings
    for config in (old, qwen, Config.from_hf(json.loads((HERE_FIXTURES / "models/tiny-llama-linear/config.json").read_text()))):
        assert Config.from_hf(hf_config(config)) == config


def test_state_dict_keys_are_the_hugging_face_keys():
    reference = load_safetensors(fixture("models", "tiny-llama3", "model.safetensors"))
    model = Transformer(Config.from_hf(json.loads(fixture("models", "tiny-llama3", "config.json").read_text())))
    assert set(model.state_dict()) == set(reference)  # tied: no lm_head.weight
    assert "model.layers.0.self_attn.q_proj.weight" in model.state_dict()


def test_the_model_comes_first():
    """model.py opens with the plain Config and then the layers: the checks of a config.json stand after the
    model, where the file is read (read_config), so the first nn.Module comes within the first 140 lines."""
    tree = ast.parse(Path(inspect.getsourcefile(Config)).read_text())
    first = min(node.lineno for node in tree.body if isinstance(node, ast.ClassDef)
                and any(ast.unparse(base) == "nn.Module" for base in node.bases))
    assert first <= 140
    config = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Config")
    assert not any(isinstance(node, ast.Raise) for node in ast.walk(config))  # no checking inside the dataclass
    with pytest.raises(ValueError, match="head_dim is 3"):  # the reader checks what the dataclass takes as given
        Config.from_hf({**BASE, "head_dim": 3})


def test_a_tokenizer_with_more_ids_than_embedding_rows_is_refused():
    """stories260K's own tokenizer fits its 512 embedding rows; SmolLM2's 49,152 ids do not, and the error names
    both files of the folder before any id reaches F.embedding."""
    model = Transformer.from_pretrained(model_dir("stories260K"))
    check_vocabulary(Tokenizer.from_file(fixture("models", "stories260K", "tokenizer.json")), model, "m")
    smollm2 = Tokenizer.from_file(fixture("tokenizers", "smollm2", "tokenizer.json"))
    with pytest.raises(ValueError, match=f"^m/tokenizer.json: token ids go up to {smollm2.vocab_size - 1}, but "
                                         f"m/config.json has vocab_size 512: the tokenizer and the model"):
        check_vocabulary(smollm2, model, "m")
