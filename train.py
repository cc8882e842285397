"""Fine-tune a LLaMA-family model with LoRA, HiRA, PERA, DoRA or LoRAN on the commonsense-reasoning mix.

    python train.py --method pera --rank 4

The recipe is LLM-Adapters' commonsense setup as the HiRA paper (§5.2) and the PERA paper use it: the
LLM-Adapters prompt with the loss on the response, 120 held-out validation examples, AdamW with warm-up
then linear decay, batch 16, targets q, k, v, up, down. Writes to --out: the best adapter by validation
loss in PEFT's layout (adapter_model.safetensors + adapter_config.json), args.json, log.jsonl (one line
per step), metrics.json, and checkpoint/state.pt, from which --resume continues an interrupted run exactly
(support/safety.py: the lock, Ctrl-C and SIGTERM held to the step's end, the state, the resume checks).
For PERA, every --pera-log-every steps a log record also carries how much the polynomial terms carry:
poly_share_median and poly_share_max (‖ΔW − sBA‖/‖sBA‖ over the layers), their bound from the factors' sizes
(poly_share_bound_median, poly_share_bound_max) and its factors (b_max_median, a_max_median, rho_median),
h_max (max |h|), lora_rms_median (the RMS entry of sBA) and h_grad_norm (‖∂L/∂h‖ before clipping); --init
and --h-lr-ratio are the knobs of the PERA study (docs/study.md).
"""
import argparse
import contextlib
import json
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

import pera
from model import Transformer, check_vocabulary
from support import adapters, cli, commonsense, safety
from tokenizer import Tokenizer

