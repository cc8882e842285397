"""What each method costs: a training step's time and peak memory, and inference latency after merging.

    python bench.py --model checkpoints/SmolLM2-135M-Instruct --ranks 4,16
    python bench.py --shape llama-3.2-1b --layers 4 --batch-size 4 --seq-len 256     # no weights needed

All variants share one frozen base model (each adapter wraps the same nn.Linear objects) and run
interleaved in one process, after warm-up rounds, so machine noise hits them alike; each figure is the
median over rounds and is printed with its ratio to LoRA at the same rank. A training step is what
train.py does: forward, loss on the last --loss-tokens positions of each row (a commonsense response is
about that long), backward, AdamW. "none" is the frozen model's forward and backward alone, the floor
under every method. Peak memory is CUDA's max_memory_allocated, or on a CPU the peak resident memory of
a separate process that builds the model and runs the variant alone. Inference is a prefill (the batch
through the model, logits at the last position, no_grad) with each adapter merged, against the model
without adapters.
"""
import argparse
import json
import multiprocessing
import re
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

import adapters
import cli
from model import Config, Transformer
from train import loss_sum

# Public models' shapes, for machines without their weights (random initialisation; the cost is the same).
SHAPES = {
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True),
    "llama-3.2-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True,
                         rope_theta=500000.0),
    "llama-3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0),
    "qwen2.5-7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, qkv_bias=True, model_type="qwen2",
                       rope_theta=1000000.0),
}
VARIANTS = {"none": ("none", {}), "lora": ("lora", {}), "hira": ("hira", {}), "pera": ("pera", {}),
            "pera-square": ("pera", {"terms": "square"}), "pera-cross": ("pera", {"terms": "cross"})}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--model", help="a Hugging Face model folder")
    where.add_argument("--shape", choices=list(SHAPES), help="a public model's shape, randomly initialised")
    p.add_argument("--layers", type=int, default=None, help="keep only the first N layers")
    p.add_argument("--methods", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--ranks", default="4,16")
    p.add_argument("--targets", default=",".join(adapters.DEFAULT_TARGETS))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--loss-tokens", type=int, default=16, help="positions per row with a loss (0: all)")
    p.add_argument("--rounds", type=int, default=10, help="measured rounds (each variant once per round)")
    p.add_argument("--infer-rounds", type=int, default=20, help="measured inference rounds (cheaper than steps)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default=None)
    p.add_argument("--no-memory", action="store_true", help="skip the CPU memory subprocesses")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.methods = args.methods.split(",")
    unknown = [m for m in args.methods if m not in VARIANTS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if "lora" not in args.methods:
        p.error("--methods must include lora: every ratio is to LoRA")
    try:
        args.ranks = [int(r) for r in args.ranks.split(",")]
    except ValueError:
        p.error(f"--ranks {args.ranks!r} is not a comma-separated list of integers")
    args.shape = args.shape or (None if args.model else "smollm2-135m")
    return args


def build_model(args):
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.model:
        model = Transformer.from_pretrained(args.model, dtype=dtype, device=device)
        if args.layers:
            model.model.layers = model.model.layers[:args.layers]
    else:
        shape = dict(SHAPES[args.shape])
        if args.layers:
            shape["num_hidden_layers"] = args.layers
        torch.manual_seed(0)
        with torch.device(device):
            model = Transformer(Config(**shape)).to(dtype)
    model.requires_grad_(False)
    return model


def variant_list(args):
    """(label, method, rank, extra arguments); "none" once, the others at every rank."""
    out = [("none", "none", 0, {})] if "none" in args.methods else []
    for r in args.ranks:
        for m in args.methods:
            method, kw = VARIANTS[m]
            if method != "none" and not (kw.get("terms") == "cross" and r == 1):
                out.append((m, method, r, kw))
    return out


def base_layers(model, targets):
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in targets}


def make_adapters(model, method, rank, kw, targets):
    """{layer name: adapter around the model's own linear}: every variant shares the base weights."""
    torch.manual_seed(rank)
    layers = {name: adapters.CLASSES[method](module, rank, **kw) for name, module in base_layers(model, targets).items()}
    with torch.no_grad():  # a trained-looking adapter, not the zero update of a fresh one
        for layer in layers.values():
            for p in layer.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.02)
    return layers


def install(model, layers):
    for name, layer in layers.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)


def batch(args, model):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (args.batch_size, args.seq_len), generator=g)
    labels = ids.clone()
    if args.loss_tokens:
        labels[:, :-args.loss_tokens] = -100
    return ids.to(args.device), labels.to(args.device)


class Variant:
    """One method at one rank: its adapter layers, optimizer, and the timings measured so far."""

    def __init__(self, model, label, method, rank, kw, args):
        self.label, self.method, self.rank = label, method, rank
        self.layers = base_layers(model, args.targets) if method == "none" else make_adapters(model, method, rank, kw, args.targets)
        self.params = [p for layer in self.layers.values() for p in layer.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4) if self.params else None
        self.trainable = sum(p.numel() for p in self.params)
        self.step_s, self.infer_s, self.peak_mb = [], [], []


