"""What each method costs: a training step's time and peak memory, and inference latency after merging.

    python -m experiments.bench --model checkpoints/SmolLM2-135M-Instruct --ranks 4,16
    python -m experiments.bench --shape llama-3.2-1b --layers 4 --batch-size 4 --seq-len 256     # no weights needed
    python -m experiments.bench --plan --shape llama-3-8b --method pera --micro-batch-size 4      # memory plan, nothing allocated
    python -m experiments.bench --shape smollm2-135m --methods lora,pera --grad-checkpoint        # what checkpointing saves
    python -m experiments.bench --host 170000      # train.py's host work per step;   --load-rss 1.0: loading a checkpoint
    python -m experiments.bench --costs --batch-size 16 --seq-len 256   # kernel calls per step, bytes kept for the backward
    python -m experiments.bench --plan-against results/bench-h200-llama-3-8b.json   # the plan of each measured CUDA peak

All variants share one frozen base model (each adapter wraps the same nn.Linear objects) and run
interleaved in one process, after warm-up rounds, so machine noise hits them alike; each figure is the
median over rounds and is printed with its ratio to LoRA at the same rank. A training step is what
train.py does: forward, loss on the last --loss-tokens positions of each row (a commonsense response is
about that long), backward, AdamW. "none" is the frozen model's forward and backward alone, the floor
under every method. Peak memory is CUDA's max_memory_allocated, or on a CPU the peak resident memory of
a separate process that builds the model and runs the variant alone. Inference is a prefill (the batch
through the model, logits at the last position, no_grad) with each adapter merged, against the model
without adapters.

"hira-plain", "hilora-plain", "pera-plain", "loran-plain" are those methods' plain computations (the class's
`lean = False`), to time each lean path against the computation it replaces.

"hilora" at rank r is HiLoRA with r1 = r − r//2, r2 = r//2 (2 + 2 at r = 4: LoRA's parameters at r); its row also
gives its step as a multiple of HiRA's at r1 plus LoRA's at r2 less the frozen model's, when those ran too
(`--ranks 2,4 --methods none,lora,hira,hilora`).

"dora-peft" is Hugging Face PEFT's DoRA computation (peft 0.21, DoraLinearLayer / DoraLinearVariant),
re-implemented here so that this script needs no peft and times both DoRAs on the same model code; each
DoRA row then also gets its step time as a multiple of PEFT's.
"""
import argparse
import json
import multiprocessing
import os
import random
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from tqdm import tqdm

import dora
from model import Config, Transformer
from support import adapters, cli
from support.safetensors_io import save_safetensors
from train import DEFAULT_DROPOUT, collate, epoch_batches, loss_sum

# Public models' shapes, for machines without their weights (random initialisation; the cost is the same).
SHAPES = {
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True),
    "llama-3.2-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True,
                         rope_theta=500000.0),
    "llama-2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32),
    "llama-3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0),
    "qwen2.5-7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, qkv_bias=True, model_type="qwen2",
                       rope_theta=1000000.0),
}
VARIANTS = {"none": ("none", {}), "lora": ("lora", {}), "hira": ("hira", {}), "pera": ("pera", {}),
            "pera-square": ("pera", {"terms": "square"}), "pera-cross": ("pera", {"terms": "cross"}),
            "dora": ("dora", {}), "dora-peft": ("dora-peft", {}), "loran": ("loran", {}), "hilora": ("hilora", {}),
            # each method's plain computation, where it has a lean one beside it (the class's `lean = False`)
            "hira-plain": ("hira", {"lean": False}), "hilora-plain": ("hilora", {"lean": False}),
            "pera-plain": ("pera", {"lean": False}), "loran-plain": ("loran", {"lean": False})}
DEFAULT_METHODS = [m for m in VARIANTS if not m.endswith("-plain")]


class PeftDoRALinear(dora.DoRALinear):
    """DoRA as PEFT 0.21 computes it, step for step, for timing against dora.py (same parameters, same merge).

    PEFT forms B A by passing an (in, in) identity through A and B (an FSDP-friendly product), adds it to W0
    as an (out, in) matrix and takes that matrix's row norms; then, with g = m / n,
    y = base(x) + (g − 1) ⊙ (base(x) − bias) + g ⊙ s·B A x (with dropout active in training, the middle
    term is (g − 1) ⊙ (W0 · dropout(x)) and the LoRA path sees dropout(x) as well).
    """

    def forward(self, x):
        A, B, s = self.A, self.B, self.scaling
        eye = torch.eye(A.shape[1], device=A.device, dtype=A.dtype)
        lora_weight = F.linear(F.linear(eye, A), B).T.to(x.dtype)  # (out, in) = B A, via the identity
        weight = self.base.weight.to(x.dtype)
        norm = torch.linalg.norm(weight + s * lora_weight.detach(), dim=1).to(weight.dtype).detach()
        g = (self.m / norm).view(1, -1)
        result = self.base(x)
        if self.training and isinstance(self.dropout, nn.Dropout):
            x = self.dropout(x)
            base_result = F.linear(x, weight)
        else:
            base_result = result - self.base.bias if self.base.bias is not None else result
        lora_result = F.linear(F.linear(x, A), B)
        return result + ((g - 1) * base_result + g * lora_result * s)


REFERENCES = {"dora-peft": PeftDoRALinear}  # re-implementations of other libraries' layers, by variant name