# Each method's learning rate and dropout, as its paper or its authors' code use them (each adapter class says whose)
DEFAULT_LR = {method: cls.defaults["lr"] for method, cls in adapters.METHODS.items()}
DEFAULT_DROPOUT = {method: cls.defaults["dropout"] for method, cls in adapters.METHODS.items()}
TRAIN_MIX = "commonsense_170k.json"  # LLM-Adapters' ft-training_set: the eight tasks' training data, as the papers use


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=cli.HelpFormatter)
    p.add_argument("--model", default="checkpoints/SmolLM2-135M-Instruct", help="Hugging Face model folder")
    p.add_argument("--data", default="data/commonsense", help="folder of <task>/train.json files")
    p.add_argument("--tasks", default=None, help="comma-separated training tasks (default: every train set present)")
    p.add_argument("--train-file", default=None, help=f"one JSON file of training records, 'none' for the per-task "
                   f"sets (default: <data>/{TRAIN_MIX} when present and --tasks is not given)")
    p.add_argument("--method", choices=list(adapters.METHODS), default="pera", help="the adapter to train")
    p.add_argument("--rank", type=cli.COUNT, default=16, help="r (HiLoRA: r1, its Hadamard part's, which may be 0)")
    p.add_argument("--lora-rank", type=cli.COUNT, default=None, help="HiLoRA's r2, the rank of its LoRA part (needed by "
                   "--method hilora, and only by it)")
    p.add_argument("--alpha", type=cli.NONZERO, default=None, help="LoRA/PERA/DoRA/LoRAN scaling is alpha / r, HiLoRA's "
                   "LoRA part's alpha / r2 (default alpha = r, HiLoRA's r2)")
    p.add_argument("--dropout", type=cli.DROPOUT, default=None, help="adapter input dropout (default 0.05 LoRA/PERA/DoRA, "
                   "as their papers; 0 for HiRA, as its authors' code, and HiLoRA, to which the HiRA paper gives no "
                   "settings of its own; 0.2 for LoRAN, as its authors' released run)")
    p.add_argument("--terms", choices=["all", "square", "cross"], default="all", help="PERA's polynomial terms")
    p.add_argument("--degree", type=cli.Number(int, low=2), default=2, help="PERA's polynomial degree")
    p.add_argument("--init", choices=["code", "paper"], default="code",
                   help="PERA's init: the authors' code (A Kaiming, B = 0) or the paper's text (A = 0, B Gaussian)")
    p.add_argument("--h-lr-ratio", type=cli.NON_NEGATIVE, default=1.0,
                   help="PERA: h's learning rate is this times --lr (its own AdamW group, same schedule; 0 keeps h "
                        "at 0: PERA's init then trains LoRA's update)")
    p.add_argument("--pera-log-every", type=cli.POSITIVE_INT, default=5,
                   help="PERA: log the polynomial share, max |h| and h's gradient norm every N steps (and at the "
                        "last); one record costs 0.5-1.3 %% of a SmolLM2-135M step (study.py log-cost)")
    p.add_argument("--amplitude", type=cli.FINITE, default=5e-4, help="LoRAN's Sinter amplitude λ (the authors' default; "
                   "their 20-Newsgroups run: 5e-5)")
    p.add_argument("--omega", type=cli.FINITE, default=1e3, help="LoRAN's Sinter frequency ω (the authors' default; "
                   "their 20-Newsgroups run: 1e4)")
    flags = {action.dest for action in p._actions}
    for method in adapters.METHODS:  # a setting of a method with no flag above gets one, with its class's range
        for name, default in adapters.options(method).items():
            if name in flags:
                continue
            flags.add(name)
            kind = adapters.METHODS[method].settings[name]
            p.add_argument("--" + name.replace("_", "-"), default=None if default is adapters.REQUIRED else default,
                           **{"choices": kind} if isinstance(kind, tuple) else {"type": adapters.RANGES[kind]},
                           help=f"{adapters.label(method)}'s {name}")
    p.add_argument("--targets", default=",".join(adapters.DEFAULT_TARGETS), help="comma-separated layer names")
    p.add_argument("--lr", type=cli.POSITIVE, default=None, help="peak learning rate (default: 1e-4 LoRA/PERA, as the PERA "
                   "paper; 1e-3 HiRA, as its paper, and HiLoRA, whose Hadamard part needs HiRA's; 1e-4 DoRA, as its authors' LLaMA-7B r32 and LLaMA3-8B "
                   "commonsense runs; 1e-4 LoRAN, LoRA's, its paper giving none for this task)")
    p.add_argument("--batch-size", type=cli.POSITIVE_INT, default=16, help="examples per optimizer step")
    p.add_argument("--micro-batch-size", type=cli.POSITIVE_INT, default=None,
                   help="examples per forward pass (gradient accumulation)")
    p.add_argument("--epochs", type=cli.POSITIVE, default=3.0, help="passes over the training set")
    p.add_argument("--max-steps", type=cli.POSITIVE_INT, default=None, help="optimizer steps; overrides --epochs")
    p.add_argument("--warmup-steps", type=cli.COUNT, default=100,
                   help="linear warm-up steps, at most a tenth of the run (so that a short run still reaches --lr)")
    p.add_argument("--eval-every", type=cli.POSITIVE_INT, default=200,
                   help="validation loss every N steps (and at the end)")
    p.add_argument("--save-every", type=cli.POSITIVE_INT, default=None,
                   help="resumable state every N steps (default: --eval-every)")
    p.add_argument("--val-size", type=cli.COUNT, default=120, help="examples held out of the training mix")
    p.add_argument("--cutoff", type=cli.POSITIVE_INT, default=commonsense.PROMPT_CUTOFF,
                   help="prompt tokens kept (at least the template's, to the end of \"### Response:\")")
    p.add_argument("--weight-decay", type=cli.NON_NEGATIVE, default=0.0, help="AdamW's weight decay")
    p.add_argument("--grad-clip", type=cli.NON_NEGATIVE, default=1.0, help="max gradient norm (0: no clipping)")
    p.add_argument("--train-on-inputs", action="store_true", help="loss on the prompt too (LLM-Adapters' default)")
    p.add_argument("--seed", type=cli.SEED, default=42, help="seed of torch's and Python's generators")
    p.add_argument("--out", default=None, help="output folder (default: runs/<method>-r<rank>)")
    p.add_argument("--device", type=cli.device, default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--precision", choices=["bf16", "fp32"], default=None,
                   help="bf16: frozen base in bf16 under autocast, adapters and AdamW in float32; fp32: "
                        "everything float32 (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--grad-checkpoint", action="store_true",
                   help="recompute each transformer block in the backward pass: less memory, ~1/3 more compute")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each block, adapters included, and the loss: the same run within float32 "
                        "rounding (it resumes with or without the flag); on a CPU a step takes 0.77-0.92 x eager's "
                        "(SmolLM2) after ~25 s of compiling at the first step. Off by default: it needs a C++ compiler "
                        "and pays off only after ~40 steps (docs/bench.md#compile)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    args = p.parse_args(argv)

    defaults = adapters.METHODS[args.method].defaults  # the method's own (its class says whose)
    args.dropout = defaults["dropout"] if args.dropout is None else args.dropout
    args.lr = defaults["lr"] if args.lr is None else args.lr
    args.micro_batch_size = args.micro_batch_size or args.batch_size
    args.save_every = args.save_every or args.eval_every
    r2 = f"+{args.lora_rank}" if args.lora_rank is not None else ""  # HiLoRA: runs/hilora-r<r1>+<r2>
    args.out = args.out or f"runs/{args.method}-r{args.rank}{r2}"
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.precision = args.precision or ("bf16" if torch.device(args.device).type == "cuda" else "fp32")
    if args.train_file == "none":
        args.train_file = None
    elif args.train_file is None and args.tasks is None and (Path(args.data) / TRAIN_MIX).is_file():
        args.train_file = str(Path(args.data) / TRAIN_MIX)
    elif args.train_file is not None and args.tasks is not None:
        p.error("--train-file and --tasks exclude each other")
    problems = []  # each number's own range is its argparse type's (support/cli.py); here what flags need of each other
    if not adapters.allowed(args.method, "rank", args.rank):  # --rank 0: HiLoRA's r1 only
        problems.append(f"argument --rank: expected {adapters.expected(args.method, 'rank')} for --method "
                        f"{args.method}, got '{args.rank}'")
    own, flag = adapters.options(args.method), lambda name: "--" + name.replace("_", "-")  # noqa: E731
    if missing := [flag(n) for n, default in own.items() if default is adapters.REQUIRED and getattr(args, n) is None]:
        problems.append(f"--method {args.method} needs {' and '.join(missing)}")
    for name in dict.fromkeys(n for m in adapters.METHODS for n in adapters.options(m) if n not in own):
        if getattr(args, name) != p.get_default(name):  # another method's setting: it would change nothing here
            owners = "/".join(adapters.label(m) for m in adapters.METHODS if name in adapters.options(m))
            problems.append(f"{flag(name)} is {owners}'s, not {args.method}'s")
    if args.batch_size % args.micro_batch_size:
        problems.append(f"--batch-size ({args.batch_size}) must be a multiple of --micro-batch-size ({args.micro_batch_size})")
    if args.lr * args.h_lr_ratio > torch.finfo(torch.float32).max / 1e3:  # AdamW's float32 step: lr / (1 − β1^t) ...
        problems.append(f"--lr {args.lr:g} × --h-lr-ratio {args.h_lr_ratio:g} is beyond what AdamW's float32 step "
                        f"holds (at most {torch.finfo(torch.float32).max / 1e3:.3g}: float32's range, less its bias "
                        f"correction)")
    if args.epochs > 1e9:  # more steps than a run can take, and past float's integers: use --max-steps
        problems.append(f"argument --epochs: expected at most 1e9 epochs, got '{args.epochs:g}'")
    if problems:
        p.error("; ".join(problems))
    return args


