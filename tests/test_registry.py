"""A method is its adapter class plus one line in support/adapters.py's METHODS: this test writes a new method
here, registers it with that one line, and takes it through every tool (train.py, adapter files, merge.py,
eval.py) as a user would. It also holds the one API of the five adapter files: `base` and `rank` positional,
all else keyword-only, so that a call written for one class fails loudly on another.
"""
import inspect
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import dora
import eval as evaluate
import hira
import lora
import loran
import merge
import pera
import train
from model import Transformer
from support import adapters, cli, safety
from support.safetensors_io import load_safetensors
from test_train_eval import data_dir, stories_dir, train_args  # noqa: F401  (fixtures)

CLASSES = [lora.LoRALinear, hira.HiRALinear, hira.HiLoRALinear, pera.PERALinear, dora.DoRALinear, loran.LoRANLinear]


class GatedLoRALinear(nn.Module):
    """A method of this test's own: ΔW = s · B diag(g) A, s = alpha / r, a trained gate g (r,) starting at ones.

    A is Kaiming-uniform and B = 0, so a fresh adapter is its base. Written as an adapter file writes its
    class; merged, weight and bias are the shared parts (the same in every adapter file).
    """
    settings = {"rank": "int >= 1", "alpha": "nonzero", "dropout": "[0, 1)"}
    defaults = {"lr": 2e-2, "dropout": 0.0}
    peft_type, peft_constants = "GATED_LORA", {}
    peft_fields = {"r": "rank", "gated_alpha": "alpha", "gated_dropout": "dropout"}
    tensor_keys = {"A": "gated_A", "B": "gated_B", "g": "gated_g"}

    def __init__(self, base, rank, *, alpha=None, dropout=0.0):
        super().__init__()
        self.base, self.rank = base.requires_grad_(False), rank
        self.alpha = rank if alpha is None else alpha
        self.scaling = self.alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.A = nn.Parameter(torch.empty(rank, base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))
        self.g = nn.Parameter(torch.ones(rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def forward(self, x):
        return self.base(x) + F.linear(self.scaling * self.g * F.linear(self.dropout(x), self.A), self.B)

    def delta_weight(self):
        return self.scaling * (self.B * self.g) @ self.A

    merged, weight, bias = lora.LoRALinear.merged, lora.LoRALinear.weight, lora.LoRALinear.bias


def test_a_method_defined_here_and_registered_in_one_line_goes_through_every_tool(stories_dir, data_dir, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setitem(adapters.METHODS, "gated", GatedLoRALinear)  # the one line a new method adds
    out = tmp_path / "gated"
    metrics = train.main(train_args(stories_dir, data_dir, out, "--method", "gated", "--alpha", "8", "--max-steps", "2",
                                    "--eval-every", "2"))
    assert metrics["steps"] == 2 and json.loads((out / "args.json").read_text())["lr"] == 2e-2  # the class's default
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["gated_alpha"], config["gated_dropout"]) == ("GATED_LORA", 4, 8.0, 0.0)
    tensors = load_safetensors(out / "adapter_model.safetensors")
    layer = "model.layers.0.self_attn.q_proj"
    assert {k.rsplit(".", 1)[-1] for k in tensors} == {"gated_A", "gated_B", "gated_g"}
    assert tensors[f"base_model.model.{layer}.gated_g"].shape == (4,)
    assert not torch.equal(tensors[f"base_model.model.{layer}.gated_g"], torch.ones(4))  # trained: g moved

    # loaded back: the trained adapter, each tensor where it was saved, and the model it makes
    model = Transformer.from_pretrained(stories_dir)
    spec = adapters.load_adapter(model, out)
    assert spec == adapters.settings("gated", 4, alpha=8.0, dropout=0.0)
    q = model.get_submodule(layer)
    assert type(q) is GatedLoRALinear and torch.equal(q.g.data, tensors[f"base_model.model.{layer}.gated_g"])
    ids = torch.tensor(json.loads((stories_dir / "input_ids.json").read_text()))
    with torch.no_grad():
        adapted = model.eval()(ids)
        assert (adapted - Transformer.from_pretrained(stories_dir)(ids)).abs().max() > 1e-6  # ΔW ≠ 0

    # merged by merge.py into a plain model that gives the adapted logits
    merge.main(["--adapter", str(out), "--out", str(tmp_path / "merged")])
    with torch.no_grad():
        assert (Transformer.from_pretrained(tmp_path / "merged")(ids) - adapted).abs().max() < 1e-4

    # evaluated by eval.py, unmerged and merged alike, under the class's name
    runs = {}
    for name, extra in [("adapter", []), ("merge", ["--merge"])]:
        evaluate.main(["--adapter", str(out), "--data", str(data_dir), "--tasks", "boolq", "--limit", "3",
                       "--max-new-tokens", "4", "--device", "cpu", "--out", str(tmp_path / name), *extra])
        runs[name] = [json.loads(line)["output"] for line in (tmp_path / name / "predictions.jsonl").read_text().splitlines()]
    assert len(runs["adapter"]) == 3 and runs["adapter"] == runs["merge"]
    assert evaluate.run_name(spec) == "GatedLoRA r=4"


def test_the_tools_know_each_method_only_through_its_class():
    # train.py's defaults and the run-defining arguments come from the classes
    assert train.DEFAULT_LR == {m: cls.defaults["lr"] for m, cls in adapters.METHODS.items()}
    assert train.DEFAULT_DROPOUT["loran"] == 0.2 and train.DEFAULT_LR["hira"] == 1e-3
    assert {"terms", "degree", "init", "h_lr_ratio", "amplitude", "omega", "lora_rank"} <= set(safety.RUN_DEFINING)
    # PERA's parameter count is its class's, counted on the meta device: A, B and h of P = n_terms entries
    model = nn.Sequential()
    model.add_module("q_proj", nn.Linear(24, 20))
    spec = adapters.settings("pera", 5, ["q_proj"], terms="cross", degree=3)
    assert adapters.trainable_parameters(model, spec) == 5 * (24 + 20) + pera.n_terms(5, "cross", 3)
    assert pera.n_terms(5, "cross", 3) == pera.PERALinear(nn.Linear(2, 2), 5, terms="cross", degree=3).idx.shape[1]


# ---------------------------------------------------------------------------------------------------
# One API

@pytest.mark.parametrize("cls", CLASSES)
def test_only_base_and_rank_are_positional(cls):
    for function in (cls, lora.inject, hira.inject, pera.inject, dora.inject, loran.inject):
        kinds = [p.kind for p in inspect.signature(function).parameters.values()]
        assert kinds[:2] == [inspect.Parameter.POSITIONAL_OR_KEYWORD] * 2
        assert all(k in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD) for k in kinds[2:])
    assert list(inspect.signature(cls).parameters)[:2] == ["base", "rank"]


@pytest.mark.parametrize("cls", CLASSES)
def test_a_positional_call_of_the_old_kind_is_a_type_error(cls):
    kw = {"lora_rank": 2} if cls is hira.HiLoRALinear else {}
    with pytest.raises(TypeError, match="positional"):
        cls(nn.Linear(4, 4), 4, 0.05, **kw)  # once HiRALinear's dropout, LoRALinear's alpha


@pytest.mark.parametrize("cls", [c for c in CLASSES if c is not hira.HiRALinear])  # HiRA has no alpha
@pytest.mark.parametrize("alpha", [0, 0.0, math.nan, math.inf, -math.inf])
def test_alpha_is_refused_as_the_command_line_refuses_it(cls, alpha):
    kw = {"lora_rank": 2} if cls is hira.HiLoRALinear else {}
    with pytest.raises(ValueError, match="alpha must be a finite number other than 0"):
        cls(nn.Linear(4, 4), 2, alpha=alpha, **kw)


@pytest.mark.parametrize("cls", CLASSES)
def test_any_integral_rank_is_a_rank(cls):
    kw = {"lora_rank": np.int64(2)} if cls is hira.HiLoRALinear else {}
    base = nn.Linear(6, 5)
    torch.manual_seed(0)
    numpy_rank = cls(base, np.int64(3), **kw)
    torch.manual_seed(0)
    python_rank = cls(base, 3, **({"lora_rank": 2} if kw else {}))
    assert type(numpy_rank.rank) is int and numpy_rank.rank == 3
    assert all(torch.equal(a, b) for a, b in zip(numpy_rank.state_dict().values(), python_rank.state_dict().values()))
    for bad in (True, 3.0, "3"):
        with pytest.raises(ValueError, match="rank must be a (positive|non-negative) integer"):
            cls(base, bad, **kw)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_a_fresh_dora_on_a_weight_with_a_zero_row_is_its_base(dtype, bias):
    torch.manual_seed(0)
    base = nn.Linear(8, 6, bias=bias).to(dtype)
    with torch.no_grad():
        base.weight[2] = 0  # a row of zeros: ‖W0‖_row = 0, no direction
    layer = dora.DoRALinear(base, 4).eval()
    x = torch.randn(3, 8, dtype=dtype)
    with torch.no_grad():
        assert torch.equal(layer(x), base(x)) and torch.equal(layer.merged().weight, base.weight)
        assert torch.equal(layer.delta_weight(), torch.zeros(6, 8, dtype=layer.A.dtype))
    layer.train()
    layer(x).sum().backward()  # and it trains: finite gradients, the zero row's magnitude included
    assert all(p.grad is not None and p.grad.isfinite().all() for p in (layer.A, layer.B, layer.m))


def test_hilora_with_no_part_is_one_line_from_train(stories_dir, data_dir, tmp_path):
    with pytest.raises(SystemExit) as e:
        cli.run(train.main, train_args(stories_dir, data_dir, tmp_path, "--method", "hilora", "--rank", "0",
                                       "--lora-rank", "0"))
    assert e.value.code == "error: rank must be a positive integer, got 0"