def split(method, rank, kw):
    """The rank and arguments a variant at rank r is built with: HiLoRA's r1 = r − r//2 and lora_rank r2 = r//2."""
    return (rank - rank // 2, {**kw, "lora_rank": rank // 2}) if method == "hilora" else (rank, kw)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--model", help="a Hugging Face model folder")
    where.add_argument("--shape", choices=list(SHAPES), help="a public model's shape, randomly initialised")
    p.add_argument("--layers", type=cli.POSITIVE_INT, default=None, help="keep only the first N layers")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--ranks", default="4,16")
    p.add_argument("--targets", default=",".join(adapters.DEFAULT_TARGETS))
    p.add_argument("--batch-size", type=cli.POSITIVE_INT, default=8)
    p.add_argument("--seq-len", type=cli.Number(int, low=2), default=128)
    p.add_argument("--loss-tokens", type=cli.COUNT, default=16, help="positions per row with a loss (0: all)")
    p.add_argument("--rounds", type=cli.POSITIVE_INT, default=10, help="measured rounds (each variant once per round)")
    p.add_argument("--infer-rounds", type=cli.POSITIVE_INT, default=20,
                   help="measured inference rounds (cheaper than steps)")
    p.add_argument("--warmup", type=cli.COUNT, default=2)
    p.add_argument("--device", type=cli.device, default=None)
    p.add_argument("--no-memory", action="store_true", help="skip the CPU memory subprocesses")
    p.add_argument("--grad-checkpoint", action="store_true",
                   help="benchmark: each variant also with activation checkpointing; --plan: plan with it")
    p.add_argument("--compile", action="store_true",
                   help="also time each variant's training step compiled (Transformer.compile: every block, adapters "
                        "included), interleaved with its eager step; adds the compiled step, its ratio to eager and "
                        "to compiled LoRA, and the compile time (the first compiled step's wall time less a step)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: one thread, timed by this process's CPU time, which a machine shared with other jobs "
                        "does not inflate (the wall clock also counts waiting for a core); CPU only")
    p.add_argument("--json", help="also write the results to this file")
    plan = p.add_argument_group("memory planner (--plan): what one training step needs, by part, without weights")
    plan.add_argument("--plan", action="store_true", help="plan the memory of a train.py run instead of measuring")
    plan.add_argument("--method", default="pera", help=f"one of {', '.join(m for m in DEFAULT_METHODS if m != 'none')}")
    plan.add_argument("--rank", type=cli.POSITIVE_INT, default=16)
    plan.add_argument("--micro-batch-size", type=cli.POSITIVE_INT, default=None,
                      help="examples per forward (default: --batch-size)")
    plan.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="as train.py's --precision")
    plan.add_argument("--dropout", type=cli.DROPOUT, default=None, help="adapter dropout (default: train.py's)")
    plan.add_argument("--measure", action="store_true", help="also run the step for real on this CPU and compare")
    plan.add_argument("--plan-against", metavar="FILES", help="comma-separated benchmark JSON files measured on CUDA: "
                      "plan each of their rows under the settings it ran with, beside its measured peak")
    plan.add_argument("--costs", action="store_true", help="the two CPU proxies for every method at --ranks: kernel "
                      "calls per training step, and bytes saved for the backward and the planned peak at the "
                      "Llama-3.2-1B and Llama-3-8B shapes (micro-batch --batch-size x --seq-len)")
    plan.add_argument("--count-layers", type=cli.POSITIVE_INT, default=16,
                      help="--costs: blocks of the tiny model whose kernel calls are counted (16: Llama-3.2-1B's)")
    plan.add_argument("--plan-grid", action="store_true", help="which methods fit on 24/48/80 GB for the papers' "
                      "7-8B models at --rank, batch 16, micro-batch 1-16, with and without checkpointing")
    other = p.add_argument_group("host work and loading")
    other.add_argument("--host", type=cli.POSITIVE_INT, metavar="N",
                       help="time train.py's host work per step for N examples")
    other.add_argument("--load-rss", type=cli.POSITIVE, metavar="GB", help="peak RSS loading a generated sharded bf16 "
                                                                     "checkpoint of this size")
    args = p.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.clock == "cpu" and args.device != "cpu":
        p.error("--clock cpu times CPU runs only")
    args.methods = args.methods.split(",")
    if (args.plan or args.plan_grid) and (args.method not in DEFAULT_METHODS or args.method == "none"):
        p.error(f"--method {args.method}: choose from {', '.join(m for m in DEFAULT_METHODS if m != 'none')}")
    args.micro_batch_size = args.micro_batch_size or args.batch_size
    if args.loss_tokens >= args.seq_len:
        p.error(f"--loss-tokens ({args.loss_tokens}) must be below --seq-len ({args.seq_len}): each predicts the next token")
    unknown = [m for m in args.methods if m not in VARIANTS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if "lora" not in args.methods:
        p.error("--methods must include lora: every ratio is to LoRA")
    if args.compile and args.warmup < 1:
        p.error("--compile needs --warmup 1 or more: the first compiled step is spent compiling")
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
    """(label, method, rank, extra arguments); "none" once, the others at every rank; with --grad-checkpoint each
    also as "<label>+ckpt", the same variant with activation checkpointing."""
    out = [("none", "none", 0, {})] if "none" in args.methods else []
    for r in args.ranks:
        for m in args.methods:
            method, kw = VARIANTS[m]
            if method != "none" and not (kw.get("terms") == "cross" and r == 1) and not (method == "hilora" and r < 2):
                out.append((m, method, r, kw))
    if getattr(args, "grad_checkpoint", False):
        out += [(label + "+ckpt", method, r, kw) for label, method, r, kw in out if method != "none"]
    return out


def base_layers(model, targets):
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in targets}