# -----------------------------------------------------------------------------
# Data: tokenized examples, grouped by length into batches.

def load_examples(args, tokenizer, bos, quiet=False, positions=None):
    """(tasks, training examples, validation examples), each (ids, labels); an example longer than the model's
    positions (max_position_embeddings) keeps its last tokens (after BOS), as eval.py cuts a prompt."""
    with cli.user_input():
        if args.train_file:  # one file of all tasks' records (commonsense_170k)
            tasks = [Path(args.train_file).stem]
            records = commonsense.load_records(args.train_file)
        else:
            tasks = commonsense.resolve_tasks(args.data, "train", args.tasks)
            records = [r for t in tasks for r in commonsense.load_records(Path(args.data) / t / "train.json")]
    random.Random(args.seed).shuffle(records)
    if len(records) <= args.val_size:
        sys.exit(f"error: only {len(records)} training records for {args.val_size} validation examples (--val-size)")
    encoded = [commonsense.encode_example(tokenizer, r, bos, args.train_on_inputs, prompt_cutoff=args.cutoff)
               for r in tqdm(records, desc="tokenizing", leave=False, disable=quiet)]
    if positions is not None and (long := sum(len(ids) > positions for ids, _ in encoded)):
        head = 1 if bos else 0  # the response ends an example: its start goes, BOS stays
        encoded = [(x[:head] + x[len(x) - positions + head:], y[:head] + y[len(y) - positions + head:])
                   if len(x) > positions else (x, y) for x, y in encoded]
        if not quiet:
            print(f"cut {long} training examples to the model's {positions} positions (max_position_embeddings): "
                  f"each kept its last tokens")
    unscored = next((r for r, (_, labels) in zip(records, encoded) if all(t == -100 for t in labels)), None)
    if unscored is not None:  # its loss would be 0 / 0; only an empty output and no end token make one
        sys.exit(f"error: a training record has no response token to learn (output {unscored['output']!r}, and the "
                 f"tokenizer has no end token): instruction {unscored['instruction'][:60]!r}")
    return tasks, encoded[args.val_size:], encoded[:args.val_size]


