"""bench.py measures the right things: each variant is the method it names, on the shared frozen base."""
import json
import types

import pytest
import torch
from conftest import fixture

from experiments import bench


def test_variants_count_the_papers_parameters_and_share_the_base():
    folder = fixture("models", "stories260K")
    args = bench.parse_args(["--model", str(folder), "--ranks", "2,4", "--device", "cpu", "--batch-size", "2",
                              "--seq-len", "32"])  # a small step: the counts and the base are what is checked
    args.targets = args.targets.split(",")
    model = bench.build_model(args)
    ids = torch.tensor(json.loads((folder / "input_ids.json").read_text()))
    with torch.no_grad():
        before = model(ids)
    frozen = bench.base_layers(model, args.targets)
    shapes = [(m.in_features, m.out_features) for m in frozen.values()]
    variants = [bench.Variant(model, *spec, args) for spec in bench.variant_list(args)]
    assert [(v.label, v.rank) for v in variants][:4] == [("none", 0), ("lora", 2), ("hira", 2), ("pera", 2)]
    for v in variants:
        r, n = v.rank, len(shapes)
        lora_count = sum(r * (i + o) for i, o in shapes)
        dora_count = lora_count + sum(o for _, o in shapes)  # one magnitude per output row
        expected = {"none": 0, "lora": lora_count, "hira": lora_count, "pera": lora_count + n * r * (r + 1) // 2,
                    "pera-square": lora_count + n * r, "pera-cross": lora_count + n * r * (r - 1) // 2,
                    "dora": dora_count, "dora-peft": dora_count, "loran": lora_count,
                    "hilora": lora_count}[v.label]  # (in + out)(r1 + r2)
        assert v.trainable == expected, v.label
        if v.label == "hilora":  # r split as r1 + r2: 1 + 1, 2 + 2
            assert all((layer.rank, layer.lora_rank) == (r // 2, r // 2) for layer in v.layers.values())
        if v.method != "none":  # every adapter wraps the model's own linear: one copy of the base weights
            assert all(layer.base is frozen[name] for name, layer in v.layers.items())
    ids_, labels = bench.batch(args, model)
    for v in variants:  # a training step of each, then the plain model again: nothing of the base moved
        bench.training_step(model, v, ids_, labels, lambda: torch.autocast("cpu", enabled=False))
    bench.install(model, frozen)
    with torch.no_grad():
        assert torch.equal(model(ids), before)
    assert not any(p.requires_grad for p in model.parameters())


def test_merged_variant_computes_what_its_adapter_computes():
    folder = fixture("models", "stories260K")
    args = bench.parse_args(["--model", str(folder), "--ranks", "4", "--methods", "lora,pera", "--device", "cpu"])
    args.targets = args.targets.split(",")
    model = bench.build_model(args)
    ids = torch.tensor(json.loads((folder / "input_ids.json").read_text()))
    frozen = bench.base_layers(model, args.targets)
    pera = next(bench.Variant(model, *spec, args) for spec in bench.variant_list(args) if spec[0] == "pera")
    with torch.no_grad():
        bench.install(model, pera.layers)
        adapted = model(ids)
        bench.install(model, {n: layer.merged() for n, layer in pera.layers.items()})
        merged = model(ids)
        bench.install(model, frozen)
        plain = model(ids)
    assert (adapted - merged).abs().max() < 1e-4 and (adapted - plain).abs().max() > 1e-2


# -----------------------------------------------------------------------------
# The memory planner against this CPU, and the memory of loading a sharded checkpoint.

@pytest.mark.slow  # each measures two steps of a 6-layer SmolLM2-135M in a fresh process
@pytest.mark.parametrize("extra", [["--method", "lora"], ["--method", "pera", "--grad-checkpoint"],
                                   ["--method", "hira", "--micro-batch-size", "2"], ["--method", "hilora"]])
def test_planned_memory_is_within_15_percent_of_the_measured_peak(extra):
    args = bench.parse_args(["--plan", "--shape", "smollm2-135m", "--layers", "6", "--rank", "16", "--batch-size", "4",
                             "--seq-len", "128", "--precision", "fp32", *extra])
    args.targets = args.targets.split(",")
    parts = bench.plan(args)
    measured = bench.measured_peak(args)
    print(f"{extra}: planned {parts['total_bytes'] / 2 ** 20:.0f} MiB, measured {measured / 2 ** 20:.0f} MiB")
    assert parts["total_bytes"] == (parts["weight_bytes"] + parts["trainable_bytes"] + parts["grad_bytes"]
                                    + parts["optimizer_bytes"] + parts["activation_bytes"])
    assert parts["activation_bytes"] > 0.25 * parts["total_bytes"]  # a test of the activations, not of the weights
    assert abs(parts["total_bytes"] / measured - 1) < 0.15


def test_planner_counts_the_papers_parameters_without_allocating():
    args = bench.parse_args(["--plan", "--shape", "llama-3-8b", "--method", "pera", "--rank", "16"])
    args.targets = args.targets.split(",")
    with torch.device("meta"):
        model = bench.Transformer(bench.Config(**bench.SHAPES["llama-3-8b"]))
    n_base = sum(p.numel() for p in model.parameters())
    layers = bench.base_layers(model, args.targets)
    lora = sum(16 * (m.in_features + m.out_features) for m in layers.values())
    parts = bench.plan(args)  # 8B parameters: this would need 16 GB if it allocated them
    assert parts["trainable_params"] == lora + len(layers) * 16 * 17 // 2
    assert parts["weight_bytes"] == 2 * n_base  # bf16
    print(f"PERA r=16 on Llama-3-8B: {100 * parts['trainable_params'] / n_base:.4f}% trainable (the paper: 0.3515%)")


def test_hilora_row_is_set_against_hira_at_r1_plus_lora_at_r2_less_the_frozen_step(capsys):
    args = bench.parse_args(["--ranks", "2,4", "--methods", "none,lora,hira,hilora", "--rounds", "3"])
    steps = {("none", 0): [1.0, 1.2, 1.1], ("lora", 2): [1.3, 1.3, 1.4], ("hira", 2): [1.6, 1.5, 1.5],
             ("hilora", 2): [1.9, 2.0, 2.0], ("lora", 4): [1.4, 1.4, 1.4], ("hira", 4): [1.7, 1.7, 1.7],
             ("hilora", 4): [1.8, 1.9, 1.8]}  # seconds per round; medians 1.1, 1.3, 1.5, ...
    variants = [types.SimpleNamespace(label=m, method=m, rank=r, trainable=0, step_s=s, infer_s=[1.0], peak_mb=[],
                                      compiled_s=[])
                for (m, r), s in steps.items()]
    rows = {(r["method"], r["rank"]): r for r in bench.report(variants, args, n_params=100)}
    assert rows["hilora", 4]["lora_rank"] == 2 and "parts_ms" not in rows["hilora", 2]  # no HiRA and LoRA at r = 1
    assert rows["hilora", 4]["step_vs_parts"] == pytest.approx(1.8 / (1.5 + 1.3 - 1.1))
    assert "| hilora | 2+2 |" in capsys.readouterr().out


@pytest.mark.slow  # measured: a process's peak memory
def test_sharded_bf16_checkpoint_loads_without_a_float32_copy(tmp_path):
    total = bench.sharded_checkpoint(tmp_path / "ckpt", 120e6, shard_bytes=24 * 2 ** 20, d=512)
    assert len(list((tmp_path / "ckpt").glob("*.safetensors"))) >= 4
    peak = bench.loading_peak(tmp_path / "ckpt", torch.bfloat16)
    print(f"bf16 load of {total / 1e6:.0f} MB: peak RSS +{peak / 1e6:.0f} MB")
    assert peak <= 1.3 * total


def test_peft_dora_variant_is_dora_computed_the_peft_way():
    """bench.PeftDoRALinear (PEFT's DoRA, re-implemented) and dora.DoRALinear: the same function and gradients."""
    folder = fixture("models", "stories260K")
    args = bench.parse_args(["--model", str(folder), "--ranks", "4", "--methods", "lora,dora,dora-peft", "--device", "cpu"])
    args.targets = args.targets.split(",")
    model = bench.build_model(args)
    ids = torch.tensor(json.loads((folder / "input_ids.json").read_text()))
    ours, theirs = (bench.Variant(model, *spec, args) for spec in bench.variant_list(args) if spec[0] != "lora")
    assert all(type(layer) is bench.PeftDoRALinear for layer in theirs.layers.values())
    for name, layer in theirs.layers.items():  # the same A, B, m
        layer.load_state_dict(ours.layers[name].state_dict())
    outputs, grads = [], []
    for v in (ours, theirs):
        bench.install(model, v.layers)
        y = model(ids)
        y.square().mean().backward()
        outputs.append(y.detach())
        grads.append(torch.cat([p.grad.flatten() for p in v.params]))
    bench.install(model, bench.base_layers(model, args.targets))
    assert (outputs[0] - outputs[1]).abs().max() < 1e-5 * outputs[1].abs().max()
    assert (grads[0] - grads[1]).abs().max() < 1e-4 * grads[1].abs().max()


# -----------------------------------------------------------------------------
# The two CPU proxies for a GPU's cost, pinned: a change that adds a kernel to a training step, or keeps more
# for the backward, fails here and must update these numbers on purpose (docs/bench.md, "Kernel calls and
# saved bytes", has them at the real models' depth and shapes).

def test_kernel_calls_count_operators_that_run_and_not_views():
    x = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(8, 3)
    with bench.KernelCalls() as counter:
        y = x.view(8, 4).t().reshape(4, 8)  # views: no kernel
        loss = (y @ w).sum()  # mm, sum
        loss.backward()  # ones_like (the seed), expand (a view), mm (x's gradient only: w needs none)
    assert counter.calls == {"mm": 2, "sum": 1, "ones_like": 1}, counter.calls


def test_saved_bytes_count_each_storage_kept_for_the_backward_once():
    x = torch.randn(4, 8, requires_grad=True)
    w = torch.nn.Parameter(torch.randn(8, 8))
    saved = bench.SavedBytes(ignore=[w.untyped_storage()._cdata])
    with saved.hooks():
        y = x.sin()  # keeps x: 128 bytes
        z = (y @ w).exp()  # mm keeps y (128) and w (a parameter: not counted); exp keeps its output (128)
        (z * x).sum().backward()  # keeps z and x again (x already counted)
    assert saved.bytes == 3 * 4 * 8 * 4  # x, y, z: float32 (4, 8) each


# Kernel calls of one training step (bf16 autocast, AdamW foreach, no dropout), one block of the tiny model.
KERNEL_CALLS = {("none", 0): 131, ("lora", 4): 197, ("hira", 4): 186, ("hilora", 4): 203, ("pera", 4): 257,
                ("dora", 4): 342, ("loran", 4): 217, ("lora", 16): 197, ("hira", 16): 186, ("hilora", 16): 203,
                ("pera", 16): 257, ("dora", 16): 342, ("loran", 16): 217}


@pytest.mark.parametrize("method,rank", list(KERNEL_CALLS), ids=[f"{m}-r{r}" for m, r in KERNEL_CALLS])
def test_kernel_calls_per_training_step_are_pinned(method, rank):
    calls = bench.kernel_calls(method, rank, layers=1)
    assert sum(calls.values()) == KERNEL_CALLS[method, rank], sorted(calls.items())


# Bytes saved for the backward by one block of stories260K's shape (64 wide, MLP 172), bf16, 1 x 8 tokens:
# few tokens, so that anything sized like a weight (out, in) would stand out against the activations.
SAVED_BYTES = {("lora", 4): 34180, ("hira", 4): 29060, ("hilora", 4): 29060, ("pera", 4): 53156,
               ("dora", 4): 42188, ("loran", 4): 29060, ("lora", 16): 49540, ("hira", 16): 29060,
               ("hilora", 16): 29060, ("pera", 16): 292868, ("dora", 16): 57548, ("loran", 16): 29060}


@pytest.mark.parametrize("method,rank", list(SAVED_BYTES), ids=[f"{m}-r{r}" for m, r in SAVED_BYTES])
def test_bytes_saved_for_the_backward_are_pinned(method, rank):
    args = bench.parse_args(["--plan", "--model", str(fixture("models", "stories260K")), "--method", method, "--rank",
                             str(rank), "--batch-size", "1", "--seq-len", "8", "--loss-tokens", "4", "--dropout", "0"])
    args.targets = args.targets.split(",")
    _, saved = bench.traced_activations(args, bench.plan_config(args), 1)
    assert saved == SAVED_BYTES[method, rank]