def make_adapters(model, method, rank, kw, targets):
    """{layer name: adapter around the model's own linear}: every variant shares the base weights."""
    torch.manual_seed(rank)
    cls = REFERENCES.get(method) or adapters.METHODS[method]
    rank, kw = split(method, rank, kw)
    lean, kw = kw.get("lean", True), {k: v for k, v in kw.items() if k != "lean"}
    layers = {name: cls(module, rank, **kw) for name, module in base_layers(model, targets).items()}
    for layer in layers.values() if not lean else ():
        layer.lean = False
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
        self.checkpoint = label.endswith("+ckpt")
        self.layers = base_layers(model, args.targets) if method == "none" else make_adapters(model, method, rank, kw, args.targets)
        self.params = [p for layer in self.layers.values() for p in layer.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4) if self.params else None
        self.trainable = sum(p.numel() for p in self.params)
        self.step_s, self.infer_s, self.peak_mb = [], [], []
        self.compiled_s, self.first_compiled_s = [], None  # --compile: steps of the compiled model; its first, wall


def training_step(model, variant, ids, labels, autocast):
    install(model, variant.layers)
    model.grad_checkpoint = variant.checkpoint
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


def timed(fn, device, clock=time.perf_counter):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = clock()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return clock() - start


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


# -----------------------------------------------------------------------------
# The memory planner: the step is run on fake tensors (shapes and dtypes, no data), and every storage that
# the forward and backward create is counted while it is alive.

class LiveBytes(TorchDispatchMode):
    """Bytes of the storages created under it that are still alive (a view counts once), their peak, and
    which storages were alive at the peak. Storages in `ignore` (the model's own weights) are not counted.
    A storage is known by its address, which a later storage may reuse: each entry keeps a weak reference
    that tells whether the storage it names is still the one alive."""

    def __init__(self, ignore=()):
        super().__init__()
        self.ignore, self.live, self.now, self.peak, self.at_peak = set(ignore), {}, 0, 0, {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key, entry = storage._cdata, self.live.get(storage._cdata)
                if key not in self.ignore and (entry is None or entry[0].expired()):
                    self.now += storage.nbytes() - (entry[1] if entry else 0)
                    self.live[key] = (StorageWeakRef(storage), storage.nbytes())
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.now -= self.live.pop(key)[1]
        if self.now > self.peak:
            self.peak, self.at_peak = self.now, dict(self.live)
        return out


def plan_config(args) -> Config:
    if args.model:
        config = Config.from_hf(json.loads((Path(args.model) / "config.json").read_text()))
    else:
        config = Config(**SHAPES[args.shape])
    if args.layers:
        config.num_hidden_layers = args.layers
    return config


def fake_model(args, config, layers=None):
    """The adapted model on fake tensors: parameters with shapes and dtypes, and no memory behind them."""
    config = Config(**{**vars(config), "num_hidden_layers": layers or config.num_hidden_layers})
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if args.precision == "bf16" else torch.float32)  # the frozen base
    try:
        model = Transformer(config)
    finally:
        torch.set_default_dtype(default)
    method, kw = VARIANTS[args.method]
    rank, kw = split(method, args.rank, kw)  # HiLoRA: r1 and its lora_rank
    dropout = DEFAULT_DROPOUT[method] if args.dropout is None else args.dropout
    adapters.inject(model, adapters.settings(method, rank, args.targets, dropout=dropout, **kw))
    model.grad_checkpoint = args.grad_checkpoint
    return model.train()


def traced_activations(args, config, layers):
    """Peak bytes of one micro-batch's forward and backward, less the adapter's gradients alive at that peak,
    and the bytes its forward saved for the backward."""
    with FakeTensorMode():
        model = fake_model(args, config, layers)
        own = {t.untyped_storage()._cdata for t in [*model.parameters(), *model.buffers()]}
        ids = torch.randint(0, config.vocab_size, (args.micro_batch_size, args.seq_len))
        k = args.loss_tokens or args.seq_len - 1
        tracker, saved = LiveBytes(ignore=own), SavedBytes(ignore=own)
        with tracker:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"), saved.hooks():
                h = model.hidden(ids)[:, -k - 1:-1]  # (B, k, d): the positions with a loss, as train.py's loss_sum
                logits = model.logits(h.reshape(-1, h.size(-1))).float()  # (B k, vocab)
                loss = F.cross_entropy(logits, ids[:, -k:].reshape(-1), reduction="sum")
            (loss / logits.size(0)).backward()
        grads = {p.grad.untyped_storage()._cdata for p in model.parameters() if p.grad is not None}
        peak = tracker.peak - sum(n for key, (ref, n) in tracker.at_peak.items() if key in grads and not ref.expired())
        return peak, saved.bytes


def plan(args, micro_batches=None, traced=None) -> dict:
    """Memory of one train.py step by part. Activations are traced at one and two layers and extended to the
    model's depth (every block saves the same; checkpointing keeps each block's input plus one block's work).
    micro_batches: a list of micro-batch sizes, planned from traces at 1 and 2 (what a step keeps is per token,
    or per step like HiRA's ΔW: linear in the micro-batch size); returns one plan per size."""
    config = plan_config(args)
    if micro_batches:
        at = {(L, b): traced_activations(argparse.Namespace(**{**vars(args), "micro_batch_size": b}), config, L)
              for L in (1, 2) for b in (1, 2)}
        plans = []
        for b in micro_batches:
            one = tuple(p + (b - 1) * (q - p) for p, q in zip(at[1, 1], at[1, 2]))
            two = tuple(p + (b - 1) * (q - p) for p, q in zip(at[2, 1], at[2, 2]))
            plans.append(plan(argparse.Namespace(**{**vars(args), "micro_batch_size": b}), traced=(one, two)))
        return plans
    with FakeTensorMode():
        model = fake_model(args, config)
        frozen = [p for p in model.parameters() if not p.requires_grad]
        trainable = [p for p in model.parameters() if p.requires_grad]
        weight_bytes = sum(p.numel() * p.element_size() for p in frozen)
        n_trainable = sum(p.numel() for p in trainable)
        trainable_bytes = sum(p.numel() * p.element_size() for p in trainable)
    (one, saved_one), (two, saved_two) = traced or (traced_activations(args, config, 1), traced_activations(args, config, 2))
    activation_bytes = one + (config.num_hidden_layers - 1) * (two - one)
    parts = {"weight_bytes": weight_bytes, "trainable_params": n_trainable, "trainable_bytes": trainable_bytes,
             "grad_bytes": trainable_bytes,  # float32, like the parameters
             "optimizer_bytes": 2 * trainable_bytes,  # AdamW's exp_avg and exp_avg_sq
             "activation_bytes": activation_bytes}
    parts["total_bytes"] = weight_bytes + adapters.STATE_BYTES * n_trainable + activation_bytes  # as adapters.check_fits
    parts["activation_bytes_per_layer"] = two - one
    parts["saved_bytes"] = saved_one + (config.num_hidden_layers - 1) * (saved_two - saved_one)  # kept for the backward
    return parts