def epoch_batches(lengths, batch_size, seed, epoch):
    """The batches (lists of example indices) of one epoch, a pure function of (seed, epoch).

    Examples are shuffled, then sorted by length inside windows of 32 batches, so a batch holds
    similar lengths and little of a step is spent on padding; the batches are shuffled again.
    """
    rng = random.Random(seed * 100003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = 32 * batch_size
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples, pad_id, device):
    """Right-padded ids and labels (B, T). Padding sits after every real token, so the causal mask alone
    keeps it out of every real position's attention and no attention mask is needed."""
    T = max(len(ids) for ids, _ in examples)
    ids = torch.tensor([x + [pad_id] * (T - len(x)) for x, _ in examples])  # one tensor op each, not one per row
    labels = torch.tensor([y + [-100] * (T - len(y)) for _, y in examples])
    return ids.to(device), labels.to(device)


def loss_sum(model, ids, labels):
    """Summed next-token cross-entropy over labelled positions, and their count.

    Only labelled positions go through the output layer: with the loss on the response, that is a few
    tokens per example instead of (B, T, vocab) logits.
    """
    h = model.hidden(ids)[:, :-1]  # (B, T-1, d): position t predicts token t+1
    targets = labels[:, 1:]
    keep = targets != -100
    return model.loss(h[keep], targets[keep]), int(keep.sum())  # logits (N, vocab), not (B, T, vocab)


class LossOf(nn.Module):
    """loss_sum as a module's forward, for DistributedDataParallel to wrap (its gradient hooks need its forward)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids, labels):
        return loss_sum(self.model, ids, labels)


@torch.no_grad()
def validation_loss(model, examples, micro_batch_size, pad_id, device, autocast, rank=0, world=1):
    """Mean loss per labelled token; with several processes each takes every world-th micro-batch."""
    model.eval()
    total, count = 0.0, 0
    for i in range(rank * micro_batch_size, len(examples), world * micro_batch_size):
        with autocast():
            s, n = loss_sum(model, *collate(examples[i:i + micro_batch_size], pad_id, device))
        total, count = total + s.item(), count + n
    if world > 1:
        both = torch.tensor([total, count], dtype=torch.float64, device=device)
        dist.all_reduce(both)
        total, count = both.tolist()
    model.train()
    return total / max(count, 1)


def warmup_steps(requested, total_steps):
    """--warmup-steps, capped at a tenth of the run: 100 warm-up steps in a 12-step run would end it at 12 %
    of --lr, so a run shorter than ten warm-ups warms up for a tenth of its steps (at least one) instead."""
    return min(requested, max(1, total_steps // 10))


def lr_at(step, args, total_steps):
    """Linear warm-up from 0 to lr over the warm-up steps, then linear decay to 0 at the last step."""
    warmup = warmup_steps(args.warmup_steps, total_steps)
    if step < warmup:
        return args.lr * (step + 1) / warmup
    return args.lr * max(0.0, (total_steps - step) / max(1, total_steps - warmup))


# -----------------------------------------------------------------------------
# AdamW's groups, and PERA's log record.

def optimizer_groups(model, args):
    """AdamW's parameter groups, one per learning-rate ratio: a parameter named in its adapter's `lr_ratios` (PERA's
    h, at h_lr_ratio) gets that ratio × the schedule's lr (its group's "lr_ratio"), every other one 1."""
    ratios = {id(getattr(m, name)): r for m in model.modules() for name, r in getattr(m, "lr_ratios", {}).items()}
    groups = {1.0: []}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault(ratios.get(id(p), 1.0), []).append(p)
    return [{"params": params, "lr_ratio": ratio} for ratio, params in groups.items() if params]


def h_grad_norm(layers):
    """‖∂L/∂h‖ over every PERA layer's h, as one vector (before clipping)."""
    norms = [layer.h.grad.norm() for layer in layers if layer.h.grad is not None]  # fixed coefficients: no grad
    return torch.linalg.vector_norm(torch.stack(norms)).item() if norms else None


