"""Our DoRA layer against Hugging Face PEFT's, one layer at a time (a development check, not a test).

    PEFT_PYTHON -m experiments.dora_vs_peft --json results/dora-vs-peft.json

Needs `peft` (not a project dependency; bench.py uses its re-implementation, bench.PeftDoRALinear, instead).
For each adapted layer shape of SmolLM2-135M (q, k, v, up, down), with the same A, B and m in all four:
PEFT's own `lora.Linear(use_dora=True)`, bench.py's re-implementation of it, dora.DoRALinear and
lora.LoRALinear. Checks that the four DoRA-or-re-implementation outputs agree, then times a training
step of the layer (forward, and backward to A, B, m and the input, as for an inner layer), interleaved
over rounds, median; the sum over the five shapes is one transformer block's adapted layers. One thread,
timed by the process's CPU time (time.process_time) rather than the wall clock: on a machine shared with
other jobs the wall clock also counts the time the process waits for a core.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from peft import LoraConfig, get_peft_model

import dora
import lora
from experiments import bench

SHAPES = {"q_proj": (576, 576), "k_proj": (576, 192), "v_proj": (576, 192), "up_proj": (576, 1536),
          "down_proj": (1536, 576)}  # (in, out)


def peft_layers(rank, alpha):
    """PEFT's DoRA layers, made the ordinary way: get_peft_model on a module holding the five linears."""
    torch.manual_seed(0)
    holder = nn.Module()
    for name, (i, o) in SHAPES.items():
        setattr(holder, name, nn.Linear(i, o, bias=False))
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(SHAPES), lora_dropout=0.0, use_dora=True)
    model = get_peft_model(holder, config)
    return {name: model.base_model.model.get_submodule(name) for name in SHAPES}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", default="4,16")
    p.add_argument("--tokens", default="128,1024", help="rows of x per step (batch × sequence)")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(1)
    results = []
    for rank in map(int, args.ranks.split(",")):
        theirs = peft_layers(rank, 2 * rank)
        for tokens in map(int, args.tokens.split(",")):
            variants = {"peft": {}, "peft-reimplementation": {}, "ours": {}, "lora": {}}
            worst = 0.0
            for name, layer in theirs.items():
                base = layer.get_base_layer()
                with torch.no_grad():  # a trained-looking adapter, the same in every variant
                    layer.lora_A["default"].weight.normal_(0, 0.02)
                    layer.lora_B["default"].weight.normal_(0, 0.02)
                    layer.lora_magnitude_vector["default"].weight.mul_(1.05)
                ours, reimpl, lo = (cls(base, rank, alpha=2 * rank)
                                    for cls in (dora.DoRALinear, bench.PeftDoRALinear, lora.LoRALinear))
                with torch.no_grad():
                    for m in (ours, reimpl, lo):
                        m.A.copy_(layer.lora_A["default"].weight)
                        m.B.copy_(layer.lora_B["default"].weight)
                    for m in (ours, reimpl):
                        m.m.copy_(layer.lora_magnitude_vector["default"].weight)
                x = torch.randn(tokens, base.in_features)
                with torch.no_grad():
                    y = layer(x)
                    worst = max(worst, *((v(x) - y).abs().max().item() / y.abs().max().item() for v in (ours, reimpl)))
                variants["peft"][name], variants["peft-reimplementation"][name] = layer.train(), reimpl.train()
                variants["ours"][name], variants["lora"][name] = ours.train(), lo.train()
            times = {v: [] for v in variants}
            xs = {name: torch.randn(tokens, i, requires_grad=True) for name, (i, _) in SHAPES.items()}
            for k in range(args.warmup + args.rounds):
                for v, layers in variants.items():
                    start = time.process_time()
                    for name, layer in layers.items():
                        layer(xs[name]).sum().backward()
                    if k >= args.warmup:
                        times[v].append(time.process_time() - start)
                    for layer in layers.values():
                        layer.zero_grad(set_to_none=True)
                    for x in xs.values():
                        x.grad = None
            ms = {v: 1000 * statistics.median(t) for v, t in times.items()}
            row = {"rank": rank, "tokens": tokens, "ms": ms, "max_rel_output_difference": worst,
                   "ours_vs_peft": ms["ours"] / ms["peft"],
                   "reimplementation_vs_peft": ms["peft-reimplementation"] / ms["peft"],
                   "dora_overhead_ours_vs_peft": (ms["ours"] - ms["lora"]) / (ms["peft"] - ms["lora"])}
            results.append(row)
            print(f"r={rank} tokens={tokens}: " + ", ".join(f"{v} {t:.2f} ms" for v, t in ms.items())
                  + f"; ours/PEFT {row['ours_vs_peft']:.3f}, re-implementation/PEFT {row['reimplementation_vs_peft']:.3f}"
                  + f", DoRA's cost above LoRA ours/PEFT {row['dora_overhead_ours_vs_peft']:.3f}"
                  + f"; outputs agree to {worst:.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "threads": torch.get_num_threads(),
                                               "rows": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