def measured_peak(args, malloc_default=False):
    """Peak resident memory that two real steps add to a fresh process (this CPU), against the planner's total.

    glibc's malloc keeps freed blocks of up to 32 MB in its heap for reuse, so resident memory grows past what
    the live tensors hold; a fixed mmap threshold makes it hand every large tensor back on free, as a GPU
    allocator hands it back to its pool. That is the figure compared with the plan; malloc_default=True
    measures with glibc's defaults."""
    ctx = multiprocessing.get_context("spawn")
    saved = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    if not malloc_default:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(1 << 17)  # read by the child's glibc at its start
    try:
        with ctx.Pool(1) as pool:
            return pool.apply(_measure_probe, (vars(args),))
    finally:
        if not malloc_default:
            os.environ.pop("MALLOC_MMAP_THRESHOLD_") if saved is None else os.environ.update(MALLOC_MMAP_THRESHOLD_=saved)


def rss_kb(field):
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def _measure_probe(arg_dict, warm_up=True):
    args = argparse.Namespace(**arg_dict)
    torch.manual_seed(0)
    if warm_up:  # the same step on a tiny model first: the runtime's own buffers (thread pools, kernel caches)
        tiny = {"shape": None, "model": None, "layers": None, "micro_batch_size": 1, "seq_len": 8, "loss_tokens": 4}
        _measure_probe({**arg_dict, **tiny, "tiny": True}, warm_up=False)
        Path("/proc/self/clear_refs").write_text("5")  # the peak resident size starts again from now
    before = rss_kb("VmRSS")
    config = Config(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                    num_key_value_heads=2) if arg_dict.get("tiny") else plan_config(args)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if args.precision == "bf16" else torch.float32)
    try:
        with torch.device("meta"):
            model = Transformer(config)
        model = model.to_empty(device="cpu")  # weights without an initialisation pass (its values do not matter)
        model.inv_freq = model.inv_freq.float()
    finally:
        torch.set_default_dtype(default)
    method, kw = VARIANTS[args.method]
    rank, kw = split(method, args.rank, kw)  # HiLoRA: r1 and its lora_rank
    dropout = DEFAULT_DROPOUT[method] if args.dropout is None else args.dropout
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    adapters.inject(model, adapters.settings(method, rank, args.targets, dropout=dropout, **kw))
    model.grad_checkpoint = args.grad_checkpoint
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(0, config.vocab_size, (args.micro_batch_size, args.seq_len))
    labels = ids.clone()
    labels[:, :-(args.loss_tokens or args.seq_len)] = -100
    for _ in range(2):  # the second step has AdamW's state and the gradients of the first
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss, n = loss_sum(model, ids, labels)
        (loss / n).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (rss_kb("VmHWM") - before) * 1024


# -----------------------------------------------------------------------------
# Two exact proxies for what a step costs on a GPU, counted on a CPU. A small model on a GPU runs as fast as
# the host issues kernels, so the first is the number of operator calls that launch one in a training step;
# the second is what the forward keeps for the backward, the part of the peak that a method's design decides.

COUNT_CONFIG = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                    num_key_value_heads=2)  # LLaMA-shaped and tiny: the count does not depend on the widths
NO_KERNEL = {torch.ops.aten.empty.memory_format, torch.ops.aten.empty_strided.default, torch.ops.aten.new_empty.default,
             torch.ops.aten.new_empty_strided.default, torch.ops.aten.empty_like.default,  # allocation only
             torch.ops.aten._unsafe_view.default}  # a view that autograd does not track as one