@torch.no_grad()
def pera_record(layers):
    """How much PERA's polynomial terms carry now: the share ‖ΔW − sBA‖/‖sBA‖ per layer and its bound from the
    factors' sizes (pera.polynomial_share_bound; each layer's bound is above its share, so the median and the max
    of the bounds are above those of the shares), max |h|, and the median RMS entry of s·BA (the update's scale ε)."""
    shares = [pera.polynomial_share(layer) for layer in layers]
    bounds = [pera.polynomial_share_bound(layer) for layer in layers]
    rms = [layer.scaling * math.sqrt(pera.frobenius_sq(B, A).item() / (B.shape[0] * A.shape[1]))
           for layer in layers for A, B in [(layer.A.double(), layer.B.double())]]  # ‖BA‖_F² from (r, r) Grams
    return {"poly_share_median": statistics.median(shares), "poly_share_max": max(shares),
            "poly_share_bound_median": statistics.median(bounds), "poly_share_bound_max": max(bounds),
            "h_max": max(layer.h.abs().max().item() for layer in layers), "lora_rms_median": statistics.median(rms),
            # the bound's factors, median over layers: B's and A's largest entries and ρ (pera.share_bound_factors)
            "b_max_median": statistics.median(layer.B.abs().max().item() for layer in layers),
            "a_max_median": statistics.median(layer.A.abs().max().item() for layer in layers),
            "rho_median": statistics.median(pera.share_bound_factors(layer)[2] for layer in layers)}


# -----------------------------------------------------------------------------
# The run: setup, the loop, the summary.

@dataclass
class Run:
    """What setup() builds for the loop, and where the run stands when it starts (after a resume: the saved step)."""
    model: Transformer
    step_model: nn.Module  # LossOf(model); with several processes wrapped in DDP, which averages the gradients
    optimizer: torch.optim.Optimizer
    spec: dict  # adapters.settings(...): the adapter's hyperparameters, saved in adapter_config.json
    autocast: Callable  # bf16 autocast (--precision bf16), else a no-op
    pera_layers: list  # PERA's layers, for the log record of the polynomial terms (other methods: none)
    tasks: list
    train_set: list  # (ids, labels) per example
    val_set: list
    pad_id: int
    steps_per_epoch: int
    total_steps: int
    rank: int  # this process, of world; only rank 0 prints and writes files
    world: int
    share: int  # examples of each batch that this process takes
    micro: int  # examples per forward pass
    device: torch.device
    out: Path
    step: int = 0
    best: dict = field(default_factory=lambda: {"val_loss": math.inf, "step": None})
    history: list = field(default_factory=list)  # the log records so far
    clock: dict = field(default_factory=lambda: {"seconds": 0.0, "tokens": 0})  # of all sessions before this one

    def __post_init__(self):
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.lengths = [len(ids) for ids, _ in self.train_set]
        self.n_scored = [sum(y != -100 for y in labels[1:]) for _, labels in self.train_set]  # loss positions
        self.state_file = self.out / safety.STATE_FILE


