"""bench.py measures the right things: each variant is the method it names, on the shared frozen base."""
import json

import torch

import bench
from conftest import shared


def test_variants_count_the_papers_parameters_and_share_the_base():
    folder = shared("fixtures", "models", "stories260K")
    args = bench.parse_args(["--model", str(folder), "--ranks", "2,4", "--device", "cpu"])
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
        expected = {"none": 0, "lora": lora_count, "hira": lora_count, "pera": lora_count + n * r * (r + 1) // 2,
                    "pera-square": lora_count + n * r, "pera-cross": lora_count + n * r * (r - 1) // 2}[v.label]
        assert v.trainable == expected, v.label
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
    folder = shared("fixtures", "models", "stories260K")
    args = bench.parse_args(["--model", str(folder), "--ranks", "4", "--methods", "lora,pera", "--device", "cpu"])
    args.targets = args.targets.split(",")
    model = bench.build_model(args)
    ids = torch.tensor(json.loads((folder / "input_ids.json").read_text()))
    frozen = bench.base_layers(model, args.targets)
    pera = next(bench.Variant(model, *spec, args) for spec in bench.variant_list(args) if spec[0] == "pera")
    with torch.no_grad():
        bench.install(model, pera.layers)
        adapted = model(ids)
        bench.install(model, {n: layer.merge() for n, layer in pera.layers.items()})
        merged = model(ids)
        bench.install(model, frozen)
        plain = model(ids)
    assert (adapted - merged).abs().max() < 1e-4 and (adapted - plain).abs().max() > 1e-2