class KernelCalls(TorchDispatchMode):
    """Counts the aten operator calls that run a kernel: every call below autograd (the backward's too) but
    views and metadata (a view, a transpose, a detach: no kernel), bare allocations, the profiler's markers,
    and calls on `host` tensors only (AdamW's step counters, which stay on the CPU when the model is on CUDA)."""

    def __init__(self, host=()):
        super().__init__()
        self.host, self.calls = {t.untyped_storage()._cdata for t in host}, {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        on_host = tensors and all(t.untyped_storage()._cdata in self.host for t in tensors)
        out = func(*args, **(kwargs or {}))
        no_tensor = not tensors and not any(isinstance(t, torch.Tensor) for t in tree_flatten(out)[0])  # promote_types
        if not (func.is_view or func in NO_KERNEL or func.namespace != "aten" or on_host or no_tensor):
            name = str(func.overloadpacket).removeprefix("aten.")
            self.calls[name] = self.calls.get(name, 0) + 1
        return out


def kernel_calls(method, rank, layers=16, kw=None, targets=adapters.DEFAULT_TARGETS):
    """{aten op: calls} in one training step as a GPU runs train.py's: the frozen base in bf16 under bf16
    autocast, adapters and AdamW in float32, AdamW's foreach form (CUDA's default), no dropout (as the
    benchmark's steps), on a tiny LLaMA-shaped model of `layers` blocks. The second step is counted: the
    first also creates AdamW's state."""
    args = argparse.Namespace(targets=list(targets))
    torch.manual_seed(0)
    model = Transformer(Config(**COUNT_CONFIG, num_hidden_layers=layers)).to(torch.bfloat16).requires_grad_(False)
    v = Variant(model, method, method, rank, dict(VARIANTS[method][1], **(kw or {})), args)
    if v.optimizer is not None:
        v.optimizer = torch.optim.AdamW(v.params, lr=1e-4, foreach=True)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, COUNT_CONFIG["vocab_size"], (2, 16), generator=g)
    labels = ids.clone()
    labels[:, :-4] = -100
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the count is the same; on a busy machine one thread is much faster
    try:
        training_step(model, v, ids, labels, autocast)
        steps = [s["step"] for s in v.optimizer.state.values()] if v.optimizer is not None else []
        with KernelCalls(host=steps) as counter:
            training_step(model, v, ids, labels, autocast)
    finally:
        torch.set_num_threads(threads)
    return counter.calls


class SavedBytes:
    """Bytes of the distinct storages that autograd keeps for the backward (saved_tensors_hooks), less the
    model's own parameters and buffers, which live anyway."""

    def __init__(self, ignore=()):
        self.ignore, self.kept, self.bytes = set(ignore), {}, 0

    def pack(self, t):
        storage = t.untyped_storage()
        key, ref = storage._cdata, self.kept.get(storage._cdata)
        if key not in self.ignore and (ref is None or ref.expired()):  # a storage seen once (an address reused: anew)
            self.kept[key] = StorageWeakRef(storage)  # weak: the backward still frees what it is done with
            self.bytes += storage.nbytes()
        return t

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)


COST_METHODS = ("lora", "hira", "hilora", "pera", "dora", "loran")
COST_SHAPES = ("llama-3.2-1b", "llama-3-8b")


def costs(args):
    """The two proxies for every method at every rank: kernel calls per step (a tiny model --count-layers deep)
    and, at the Llama-3.2-1B and Llama-3-8B shapes, the bytes saved for the backward and the planned peak of
    one micro-batch of --batch-size x --seq-len, no dropout (as the benchmark's steps), no checkpointing."""
    rows = []
    specs = [("none", 0)] + [(m, r) for r in args.ranks for m in COST_METHODS]
    for method, rank in tqdm(specs, desc="costs"):
        calls = kernel_calls(method, rank, layers=args.count_layers)
        row = {"method": method, "rank": rank, "kernel_calls": sum(calls.values()), "calls_by_op": calls}
        for shape in COST_SHAPES if method != "none" else ():
            a = argparse.Namespace(**{**vars(args), "shape": shape, "model": None, "layers": None, "method": method,
                                      "rank": rank, "micro_batch_size": args.batch_size, "dropout": 0.0,
                                      "grad_checkpoint": False})
            parts = plan(a)
            row[shape] = {"saved_bytes": parts["saved_bytes"], "total_bytes": parts["total_bytes"]}
        rows.append(row)
    lora = {r["rank"]: r for r in rows if r["method"] == "lora"}
    gib = lambda n: n / 2 ** 30  # noqa: E731
    print(f"Kernel-launching operator calls per training step (bf16 autocast, AdamW foreach, {args.count_layers} "
          f"blocks); bytes saved for the backward and planned peak, bf16, micro-batch {args.batch_size} x "
          f"{args.seq_len}, no dropout:")
    print("| method | r | kernel calls | × LoRA | " + " | ".join(
        f"{s} saved GiB (× LoRA) | {s} peak GiB (× LoRA)" for s in COST_SHAPES) + " |")
    print("|---|---|---|---|" + "---|---|" * len(COST_SHAPES))
    for r in rows:
        ref = lora.get(r["rank"])
        r["calls_vs_lora"] = r["kernel_calls"] / ref["kernel_calls"] if ref else None
        cells = []
        for shape in COST_SHAPES:
            if shape not in r:
                cells += ["-", "-"]
                continue
            for key in ("saved_bytes", "total_bytes"):
                r[shape][key.replace("bytes", "vs_lora")] = ratio = r[shape][key] / ref[shape][key]
                cells.append(f"{gib(r[shape][key]):.2f} ({ratio:.3f})")
        print(f"| {r['method']} | {r['rank'] or '-'} | {r['kernel_calls']:,} | "
              f"{'-' if r['calls_vs_lora'] is None else format(r['calls_vs_lora'], '.3f')} | {' | '.join(cells)} |")
    return {"rows": rows, "count_layers": args.count_layers}


def plan_against(args, files):
    """The plan of every row of measured benchmark files (CUDA peaks) under the settings each was run with."""
    rows = []
    for file in files:
        with cli.user_input():
            measured = json.loads(Path(file).read_text())
        a = measured["args"]
        for row in measured["rows"]:
            method = row["method"]
            if method == "none" or method not in VARIANTS or not row.get("peak_mb") or "+ckpt" in method:
                continue
            spec = argparse.Namespace(**{**vars(args), "shape": a["shape"], "model": None, "layers": a.get("layers"),
                                         "method": method, "rank": row["rank"], "batch_size": a["batch_size"],
                                         "micro_batch_size": a["batch_size"], "seq_len": a["seq_len"],
                                         "loss_tokens": a["loss_tokens"], "targets": a["targets"],
                                         "precision": "bf16", "dropout": 0.0, "grad_checkpoint": False})
            planned = plan(spec)["total_bytes"]
            rows.append({"file": Path(file).name, "shape": a["shape"], "method": method, "rank": row["rank"],
                         "planned_bytes": planned, "measured_bytes": row["peak_mb"] * 2 ** 20,
                         "planned_vs_measured": planned / (row["peak_mb"] * 2 ** 20)})
    print("| shape | method | r | planned GiB | measured GiB | planned / measured |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['method']} | {r['rank']} | {r['planned_bytes'] / 2 ** 30:.2f} | "
              f"{r['measured_bytes'] / 2 ** 30:.2f} | {r['planned_vs_measured']:.3f} |")
    return {"rows": rows}