def setup(args):
    """The model with its adapter, the data, AdamW and, with --resume, the saved state: the Run to train."""
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    rank, world, device = safety.setup_distributed(torch.device(args.device))
    say = print if rank == 0 else (lambda *a, **k: None)
    if args.batch_size % world or (args.batch_size // world) % min(args.micro_batch_size, args.batch_size // world):
        sys.exit(f"error: --batch-size ({args.batch_size}) must split into {world} equal shares, each a multiple of "
                 f"--micro-batch-size ({args.micro_batch_size})")
    share = args.batch_size // world  # examples of each global batch that this process takes
    bf16 = args.precision == "bf16"
    model_dir = Path(args.model)
    if not (model_dir / "tokenizer.json").is_file():
        sys.exit(f"error: {model_dir}: no tokenizer.json (run `python prepare.py`, or pass --model DIR)")
    with cli.user_input():  # a corrupt or mismatched model folder, an impossible adapter (--terms cross --rank 1)
        tokenizer = Tokenizer.from_file(model_dir / "tokenizer.json")
        if args.cutoff < (least := commonsense.template_tokens(tokenizer, tokenizer.add_bos)):
            raise ValueError(f"--cutoff {args.cutoff} keeps less than the prompt template alone ({least} tokens with "
                             f"this tokenizer): every prompt would lose its end, '### Response:'; expected an "
                             f"integer >= {least}")
        # bf16: the frozen base in bf16 under bf16 autocast (CUDA or CPU); adapter weights, grads and AdamW stay float32.
        model = Transformer.from_pretrained(model_dir, dtype=torch.bfloat16 if bf16 else torch.float32, device=device)
        model.grad_checkpoint = args.grad_checkpoint
        check_vocabulary(tokenizer, model, model_dir)
        spec = adapters.settings(args.method, args.rank, args.targets.split(","),
                                 **{name: getattr(args, name) for name in adapters.options(args.method)})
        adapters.check_fits(model, spec, device)  # a rank that would not fit is refused before it is built
        adapters.inject(model, spec)
    model.train()
    if args.compile:
        model.compile()  # each block, at its first call: the first step and the first validation take longer
    n_trainable, n_total = parameter_counts(model)
    r2 = f"+{args.lora_rank}" if args.lora_rank is not None else ""  # HiLoRA: r1+r2
    say(f"{args.method} r={args.rank}{r2}: trainable params {n_trainable:,} of {n_total:,} "
        f"({100 * n_trainable / n_total:.4f}%)")
    # Several processes: DDP averages the adapter's gradients over them after each global batch. Every process
    # made the same adapter from the same seed, so no initial broadcast of the (large) frozen model is needed.
    step_model = LossOf(model) if world == 1 else torch.nn.parallel.DistributedDataParallel(
        LossOf(model), broadcast_buffers=False, init_sync=False)
    if world > 1:
        seed = args.seed * 1000 + rank  # each process its own dropout masks; near torch's limits, wrapped
        torch.manual_seed(seed if cli.SEED.ok(seed) else seed % 2 ** 64)
        say(f"{world} processes ({dist.get_backend()}), {share} examples of each batch of {args.batch_size} each")

    say(f"training data: {args.train_file}" if args.train_file else
        f"training data: the per-task train sets in {args.data} (no {TRAIN_MIX} there)")
    tasks, train_set, val_set = load_examples(args, tokenizer, tokenizer.add_bos, quiet=rank != 0,
                                               positions=model.config.max_position_embeddings)
    steps_per_epoch = math.ceil(len(train_set) / args.batch_size)
    total_steps = args.max_steps or math.ceil(args.epochs * steps_per_epoch)
    say(f"tasks {', '.join(tasks)}: {len(train_set):,} training / {len(val_set)} validation examples; "
        f"{total_steps:,} steps of {args.batch_size} ({total_steps / steps_per_epoch:.2f} epochs)")
    warmup = warmup_steps(args.warmup_steps, total_steps)
    say(f"warm-up: {warmup} step(s) to lr {args.lr:g}, then linear decay to 0"
        + (f" (--warmup-steps {args.warmup_steps} capped at a tenth of this {total_steps}-step run)"
           if warmup < args.warmup_steps else ""))

    run = Run(model=model, step_model=step_model, spec=spec,
              optimizer=torch.optim.AdamW(optimizer_groups(model, args), lr=args.lr, weight_decay=args.weight_decay),
              autocast=lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16),
              pera_layers=[m for m in model.modules() if isinstance(m, pera.PERALinear)],
              tasks=tasks, train_set=train_set, val_set=val_set,
              pad_id=tokenizer.pad_id if tokenizer.pad_id is not None else (tokenizer.eos_id or 0),
              steps_per_epoch=steps_per_epoch, total_steps=total_steps, rank=rank, world=world, share=share,
              micro=min(args.micro_batch_size, share), device=device, out=Path(args.out))
    if args.resume:
        run.step, run.best, run.history, run.clock = safety.resume(run.state_file, model, run.optimizer, device,
                                                                   rank, world)
        if rank == 0:
            # drop the steps after the state's
            adapters.write_text(run.out / "log.jsonl", "".join(json.dumps(r) + "\n" for r in run.history))
        say(f"resuming {run.out} at step {run.step}")
    elif rank == 0:
        run.out.mkdir(parents=True, exist_ok=True)
        adapters.write_json(run.out / "args.json", vars(args))
        (run.out / "log.jsonl").write_text("")
        # A state from the start: from now on the folder always holds one, so a run killed at any moment
        # (even after its first adapter but before its first --save-every) can be resumed.
        safety.save_state(run.state_file, 0, model, run.optimizer, safety.rng_state(), run.best, run.history, run.clock)
        adapters.write_json(run.out / safety.FINGERPRINT, safety.fingerprint(args))  # what --resume compares
    return run