def training_step(model, variant, ids, labels, autocast):
    install(model, variant.layers)
    if variant.optimizer is None:  # "none": the frozen forward/backward every method pays, no update
        first = model.model.layers[0].input_layernorm.weight.requires_grad_(True)
    with autocast():
        loss, n = loss_sum(model, ids, labels)
    (loss / n).backward()
    if variant.optimizer is None:
        first.grad = None
        first.requires_grad_(False)
    else:
        variant.optimizer.step()
        variant.optimizer.zero_grad(set_to_none=True)


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def cpu_peak_mb(args, spec):
    """Peak resident memory of a fresh process that builds the model and runs this variant alone."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_peak_probe, (vars(args), spec))


def _peak_probe(arg_dict, spec):
    args = argparse.Namespace(**arg_dict)
    model = build_model(args)
    variant = Variant(model, *spec, args)
    ids, labels = batch(args, model)
    for _ in range(2):
        training_step(model, variant, ids, labels, lambda: torch.autocast("cpu", enabled=False))
    # VmHWM, the peak resident size of this process's own memory. (getrusage's ru_maxrss would not do:
    # Linux carries it across exec, so a spawned child reports its parent's peak if that is higher.)
    status = Path("/proc/self/status")
    if not status.is_file():  # not Linux: no figure rather than a wrong one
        return None
    return int(re.search(r"VmHWM:\s+(\d+) kB", status.read_text()).group(1)) / 1024


def main(argv=None):
    args = parse_args(argv)
    args.targets = args.targets.split(",")
    device = torch.device(args.device)
    with cli.user_input():  # a corrupt model folder
        model = build_model(args)
    ids, labels = batch(args, model)
    on_cuda = device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if on_cuda else (lambda: torch.autocast("cpu", enabled=False))
    frozen = base_layers(model, args.targets)
    specs = variant_list(args)
    with cli.user_input():  # an impossible adapter: --ranks 0, a target the model lacks
        variants = [Variant(model, *spec, args) for spec in specs]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.model or args.shape}{f' ({args.layers} layers)' if args.layers else ''}: {n_params / 1e6:.1f}M "
          f"params, batch {args.batch_size}x{args.seq_len}, {device}, {torch.get_num_threads()} threads")

    # Training steps, interleaved: round k runs every variant once.
    for k in tqdm(range(args.warmup + args.rounds), desc="training steps (rounds)"):
        for v in variants:
            if on_cuda:
                torch.cuda.reset_peak_memory_stats()
            t = timed(lambda: training_step(model, v, ids, labels, autocast), device)
            if k >= args.warmup:
                v.step_s.append(t)
                if on_cuda:
                    v.peak_mb.append(torch.cuda.max_memory_allocated() / 2 ** 20)
    if not on_cuda and not args.no_memory:
        for spec, v in zip(specs, tqdm(variants, desc="peak memory (fresh processes)")):
            peak = cpu_peak_mb(args, spec)
            v.peak_mb += [peak] if peak is not None else []

    # Inference with every adapter merged: plain linears again, so it should cost what the base costs.
    merged = {v.label + str(v.rank): {n: layer.merge() for n, layer in v.layers.items()} if v.method != "none"
              else v.layers for v in variants}
    with torch.no_grad(), autocast():
        for k in tqdm(range(args.warmup + args.infer_rounds), desc="merged inference (rounds)"):
            for v in variants:
                install(model, merged[v.label + str(v.rank)])
                t = timed(lambda: model.logits(model.hidden(ids)[:, -1]), device)  # a generation prefill
                if k >= args.warmup:
                    v.infer_s.append(t)
    install(model, frozen)

    rows = report(variants, args, n_params)
    if args.json:
        adapters.write_json(args.json, {"args": {k: v for k, v in vars(args).items()}, "rows": rows})
    return rows


def report(variants, args, n_params):
    tokens = args.batch_size * args.seq_len
    none = next((v for v in variants if v.method == "none"), None)
    lora = {v.rank: v for v in variants if v.label == "lora"}
    rows = []
    for v in variants:
        step, infer = statistics.median(v.step_s), statistics.median(v.infer_s)
        ref = lora.get(v.rank)
        row = {"method": v.label, "rank": v.rank, "trainable": v.trainable,
               "trainable_percent": 100 * v.trainable / (n_params + v.trainable),
               "step_ms": 1000 * step, "tokens_per_s": tokens / step,
               "step_vs_lora": step / statistics.median(ref.step_s) if ref else None,
               "peak_mb": max(v.peak_mb) if v.peak_mb else None,
               "peak_vs_lora": max(v.peak_mb) / max(ref.peak_mb) if ref and v.peak_mb else None,
               "merged_infer_ms": 1000 * infer,
               "infer_vs_none": infer / statistics.median(none.infer_s) if none else None}
        rows.append(row)
    fmt = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
    print("| method | r | trainable (%) | step ms | tokens/s | step × LoRA | peak MB | peak × LoRA | "
          "merged infer ms | infer × none |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['rank'] or '-'} | {r['trainable']:,} ({r['trainable_percent']:.3f}) | "
              f"{r['step_ms']:.1f} | {r['tokens_per_s']:.0f} | {fmt(r['step_vs_lora'], '.3f')} | "
              f"{fmt(r['peak_mb'], '.0f')} | {fmt(r['peak_vs_lora'], '.3f')} | {r['merged_infer_ms']:.1f} | "
              f"{fmt(r['infer_vs_none'], '.3f')} |")
    print(f"medians of {args.rounds} interleaved training rounds and {args.infer_rounds} inference rounds, each after "
          f"{args.warmup} warm-up rounds")
    return rows


if __name__ == "__main__":
    cli.run(main)