def print_plan(args, parts):
    gib = lambda n: f"{n / 2 ** 30:.2f} GiB"  # noqa: E731
    print(f"memory plan: {args.model or args.shape}, {args.method} r={args.rank}, {args.precision}, batch "
          f"{args.batch_size} in micro-batches of {args.micro_batch_size} x {args.seq_len} tokens, "
          f"{'with' if args.grad_checkpoint else 'without'} activation checkpointing")
    print("| part | size |\n|---|---|")
    print(f"| frozen weights ({args.precision}) | {gib(parts['weight_bytes'])} |")
    print(f"| trainable parameters ({parts['trainable_params']:,}, float32) | {gib(parts['trainable_bytes'])} |")
    print(f"| their gradients (float32) | {gib(parts['grad_bytes'])} |")
    print(f"| AdamW state (2 x float32) | {gib(parts['optimizer_bytes'])} |")
    print(f"| activations at the peak (one micro-batch) | {gib(parts['activation_bytes'])} |")
    print(f"| total | {gib(parts['total_bytes'])} |")
    if "measured_bytes" in parts:
        print(f"measured on this CPU: {gib(parts['measured_bytes'])} of peak resident memory added by the step "
              f"(planned / measured = {parts['total_bytes'] / parts['measured_bytes']:.3f})")


# -----------------------------------------------------------------------------
# Host work per training step, and the memory of loading a big checkpoint.

def host_time(args):
    """train.py's host work per step for N synthetic examples: planning (once per epoch), picking the batch,
    counting its loss tokens, collating its micro-batches and one .item() -- the model's work excluded."""
    rng = random.Random(0)
    examples = []
    for _ in range(args.host):  # prompts of 40-256 tokens, responses of 5-17, as in the commonsense sets
        n_prompt, n_response = rng.randint(40, 256), rng.randint(5, 17)
        examples.append((list(range(n_prompt + n_response)), [-100] * n_prompt + list(range(n_response))))
    lengths = [len(x) for x, _ in examples]
    n_scored = [sum(y != -100 for y in labels[1:]) for _, labels in examples]
    batch_size, micro = args.batch_size, args.micro_batch_size
    clock = time.process_time  # this process's CPU time: the machine's other work does not count
    start = clock()
    plan_ = epoch_batches(lengths, batch_size, 42, 0)
    plan_s = clock() - start
    steps = min(len(plan_), 2000)
    start = clock()
    for index in range(steps):
        batch = plan_[index]
        n_labels = sum(n_scored[i] for i in batch)
        mine = [examples[i] for i in batch]
        total = torch.zeros((), dtype=torch.float64)
        for i in range(0, len(mine), micro):
            ids, labels = collate(mine[i:i + micro], 0, torch.device("cpu"))
            total += (labels != -100).sum()  # stands in for the loss the model would compute
        (total / n_labels).item()
    step_s = (clock() - start) / steps
    result = {"examples": args.host, "batch_size": batch_size, "micro_batch_size": micro,
              "epoch_plan_ms": 1000 * plan_s, "steps_per_epoch": len(plan_),
              "host_ms_per_step": 1000 * (step_s + plan_s / len(plan_)),
              "host_ms_per_step_replanning_every_step": 1000 * (step_s + plan_s)}
    print(f"host CPU time per step, {args.host:,} examples in batches of {batch_size} (micro-batches of {micro}): "
          f"{result['host_ms_per_step']:.2f} ms with each epoch planned once ({result['epoch_plan_ms']:.0f} ms per "
          f"plan, {len(plan_):,} steps per epoch); re-planning at every step would make it "
          f"{result['host_ms_per_step_replanning_every_step']:.1f} ms")
    return result


def sharded_checkpoint(folder, target_bytes, shard_bytes=256 * 2 ** 20, d=2048):
    """A random bf16 Llama-style checkpoint of about target_bytes, in shards, with its index and config."""
    f = d * 11 // 4
    layers = max(1, round((target_bytes / 2 - 2 * 32000 * d) / (4 * d * d + 3 * d * f)))
    hf = {"model_type": "llama", "vocab_size": 32000, "hidden_size": d, "intermediate_size": f,
          "num_hidden_layers": layers, "num_attention_heads": d // 128, "num_key_value_heads": d // 128}
    config = Config.from_hf(hf)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in Transformer(config).state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf))
    weight_map, shard, size, total = {}, {}, 0, 0
    g = torch.Generator().manual_seed(0)

    def flush():
        name = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
        save_safetensors(shard, folder / name)
        weight_map.update({k: name for k in shard})
        shard.clear()

    for k, shape in shapes.items():
        t = torch.randn(shape, generator=g).to(torch.bfloat16)
        if size and size + t.nbytes > shard_bytes:
            flush()
            size = 0
        shard[k], size, total = t, size + t.nbytes, total + t.nbytes
    flush()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                     "weight_map": weight_map}))
    return total