def forward_backward(run, batch):
    """Forward and backward over this process's share of the batch, in micro-batches; the gradients and the
    returned loss are the whole batch's mean over its labelled tokens (all processes)."""
    n_labels = sum(run.n_scored[i] for i in batch)  # the global batch's, so the loss is its mean over tokens
    mine = [run.train_set[i] for i in batch[run.rank * run.share:(run.rank + 1) * run.share]]
    total_loss = torch.zeros((), dtype=torch.float64, device=run.device)  # summed on the device: one sync a step
    for i in range(0, run.share, run.micro):
        part = mine[i:i + run.micro]
        if not part and run.world == 1:
            break
        # every process runs as many micro-batches (DDP syncs on the last); one that has run out of
        # examples (an epoch's last, short batch) runs a stand-in whose loss counts zero
        ids, labels = collate(part or [run.train_set[batch[0]]], run.pad_id, run.device)
        sync = run.world == 1 or i + run.micro >= run.share
        with contextlib.nullcontext() if sync else run.step_model.no_sync():
            with run.autocast():
                loss, _ = run.step_model(ids, labels)
            loss = loss if part else loss * 0
            (loss * run.world / n_labels).backward()  # DDP averages over processes; the loss is their sum
        total_loss += loss.detach()
    if run.world > 1:
        dist.all_reduce(total_loss)
    return total_loss.item() / n_labels


def on_step(step, record):
    """Called after every optimizer step with its log record (a seam for tests and extensions)."""


def train_loop(args, run):
    """The recipe, one optimizer step at a time: batch, forward, loss, backward, clip, step, schedule, log,
    validate, keep the best adapter, save the state. The guard (support/safety.py) holds Ctrl-C and SIGTERM to
    the step's end, and ends a run stopped by them, by a non-finite loss or gradient or by a full disk with one
    line naming the state kept. Returns (step, best, history, clock, seconds)."""
    step, best, history, planned = run.step, run.best, run.history, (None, None)  # planned: (epoch, its batches)
    bar = tqdm(total=run.total_steps, initial=step, desc=f"{args.method} r{args.rank}", dynamic_ncols=True,
               disable=run.rank != 0)
    with bar, safety.Guard(run) as guard:
        while step < run.total_steps:
            epoch, index = divmod(step, run.steps_per_epoch)
            if planned[0] != epoch:  # each epoch's batches planned once
                planned = epoch, epoch_batches(run.lengths, args.batch_size, args.seed, epoch)
            batch = planned[1][index]
            lr = lr_at(step, args, run.total_steps)
            for group in run.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_ratio", 1.0)
            train_loss = forward_backward(run, batch)
            guard.tokens += sum(run.lengths[i] for i in batch)  # real tokens, not padding
            log_pera = bool(run.pera_layers) and ((step + 1) % args.pera_log_every == 0 or step + 1 == run.total_steps)
            h_grad = h_grad_norm(run.pera_layers) if log_pera else None
            grad_norm = torch.nn.utils.clip_grad_norm_(run.trainable, args.grad_clip or math.inf).item()
            guard.before_update(train_loss, grad_norm)  # a non-finite loss or gradient stops the run here
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
            step += 1
            record = {"step": step, "loss": round(train_loss, 5), "lr": lr, "grad_norm": round(grad_norm, 5),
                      "time": round(time.time() - guard.start, 2)}
            if log_pera:
                record.update(pera_record(run.pera_layers), h_grad_norm=h_grad)
            if step % args.eval_every == 0 or step == run.total_steps:
                validate(args, run, record, best, train_loss)
            history.append(record)
            if run.rank == 0:
                with open(run.out / "log.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{train_loss:.4f}", lr=f"{lr:.2e}",
                            tok_s=f"{guard.tokens / max(time.time() - guard.start, 1e-9):.0f}")
            bar.update(1)
            on_step(step, record)
            guard.step_done(save=step % args.save_every == 0 or step == run.total_steps)
    return step, best, history, *guard.times()


def validate(args, run, record, best, train_loss):
    """The validation loss into the record, and the adapter saved when it is the best so far (best updated in
    place); with no validation set the adapter kept is the latest."""
    step = record["step"]
    if run.val_set:
        record["val_loss"] = round(validation_loss(run.model, run.val_set, run.micro, run.pad_id, run.device,
                                                   run.autocast, run.rank, run.world), 5)
    if not run.val_set or record["val_loss"] < best["val_loss"]:
        if run.rank == 0:
            adapters.save_adapter(run.model, run.out, run.spec, base_model=args.model)
        best.update(val_loss=record.get("val_loss", math.nan), step=step)
    if run.rank == 0:
        tqdm.write(f"step {step}: train loss {train_loss:.4f}, val loss {record.get('val_loss', math.nan):.4f}"
                   + (" (best)" if best["step"] == step else ""))


def parameter_counts(model):
    """(trainable, total) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters())


def summarize(args, run, step, best, history, clock, seconds):
    """metrics.json, and the run's last line."""
    n_trainable, n_total = parameter_counts(run.model)
    losses = [r["loss"] for r in history]
    metrics = {"method": args.method, "rank": args.rank, "tasks": run.tasks, "steps": step,
               "trainable_params": n_trainable, "total_params": n_total,
               "trainable_percent": 100 * n_trainable / n_total,
               "first_loss": losses[0], "last_loss": losses[-1],
               "mean_loss_first_10": sum(losses[:10]) / len(losses[:10]),
               "mean_loss_last_10": sum(losses[-10:]) / len(losses[-10:]),
               # no validation set: no loss to report (JSON has no NaN), and the adapter is the last step's
               "best_val_loss": best["val_loss"] if math.isfinite(best["val_loss"]) else None,
               "best_step": best["step"],
               "seconds_this_session": round(seconds, 1), "seconds": round(clock["seconds"], 1),
               "seconds_per_step": round(clock["seconds"] / max(1, step), 3),
               "tokens_per_second": round(clock["tokens"] / max(clock["seconds"], 1e-9), 1), "device": str(run.device)}
    if args.lora_rank is not None:  # HiLoRA's r2
        metrics["lora_rank"] = args.lora_rank
    if run.rank == 0:
        adapters.write_json(run.out / "metrics.json", metrics)
    if run.world > 1:
        dist.barrier()  # end together, after rank 0's writes: gloo may abort a process that closes before another
        dist.destroy_process_group()
    best_text = (f"best val loss {best['val_loss']:.4f} at step {best['step']}" if run.val_set else
                 f"no validation set, the adapter is step {best['step']}'s")
    if run.rank == 0:
        print(f"done: {step} steps, loss {metrics['mean_loss_first_10']:.4f} -> {metrics['mean_loss_last_10']:.4f} "
              f"(mean of first/last 10), {best_text}; adapter in {run.out}")
    return metrics


def main(argv=None):
    args = parse_args(argv)
    with cli.disk_errors(args.out), safety.folder_lock(Path(args.out)):  # a full disk: one line
        safety.check_run_folder(args)  # --resume: the same run; otherwise: no run there to overwrite
        run = setup(args)
        with cli.compile_errors(f"the state saved last in {run.state_file} is kept: continue with the same "
                                f"arguments plus --resume, without --compile"):
            return summarize(args, run, *train_loop(args, run))


if __name__ == "__main__":
    cli.run(main)