def loading_peak(folder, dtype):
    """Peak resident memory that Transformer.from_pretrained(folder, dtype) adds to a fresh process."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_loading_probe, (str(folder), str(dtype).removeprefix("torch.")))


def _loading_probe(folder, dtype, touch=True):
    if touch:  # a first load pays the runtime's one-time costs (kernels, caches); measure a second one
        _loading_probe(folder, dtype, touch=False)
        import gc
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # the peak resident size starts again from now
    before = rss_kb("VmRSS")
    model = Transformer.from_pretrained(folder, dtype=getattr(torch, dtype))
    assert all(p.dtype == getattr(torch, dtype) for p in model.parameters())
    if touch:  # read every weight once: memory-mapped pages become resident only when first used
        with torch.no_grad():
            sum(p.sum().item() for p in model.parameters())  # no float32 copy: summed as stored
    return (rss_kb("VmHWM") - before) * 1024


def load_rss(args):
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        total = sharded_checkpoint(Path(tmp) / "ckpt", int(args.load_rss * 1e9))
        shards = len(list((Path(tmp) / "ckpt").glob("*.safetensors")))
        result = {"checkpoint_bytes": total, "shards": shards}
        for dtype in (torch.bfloat16, torch.float32):
            peak = loading_peak(Path(tmp) / "ckpt", dtype)
            name = str(dtype).removeprefix("torch.")
            result[f"peak_rss_bytes_{name}"], result[f"peak_vs_checkpoint_{name}"] = peak, peak / total
            print(f"loading a {total / 1e9:.2f} GB bf16 checkpoint in {shards} shards as {name}: peak RSS "
                  f"+{peak / 1e9:.2f} GB = {peak / total:.2f} x the checkpoint"
                  + (" (the float32 model itself is 2 x)" if dtype == torch.float32 else ""))
    return result


GPUS_GIB = (24, 48, 80)
CUDA_RESERVE_GIB = 1.0  # the CUDA context and cuBLAS workspace, which the plan leaves out (an estimate)


def plan_grid(args):
    """For each 7-8B model, method and checkpointing: the largest micro-batch (of 1-16, batch 16) that fits."""
    rows = []
    combos = [(shape, m, ckpt) for shape in ("llama-2-7b", "llama-3-8b", "qwen2.5-7b") for m in ("lora", "hira", "pera")
              for ckpt in (False, True)]
    for shape, method, ckpt in tqdm(combos, desc="plans"):
        a = argparse.Namespace(**{**vars(args), "shape": shape, "model": None, "layers": None, "method": method,
                                  "grad_checkpoint": ckpt, "batch_size": 16})
        for micro, parts in zip((1, 2, 4, 8, 16), plan(a, micro_batches=[1, 2, 4, 8, 16])):
            rows.append({"shape": shape, "method": method, "grad_checkpoint": ckpt, "micro_batch_size": micro, **parts})
    print(f"Largest micro-batch (of 1, 2, 4, 8, 16; batch 16) that fits, r={args.rank}, {args.precision}, "
          f"{args.seq_len} tokens, planned total + {CUDA_RESERVE_GIB:.0f} GiB for CUDA itself; - = none fits")
    print("| model | method | checkpointing | " + " | ".join(f"{g} GB" for g in GPUS_GIB) + " | total at micro-batch 1 / 16 |")
    print("|---|---|---|" + "---|" * (len(GPUS_GIB) + 1))
    for shape, method, ckpt in combos:
        mine = [r for r in rows if (r["shape"], r["method"], r["grad_checkpoint"]) == (shape, method, ckpt)]
        cells = []
        for gib in GPUS_GIB:
            fit = [r["micro_batch_size"] for r in mine if r["total_bytes"] / 2 ** 30 + CUDA_RESERVE_GIB <= gib]
            cells.append(str(max(fit)) if fit else "-")
        print(f"| {shape} | {method} | {'yes' if ckpt else 'no'} | {' | '.join(cells)} | "
              f"{mine[0]['total_bytes'] / 2 ** 30:.1f} / {mine[-1]['total_bytes'] / 2 ** 30:.1f} GiB |")
    return {"rows": rows, "gpus_gib": GPUS_GIB, "cuda_reserve_gib": CUDA_RESERVE_GIB}


def main(argv=None):
    args = parse_args(argv)
    args.targets = args.targets.split(",")
    if args.plan_grid:
        result = plan_grid(args)
        if args.json:
            adapters.write_json(args.json, {"args": vars(args), **result})
        return result
    if args.costs or args.plan_against:
        result = costs(args) if args.costs else plan_against(args, args.plan_against.split(","))
        if args.json:
            adapters.write_json(args.json, {"args": vars(args), **result})
        return result
    if args.plan or args.host or args.load_rss:
        result = plan(args) if args.plan else host_time(args) if args.host else load_rss(args)
        if args.plan:
            if args.measure:
                result["measured_bytes"] = measured_peak(args)
            print_plan(args, result)
        if args.json:
            adapters.write_json(args.json, {"args": vars(args), **result})
        return result
    device = torch.device(args.device)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.clock == "cpu":
        torch.set_num_threads(1)  # CPU time of several threads would also count their spin-waiting
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

    if args.compile:
        model.compile()  # as train.py does; each variant gets its own compiled blocks at its first compiled step

    # Training steps, interleaved: round k runs every variant once (with --compile, eager then compiled).
    with cli.compile_errors():  # a machine that cannot compile: one line, at the first compiled step
        for k in tqdm(range(args.warmup + args.rounds), desc="training steps (rounds)"):
            for v in variants:
                if on_cuda:
                    torch.cuda.reset_peak_memory_stats()
                with torch.compiler.set_stance("force_eager"):
                    t = timed(lambda: training_step(model, v, ids, labels, autocast), device, clock)
                if k >= args.warmup:
                    v.step_s.append(t)
                    if on_cuda:
                        v.peak_mb.append(torch.cuda.max_memory_allocated() / 2 ** 20)
                if args.compile:
                    first = v.first_compiled_s is None
                    t = timed(lambda: training_step(model, v, ids, labels, autocast), device,
                              time.perf_counter if first else clock)  # compiling: subprocesses, the wall clock
                    v.first_compiled_s = t if first else v.first_compiled_s
                    v.compiled_s += [t] if k >= args.warmup and not first else []
    if not on_cuda and not args.no_memory:
        for spec, v in zip(specs, tqdm(variants, desc="peak memory (fresh processes)")):
            peak = cpu_peak_mb(args, spec)
            v.peak_mb += [peak] if peak is not None else []

    # Inference with every adapter merged: plain linears again, so it should cost what the base costs.
    merged = {v.label + str(v.rank): {n: layer.merged() for n, layer in v.layers.items()} if v.method != "none"
              else v.layers for v in variants}
    with torch.no_grad(), autocast(), torch.compiler.set_stance("force_eager"):  # eager, with or without --compile
        for k in tqdm(range(args.warmup + args.infer_rounds), desc="merged inference (rounds)"):
            for v in variants:
                install(model, merged[v.label + str(v.rank)])
                t = timed(lambda: model.logits(model.hidden(ids)[:, -1]), device, clock)  # a generation prefill
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
        if v.compiled_s:
            compiled = statistics.median(v.compiled_s)
            row.update(compiled_step_ms=1000 * compiled, compiled_vs_eager=compiled / step,
                       compiled_vs_lora=compiled / statistics.median(ref.compiled_s) if ref else None,
                       compile_s=v.first_compiled_s - compiled)
        if v.method == "hilora":  # r = r1 + r2
            row["lora_rank"] = split(v.method, v.rank, {})[1]["lora_rank"]
        rows.append(row)
    fmt = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
    print("| method | r | trainable (%) | step ms | tokens/s | step × LoRA | peak MB | peak × LoRA | "
          "merged infer ms | infer × none |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ranks = f"{r['rank'] - r['lora_rank']}+{r['lora_rank']}" if "lora_rank" in r else r["rank"] or "-"
        print(f"| {r['method']} | {ranks} | {r['trainable']:,} ({r['trainable_percent']:.3f}) | "
              f"{r['step_ms']:.1f} | {r['tokens_per_s']:.0f} | {fmt(r['step_vs_lora'], '.3f')} | "
              f"{fmt(r['peak_mb'], '.0f')} | {fmt(r['peak_vs_lora'], '.3f')} | {r['merged_infer_ms']:.1f} | "
              f"{fmt(r['infer_vs_none'], '.3f')} |")
    by_label = {(r["method"], r["rank"]): r for r in rows}
    for r in rows:  # what checkpointing saves and costs, against the same variant without it
        plain = by_label.get((r["method"].removesuffix("+ckpt"), r["rank"]))
        if r["method"].endswith("+ckpt") and plain:
            r["step_vs_no_ckpt"] = r["step_ms"] / plain["step_ms"]
            r["peak_saved_mb"] = plain["peak_mb"] - r["peak_mb"] if r["peak_mb"] and plain["peak_mb"] else None
            print(f"{r['method']} r={r['rank']}: activation checkpointing saves {fmt(r['peak_saved_mb'], '.0f')} MB of "
                  f"peak memory ({fmt(plain['peak_mb'], '.0f')} -> {fmt(r['peak_mb'], '.0f')} MB) for "
                  f"{r['step_vs_no_ckpt']:.3f} x the step time")
    if args.compile:
        print("| method | r | eager step ms | compiled step ms | compiled × eager | step × LoRA, eager | step × LoRA, "
              "compiled | compile s |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['method']} | {r['rank'] or '-'} | {r['step_ms']:.1f} | {r['compiled_step_ms']:.1f} | "
                  f"{r['compiled_vs_eager']:.3f} | {fmt(r['step_vs_lora'], '.3f')} | {fmt(r['compiled_vs_lora'], '.3f')} | "
                  f"{r['compile_s']:.1f} |")
    for r in rows:  # HiLoRA against its parts: HiRA at r1 plus LoRA at r2, less the frozen model's step they both hold
        r1, r2 = r["rank"] - r.get("lora_rank", 0), r.get("lora_rank")
        parts = [by_label.get(key) for key in (("hira", r1), ("lora", r2), ("none", 0))]
        if r2 and all(parts):
            r["parts_ms"] = parts[0]["step_ms"] + parts[1]["step_ms"] - parts[2]["step_ms"]
            r["step_vs_parts"] = r["step_ms"] / r["parts_ms"]
            print(f"hilora r={r1}+{r2}: training step {r['step_vs_parts']:.3f} × (HiRA r={r1} + LoRA r={r2} − none)")
    print(f"medians of {args.rounds} interleaved training rounds and {args.infer_rounds} inference rounds, each after "
          f"{args.warmup} warm-up rounds" + ("; CPU time of one thread" if args.clock == "cpu" else ""))
    peft = {r["rank"]: r for r in rows if r["method"] == "dora-peft"}
    for r in rows:
        if r["method"] == "dora" and r["rank"] in peft:
            r["step_vs_peft"] = r["step_ms"] / peft[r["rank"]]["step_ms"]
            r["peak_vs_peft"] = r["peak_mb"] / peft[r["rank"]]["peak_mb"] if r["peak_mb"] and peft[r["rank"]]["peak_mb"] else None
            print(f"dora r={r['rank']}: training step {r['step_vs_peft']:.3f} × PEFT's DoRA step (dora-peft)"
                  + (f", peak memory {r['peak_vs_peft']:.3f} ×" if r["peak_vs_peft"] else ""))
    return rows


if __name__ == "__main__":
    cli.run(main)
