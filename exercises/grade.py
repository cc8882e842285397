"""Grade the exercises: each exercise's properties checked on a solution, saying what is wrong and by how much.

    python -m exercises.grade                      # every exercise, your files in exercises/
    python -m exercises.grade lora_forward         # one (or several) by name
    python -m exercises.grade --solutions exercises/reference       # the repository's own implementations
    python -m exercises.grade pera_factors --solutions exercises/wrong/pera_factors_h_both_sides.py

The properties are those the repository's tests trust: the papers' sums written term by term in float64, a
fresh adapter is the base layer, merged = unmerged, rank bounds, gradients against autograd, what a forward
costs (no (out, in) matrix formed, one matmul on the tokens), a KV cache against attention over the whole
sequence. A property that fails names the input it failed on and the size of the error; an exercise whose
functions still raise NotImplementedError is "not yet implemented". This file imports only torch, so it
grades a handout that holds this folder alone. Exit status: 0 when every graded exercise passes, else 1
(2 for a wrong command line).
"""
import argparse
import itertools
import math
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType

import torch

# Watching what a solution computes (no (out, in) matrix, one matmul on the tokens) needs the ops of the backward
# pass too, which autograd runs below Python: only a dispatch mode sees them. torch documents TorchDispatchMode
# ("Extending PyTorch") but keeps it in a private module, so a later torch may move it; then this one line.
try:
    from torch.utils._python_dispatch import TorchDispatchMode
except ImportError:
    sys.exit(f"python -m exercises.grade: this torch ({torch.__version__}) has no torch.utils._python_dispatch."
             f"TorchDispatchMode, which the grader needs to watch the ops a solution runs; torch 2.0 to 2.13 have it")

EXERCISES = ["lora_forward", "effective_rank", "hira_update", "pera_factors", "h_gradient", "dora_norm", "kv_cache"]
PROPERTIES = {name: [] for name in EXERCISES}  # exercise -> [(property, check)], in the order they are graded


def prop(exercise, title):
    """Register check(solution) as a property of `exercise`; it raises Wrong (or NotYet) when it does not hold."""
    def register(check):
        PROPERTIES[exercise].append((title, check))
        return check
    return register


class Wrong(Exception):
    """A property does not hold; the message names the input and the size of the error."""


class NotYet(Exception):
    """A function of the solution still raises NotImplementedError."""


# ---------------------------------------------------------------------------------------------------
# Calling a solution's functions, comparing what they return, watching what they compute

class Solution:
    """The functions of one solution file. An error inside one is a Wrong that names its file and line."""

    def __init__(self, module, path):
        self.module, self.path = module, path

    def __getattr__(self, name):
        fn = getattr(self.module, name, None)
        if not callable(fn):
            raise Wrong(f"{self.path} defines no function {name}()")

        def call(*args):
            try:
                return fn(*args)
            except NotImplementedError:
                raise NotYet(f"{name}() is not yet implemented") from None
            except Exception as e:
                raise Wrong(f"{name}() raised {type(e).__name__}: {e} (at {where(e)})") from None
        return call


def where(error):
    """file:line of the innermost frame of the error outside torch itself: the line of the solution that failed."""
    torch_dir = os.path.dirname(torch.__file__)
    frames = [f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith(torch_dir)]
    return f"{frames[-1].filename}:{frames[-1].lineno}"


def gradients(y, inputs, names, probe, case):
    """∂⟨probe, y⟩/∂inputs through the solution's y: a Wrong where no gradient reaches an input."""
    shaped(y, probe.shape, "the result", case)
    if not y.requires_grad:
        raise Wrong(f"on {case}: no gradient flows through the result (computed under torch.no_grad(), or detached?)")
    try:
        grads = torch.autograd.grad((y * probe).sum(), inputs, allow_unused=True)
    except Exception as e:
        raise Wrong(f"on {case}: the backward pass raised {type(e).__name__}: {e} (at {where(e)})") from None
    for name, g in zip(names, grads):
        if g is None:
            raise Wrong(f"on {case}: no gradient reaches {name} (detached, or not used?)")
    return grads


def shaped(actual, shape, what, case):
    """Raise Wrong unless `actual` is a tensor of this shape."""
    if not isinstance(actual, torch.Tensor):
        raise Wrong(f"{what}: on {case}: got {type(actual).__name__}, expected a tensor of shape {tuple(shape)}")
    if actual.shape != shape:
        raise Wrong(f"{what}: on {case}: shape {tuple(actual.shape)}, expected {tuple(shape)}")


def same_gradients(y, expected, inputs, names, case):
    """The gradients of a random projection of the solution's y against those of the expected y."""
    probe = rng(1)(*expected.shape)
    got = gradients(y, inputs, names, probe, case)
    for name, g, e in zip(names, got, torch.autograd.grad((expected * probe).sum(), inputs)):
        close(g, e, f"the gradient of {name}", case)


def close(actual, expected, what, case, tol=1e-10):
    """Raise Wrong unless `actual` is a tensor shaped like `expected`, within tol · max(1, max|expected|) of it."""
    shaped(actual, expected.shape, what, case)
    actual, expected = actual.detach().double(), expected.detach()
    if not actual.isfinite().all():
        raise Wrong(f"{what}: on {case}: {int((~actual.isfinite()).sum())} entries are NaN or infinite")
    if expected.numel() == 0:
        return
    err, scale = (actual - expected).abs().max().item(), expected.abs().max().item()
    allowed = tol * max(1.0, scale)
    if err > allowed:
        raise Wrong(f"{what}: on {case}: off by up to {err:.3g}, where the expected entries reach {scale:.3g} "
                    f"(allowed: {allowed:.0e})")


MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.addmm_.default,
           torch.ops.aten.bmm.default, torch.ops.aten.baddbmm.default}


def tensors_in(value):
    """The tensors in a value of tuples, lists and dicts (an op's arguments or results), in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    return [t for v in value for t in tensors_in(v)] if isinstance(value, (tuple, list)) else []


class Ops(TorchDispatchMode):
    """What runs inside the block, op by op: the shapes of the tensors the ops make (not the views and in-place
    results of their inputs, nor tensors on the data-free meta device), and the input shapes of each matmul."""

    def __init__(self):
        super().__init__()
        self.made, self.matmuls = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = tensors_in((args, kwargs))
        storages = {t.untyped_storage().data_ptr() for t in inputs}
        self.made += [tuple(t.shape) for t in tensors_in(out)
                      if not t.is_meta and t.untyped_storage().data_ptr() not in storages]
        if func in MATMULS:
            self.matmuls.append([tuple(t.shape) for t in inputs])
        return out


def no_out_by_in(run, what, case):
    """Raise Wrong if run() makes a (48, 40) or (40, 48) tensor: a matrix the size of the weight of LAYERS[1]."""
    with Ops() as ops:
        run()
    big = [s for s in ops.made if s in ((48, 40), (40, 48))]
    if big:
        raise Wrong(f"{what}: on {case}: {len(big)} tensor(s) of shape {big[0]} formed, as large as the weight "
                    f"(keep to products with an r-sized side: (..., r), (out, r), (r, r))")


def rng(seed):
    """randn(*shape): float64 Gaussians from a generator of its own, the same on every run."""
    g = torch.Generator().manual_seed(seed)
    return lambda *shape: torch.randn(shape, generator=g, dtype=torch.float64)


# A layer's inputs: x (..., in), W0 (out, in), bias (out,), A (r, in), B (out, r). The second case is the one
# whose cost is watched: its (out, in) = (48, 40) and 7 tokens are told apart from every other size.
# alpha = 6 at r = 4 makes s = 1.5, not an integer: alpha // r is then wrong too.
LAYERS = [(16, 16, 4, 6.0, (2, 5)), (40, 48, 3, 3.0, (7,)), (24, 20, 1, 2.0, (3, 1))]  # in, out, r, alpha, x's lead


def layer_inputs(n_in, out, r, alpha, lead, with_alpha=True):
    randn = rng(0)
    x, W0, bias, A, B = randn(*lead, n_in), randn(out, n_in), randn(out), randn(r, n_in), randn(out, r)
    scaling = f", alpha={alpha}" if with_alpha else ""
    case = f"in={n_in}, out={out}, r={r}{scaling}, x of shape {tuple(x.shape)}"
    return x, W0, bias, A, B, case


def lora_sum(A, B):
    """B A written as the sum of its rank-one terms b_k a_kᵀ."""
    return sum(torch.outer(B[:, k], A[k]) for k in range(A.shape[0]))


def numerical_rank(M):
    s = torch.linalg.svdvals(M)
    return int((s > s.max() * max(M.shape) * torch.finfo(M.dtype).eps).sum())


# ---------------------------------------------------------------------------------------------------
# 1. LoRA's forward and merge: y = x W0ᵀ + bias + s·x (B A)ᵀ, s = alpha / r (PERA paper, Eq. 8)

def lora_y(x, W0, bias, A, B, alpha):
    return x @ (W0 + alpha / A.shape[0] * lora_sum(A, B)).T + bias


@prop("lora_forward", "a fresh adapter (B = 0) is the base layer: y = x W0ᵀ + bias")
def lora_fresh_is_base(sol):
    for n_in, out, r, alpha, lead in LAYERS:
        x, W0, bias, A, B, case = layer_inputs(n_in, out, r, alpha, lead)
        close(sol.forward(x, W0, bias, A, torch.zeros_like(B), alpha), x @ W0.T + bias, "y", case)


@prop("lora_forward", "y = x (W0 + s·Σ_k b_k a_kᵀ)ᵀ + bias, s = alpha / r (PERA paper, Eq. 8, term by term)")
def lora_forward_is_eq8(sol):
    for n_in, out, r, alpha, lead in LAYERS:
        x, W0, bias, A, B, case = layer_inputs(n_in, out, r, alpha, lead)
        close(sol.forward(x, W0, bias, A, B, alpha), lora_y(x, W0, bias, A, B, alpha), "y", case)


@prop("lora_forward", "the gradients of x, A and B are autograd's through x (W0 + s·B A)ᵀ")
def lora_gradients(sol):
    for n_in, out, r, alpha, lead in LAYERS:
        x, W0, bias, A, B, case = layer_inputs(n_in, out, r, alpha, lead)
        inputs = [t.requires_grad_() for t in (x, A, B)]
        same_gradients(sol.forward(x, W0, bias, A, B, alpha), lora_y(x, W0, bias, A, B, alpha), inputs, "xAB", case)


@prop("lora_forward", "the forward stays on the activation side: no (out, in) matrix, forward or backward")
def lora_activation_side(sol):
    x, W0, bias, A, B, case = layer_inputs(*LAYERS[1])
    inputs = [t.requires_grad_() for t in (x, A, B)]
    no_out_by_in(lambda: gradients(sol.forward(x, W0, bias, A, B, 3.0), inputs, "xAB", torch.ones(7, 48), case),
                 "forward and backward", case)


@prop("lora_forward", "merge = W0 + s·Σ_k b_k a_kᵀ (term by term)")
def lora_merge_is_the_sum(sol):
    for n_in, out, r, alpha, lead in LAYERS:
        x, W0, bias, A, B, case = layer_inputs(n_in, out, r, alpha, lead)
        close(sol.merge(W0, A, B, alpha), W0 + alpha / r * lora_sum(A, B), "the merged weight", case)


@prop("lora_forward", "merged = unmerged: x merge(...)ᵀ + bias is forward's y")
def lora_merged_is_unmerged(sol):
    for n_in, out, r, alpha, lead in LAYERS:
        x, W0, bias, A, B, case = layer_inputs(n_in, out, r, alpha, lead)
        merged = sol.merge(W0, A, B, alpha)
        shaped(merged, W0.shape, "the merged weight", case)
        y = sol.forward(x, W0, bias, A, B, alpha)
        close(x @ merged.T + bias, y, "y of the merged weight", case)


# ---------------------------------------------------------------------------------------------------
# 2. Rank and effective rank (HiRA §6.4; Roy & Vetterli 2007)

def with_singular_values(rows, cols, sigma, seed=0):
    """A (rows, cols) float64 matrix whose nonzero singular values are `sigma`."""
    randn, k = rng(seed), len(sigma)
    U, V = torch.linalg.qr(randn(rows, k))[0], torch.linalg.qr(randn(cols, k))[0]  # orthonormal columns
    return U @ torch.diag(torch.tensor(sigma, dtype=torch.float64)) @ V.T


def as_number(value, what, case):
    """A Python number, or a one-element tensor's; a Wrong for anything else."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Wrong(f"{what}: on {case}: got {type(value).__name__}, expected a number")
    return value


def f64(number):
    return torch.tensor(float(number), dtype=torch.float64)


@prop("effective_rank", "rank counts the singular values above σ_1 · max(rows, cols) · ε")
def rank_counts(sol):
    for rows, cols, sigma in [(30, 20, [1.0] * 5), (20, 30, [3.0, 2.0, 1.0, 1e-9]),
                              (16, 16, [2.0 ** -i for i in range(16)]), (16, 12, [5.0]),
                              (20, 30, [3e-20, 2e-20, 1e-20])]:  # the threshold is relative to σ_1, never absolute
        case = f"a ({rows}, {cols}) matrix with singular values {sigma[:4]}{' ...' if len(sigma) > 4 else ''}"
        got = as_number(sol.rank(with_singular_values(rows, cols, sigma)), "rank", case)
        if got != len(sigma):
            raise Wrong(f"rank: on {case}: got {got}, expected {len(sigma)}")


@prop("effective_rank", "the effective rank of k equal singular values is k")
def erank_of_equal_values(sol):
    for k in (1, 4, 10):
        case = f"a (24, 16) matrix with {k} singular values equal to 3"
        got = as_number(sol.effective_rank(with_singular_values(24, 16, [3.0] * k)), "effective rank", case)
        close(f64(got), f64(k), "effective rank", case)


@prop("effective_rank", "effective rank = exp(−Σ p_i log p_i), p_i = σ_i / Σ_j σ_j (Roy & Vetterli 2007)")
def erank_is_the_entropy(sol):
    for rows, cols, sigma in [(24, 16, [2.0 ** -i for i in range(8)]), (20, 12, [10.0, 1.0, 0.1]),
                              (12, 20, [float(i + 1) for i in range(12)])]:
        case = f"a ({rows}, {cols}) matrix with singular values {sigma[:4]} ..."
        p = torch.tensor(sigma, dtype=torch.float64) / sum(sigma)
        got = as_number(sol.effective_rank(with_singular_values(rows, cols, sigma)), "effective rank", case)
        close(f64(got), torch.exp(-(p * p.log()).sum()), "effective rank", case)


@prop("effective_rank", "the zero matrix (a fresh adapter's ΔW) has rank 0 and effective rank 0")
def ranks_of_zero(sol):
    zero, case = torch.zeros(20, 12, dtype=torch.float64), "the (20, 12) zero matrix"
    got = as_number(sol.rank(zero), "rank", case), as_number(sol.effective_rank(zero), "effective rank", case)
    if got != (0, 0):
        raise Wrong(f"on {case}: rank {got[0]} and effective rank {got[1]}, expected 0 and 0")


# ---------------------------------------------------------------------------------------------------
# 3. HiRA: ΔW = W0 ⊙ (B A) (HiRA paper, Eq. 6), y = x (W0 + ΔW)ᵀ + bias in one matmul

def hira_y(x, W0, bias, A, B):
    return x @ (W0 + W0 * lora_sum(A, B)).T + bias


@prop("hira_update", "ΔW = Σ_k W0 ⊙ (b_k a_kᵀ) (HiRA paper, Eq. 6, term by term)")
def hira_delta_is_eq6(sol):
    for n_in, out, r, alpha, lead in LAYERS:
        x, W0, bias, A, B, case = layer_inputs(n_in, out, r, alpha, lead, with_alpha=False)
        close(sol.delta_weight(W0, A, B), sum(W0 * torch.outer(B[:, k], A[k]) for k in range(r)), "ΔW", case)


@prop("hira_update", "with W0 all ones, ΔW = B A: HiRA is LoRA with s = 1 (HiRA paper, §4.3)")
def hira_with_ones_is_lora(sol):
    for n_in, out, r, alpha, lead in LAYERS:
        x, W0, bias, A, B, case = layer_inputs(n_in, out, r, alpha, lead, with_alpha=False)
        close(sol.delta_weight(torch.ones_like(W0), A, B), lora_sum(A, B), "ΔW", case + ", W0 all ones")


@prop("hira_update", "rank(ΔW) = rank(W0) · r for a generic W0 of rank 2: the bound of inequality 4, attained")
def hira_rank_bound(sol):
    randn = rng(2)
    W0, A, B = randn(64, 2) @ randn(2, 64), randn(3, 64), randn(64, 3)
    case = "a (64, 64) W0 of rank 2, r=3"
    got = sol.delta_weight(W0, A, B)
    shaped(got, W0.shape, "ΔW", case)
    if numerical_rank(got.detach().double()) != 6:
        raise Wrong(f"on {case}: rank(ΔW) = {numerical_rank(got.detach().double())}, expected rank(W0) · r = 6")


@prop("hira_update", "y = x (W0 + W0 ⊙ B A)ᵀ + bias")
def hira_forward_values(sol):
    for n_in, out, r, alpha, lead in LAYERS:
        x, W0, bias, A, B, case = layer_inputs(n_in, out, r, alpha, lead, with_alpha=False)
        close(sol.forward(x, W0, bias, A, B), hira_y(x, W0, bias, A, B), "y", case)


@prop("hira_update", "the gradients of x, A and B are autograd's through x (W0 + W0 ⊙ B A)ᵀ")
def hira_gradients(sol):
    for n_in, out, r, alpha, lead in LAYERS:
        x, W0, bias, A, B, case = layer_inputs(n_in, out, r, alpha, lead, with_alpha=False)
        inputs = [t.requires_grad_() for t in (x, A, B)]
        same_gradients(sol.forward(x, W0, bias, A, B), hira_y(x, W0, bias, A, B), inputs, "xAB", case)


@prop("hira_update", "base and update share one matmul on the tokens")
def hira_one_matmul(sol):
    x, W0, bias, A, B, case = layer_inputs(*LAYERS[1], with_alpha=False)
    with Ops() as ops:
        sol.forward(x, W0, bias, A, B)
    on_tokens = [shapes for shapes in ops.matmuls if any(7 in s for s in shapes)]
    if len(on_tokens) != 1:
        raise Wrong(f"on {case}: {len(on_tokens)} matmuls ran on the tokens, expected 1: x (W0 + ΔW)ᵀ")


# ---------------------------------------------------------------------------------------------------
# 4. PERA's expanded factors: B̂ Â = B A + Σ_{i≤j} h_ij (b_i ⊙ b_j)(a_i ⊙ a_j)ᵀ (PERA paper, Eqs. 9-11)

PERA_CASES = [(6, 5, 3, "all"), (8, 8, 4, "square"), (7, 9, 4, "cross"), (5, 4, 1, "all"), (6, 5, 2, "cross")]  # out, in, r, terms


def kept_pairs(r, terms):
    """The pairs (i, j), i ≤ j, of h in torch.triu_indices(r, r) order, filtered by terms."""
    return [(i, j) for i in range(r) for j in range(i, r) if terms == "all" or (terms == "square") == (i == j)]


def pera_inputs(out, n_in, r, terms, seed=0):
    randn = rng(seed)
    A, B, h = randn(r, n_in), randn(out, r), randn(len(kept_pairs(r, terms)))
    return A, B, h, f"out={out}, in={n_in}, r={r}, terms={terms!r}"


def pera_sum(A, B, h, terms):
    """B A + Σ_{i≤j} h_ij (b_i ⊙ b_j)(a_i ⊙ a_j)ᵀ, one rank-one term at a time, h in kept_pairs' order."""
    dW = lora_sum(A, B)
    for p, (i, j) in enumerate(kept_pairs(A.shape[0], terms)):
        dW = dW + h[p] * torch.outer(B[:, i] * B[:, j], A[i] * A[j])
    return dW


def factors(sol, A, B, h, terms, case):
    """The solution's (B̂, Â), checked to be (out, r + P) and (r + P, in)."""
    pair = sol.expanded_factors(A, B, h, terms)
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(t, torch.Tensor) for t in pair)):
        raise Wrong(f"on {case}: got {type(pair).__name__}, expected a pair of tensors (B̂, Â)")
    (out, r), (P, n_in) = B.shape, (len(h), A.shape[1])
    if pair[0].shape != (out, r + P) or pair[1].shape != (r + P, n_in):
        raise Wrong(f"on {case}: B̂ {tuple(pair[0].shape)} and Â {tuple(pair[1].shape)}, "
                    f"expected {(out, r + P)} and {(r + P, n_in)} (P = {P})")
    return pair


@prop("pera_factors", "B̂ is (out, r + P), Â (r + P, in): P = r(r+1)/2 ('all'), r ('square'), r(r−1)/2 ('cross')")
def pera_shapes(sol):
    for out, n_in, r, terms in PERA_CASES:
        A, B, h, case = pera_inputs(out, n_in, r, terms)
        factors(sol, A, B, h, terms, case)


@prop("pera_factors", "h = 0 gives LoRA: B̂ Â = B A")
def pera_h_zero_is_lora(sol):
    for out, n_in, r, terms in PERA_CASES:
        A, B, h, case = pera_inputs(out, n_in, r, terms)
        B_hat, A_hat = factors(sol, A, B, torch.zeros_like(h), terms, case)
        close(B_hat @ A_hat, lora_sum(A, B), "B̂ Â", case + ", h = 0")


@prop("pera_factors", "B̂ Â = B A + Σ h_ij (b_i ⊙ b_j)(a_i ⊙ a_j)ᵀ term by term, h in torch.triu_indices order "
                      "(PERA paper, Eqs. 9-11)")
def pera_is_eq9(sol):
    for out, n_in, r, terms in PERA_CASES:
        A, B, h, case = pera_inputs(out, n_in, r, terms)
        B_hat, A_hat = factors(sol, A, B, h, terms, case)
        close(B_hat @ A_hat, pera_sum(A, B, h, terms), "B̂ Â", case)


@prop("pera_factors", "the gradients of A, B and h are autograd's through the sum")
def pera_gradients(sol):
    for out, n_in, r, terms in PERA_CASES:
        A, B, h, case = pera_inputs(out, n_in, r, terms)
        inputs = [t.requires_grad_() for t in (A, B, h)]
        B_hat, A_hat = factors(sol, A, B, h, terms, case)
        same_gradients(B_hat @ A_hat, pera_sum(A, B, h, terms), inputs, "ABh", case)


@prop("pera_factors", "rank(B̂ Â) = r + P for random factors: the rank bound (2r + C(r,2) for 'all') attained")
def pera_rank(sol):
    for terms in ("all", "square", "cross"):
        A, B, h, case = pera_inputs(72, 64, 4, terms, seed=3)
        B_hat, A_hat = factors(sol, A, B, h, terms, case)
        got = numerical_rank((B_hat @ A_hat).detach().double())
        if got != 4 + len(h):
            raise Wrong(f"on {case}: rank(B̂ Â) = {got}, expected r + P = {4 + len(h)}")


# ---------------------------------------------------------------------------------------------------
# 5. ∂L/∂h_ij = s · (b_i ⊙ b_j)ᵀ G (a_i ⊙ a_j), G = ∂L/∂ΔW

# out, in, r, alpha, terms
H_CASES = [(8, 8, 3, 2.0, "all"), (20, 24, 4, 8.0, "square"), (12, 10, 4, 4.0, "cross"), (6, 5, 1, 1.0, "all")]


def h_gradient_of(sol, A, B, G, alpha, terms, case):
    with torch.no_grad():
        got = sol.h_gradient(A, B, G, alpha, terms)
    expected = torch.zeros(len(kept_pairs(A.shape[0], terms)), dtype=torch.float64)
    if isinstance(got, torch.Tensor) and got.shape != expected.shape:
        raise Wrong(f"on {case}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}: one entry per kept pair")
    return got


@prop("h_gradient", "∂L/∂h is autograd's ∂⟨G, ΔW⟩/∂h, ΔW = s·(Eq. 9 written term by term)")
def h_gradient_is_autograd(sol):
    for out, n_in, r, alpha, terms in H_CASES:
        randn = rng(0)
        A, B, G = randn(r, n_in), randn(out, r), randn(out, n_in)
        case = f"out={out}, in={n_in}, r={r}, alpha={alpha}, terms={terms!r}"
        h = randn(len(kept_pairs(r, terms))).requires_grad_()
        (expected,) = torch.autograd.grad((G * alpha / r * pera_sum(A, B, h, terms)).sum(), h)
        close(h_gradient_of(sol, A, B, G, alpha, terms, case), expected, "∂L/∂h", case)


@prop("h_gradient", "∂L/∂h = 0 at a fresh adapter, under both inits: B = 0 (authors' code) and A = 0 (paper's text)")
def h_gradient_silent_at_init(sol):
    for out, n_in, r, alpha, terms in H_CASES:
        randn = rng(0)
        A, B, G = randn(r, n_in), randn(out, r), randn(out, n_in)
        for init, (A0, B0) in (("B = 0", (A, torch.zeros_like(B))), ("A = 0", (torch.zeros_like(A), B))):
            case = f"out={out}, in={n_in}, r={r}, alpha={alpha}, terms={terms!r}, {init}"
            got = h_gradient_of(sol, A0, B0, G, alpha, terms, case)
            close(got, torch.zeros(len(kept_pairs(r, terms)), dtype=torch.float64), "∂L/∂h", case)


# ---------------------------------------------------------------------------------------------------
# 6. DoRA: W' = m ⊙ V / ‖V‖_row, V = W0 + s·B A, the norm detached (DoRA paper, Eq. 5 and §4.3)

def dora_inputs(n_in, out, r, alpha, lead):
    x, W0, bias, A, B, case = layer_inputs(n_in, out, r, alpha, lead)
    m = W0.norm(dim=1) * (1 + 0.3 * rng(1)(out)).abs()  # lengths moved off ‖W0‖_row
    return x, W0, bias, A, B, m, case


def dora_y(x, W0, bias, A, B, m, alpha):
    """x W'ᵀ + bias with W' = m ⊙ V / ‖V‖_row formed, the norm a constant for autograd."""
    V = W0 + alpha / A.shape[0] * lora_sum(A, B)
    norm = torch.sqrt((V * V).sum(1)).detach()
    return x @ (m[:, None] * V / norm[:, None]).T + bias


@prop("dora_norm", "row_norm = ‖W0 + s·B A‖ of each row, formed directly, for rows of any length")
def dora_row_norm(sol):
    for (n_in, out, r, alpha, lead), c in itertools.product(LAYERS, (1.0, 0.05)):
        x, W0, bias, A, B, m, case = dora_inputs(n_in, out, r, alpha, lead)
        W0, A, B = c * W0, c * A, c * B  # c = 0.05: rows of norm below 1
        case += f", W0, A, B scaled by {c}" if c != 1 else ""
        V = W0 + alpha / r * lora_sum(A, B)
        close(sol.row_norm(W0, A, B, alpha), torch.sqrt((V * V).sum(1)), "‖V‖_row", case)


@prop("dora_norm", "row_norm forms no (out, in) matrix: W0 is the only one")
def dora_row_norm_is_cheap(sol):
    x, W0, bias, A, B, m, case = dora_inputs(*LAYERS[1])
    no_out_by_in(lambda: sol.row_norm(W0, A, B, 3.0), "row_norm", case)


@prop("dora_norm", "a fresh adapter (B = 0, m = ‖W0‖_row) is the base layer: y = x W0ᵀ + bias")
def dora_fresh_is_base(sol):
    for n_in, out, r, alpha, lead in LAYERS:
        x, W0, bias, A, B, m, case = dora_inputs(n_in, out, r, alpha, lead)
        close(sol.forward(x, W0, bias, A, torch.zeros_like(B), W0.norm(dim=1), alpha), x @ W0.T + bias, "y", case)


@prop("dora_norm", "y = x (m ⊙ V / ‖V‖_row)ᵀ + bias, V = W0 + s·B A (DoRA paper, Eq. 5)")
def dora_forward_is_eq5(sol):
    for n_in, out, r, alpha, lead in LAYERS:
        x, W0, bias, A, B, m, case = dora_inputs(n_in, out, r, alpha, lead)
        close(sol.forward(x, W0, bias, A, B, m, alpha), dora_y(x, W0, bias, A, B, m, alpha), "y", case)


@prop("dora_norm", "the gradients of x, A, B and m are autograd's with ‖V‖_row detached (DoRA paper, §4.3)")
def dora_gradients(sol):
    for n_in, out, r, alpha, lead in LAYERS:
        x, W0, bias, A, B, m, case = dora_inputs(n_in, out, r, alpha, lead)
        inputs = [t.requires_grad_() for t in (x, A, B, m)]
        y = sol.forward(x, W0, bias, A, B, m, alpha)
        same_gradients(y, dora_y(x, W0, bias, A, B, m, alpha), inputs, "xABm", case)


@prop("dora_norm", "the forward stays on the activation side: no (out, in) matrix, forward or backward")
def dora_activation_side(sol):
    x, W0, bias, A, B, m, case = dora_inputs(*LAYERS[1])
    inputs = [t.requires_grad_() for t in (x, A, B, m)]
    no_out_by_in(lambda: gradients(sol.forward(x, W0, bias, A, B, m, 3.0), inputs, "xABm", torch.ones(7, 48), case),
                 "forward and backward", case)


# ---------------------------------------------------------------------------------------------------
# 7. One decode step with a KV cache: softmax(q Kᵀ / √hd) V over positions 0 .. length (Vaswani et al. 2017, Eq. 1)

def attention_by_position(Q, K, V):
    """Causal attention, one query position and one head at a time: (batch, nh, T, hd); head i reads kv head i // g."""
    (batch, nh, T, hd), group = Q.shape, Q.shape[1] // K.shape[1]
    out = torch.empty_like(Q)
    for t in range(T):
        for i in range(nh):
            keys, values = K[:, i // group, :t + 1], V[:, i // group, :t + 1]  # (batch, t + 1, hd)
            weights = torch.softmax((keys @ Q[:, i, t, :, None]).squeeze(-1) / math.sqrt(hd), dim=-1)  # (batch, t + 1)
            out[:, i, t] = (weights[:, :, None] * values).sum(1)
    return out


def decode(sol, nh, nkv, seed=0, batch=2, T=5, hd=8, max_len=8):
    """Run decode_step over T tokens from an empty cache; check the cache after each step; return the outputs."""
    randn = rng(seed)
    Q, K, V = randn(batch, nh, T, hd), randn(batch, nkv, T, hd), randn(batch, nkv, T, hd)
    cache_k, cache_v = 100 * randn(batch, nkv, max_len, hd), 100 * randn(batch, nkv, max_len, hd)  # left over
    outs = []
    for t in range(T):
        case = f"batch {batch}, n_head={nh}, n_kv_head={nkv}, head_dim={hd}, max_len={max_len}, length={t}"
        expected_k, expected_v = cache_k.clone(), cache_v.clone()
        expected_k[:, :, t], expected_v[:, :, t] = K[:, :, t], V[:, :, t]
        out = sol.decode_step(Q[:, :, t:t + 1], K[:, :, t:t + 1], V[:, :, t:t + 1], cache_k, cache_v, t)
        close(cache_k, expected_k, "the key cache", case, tol=0)
        close(cache_v, expected_v, "the value cache", case, tol=0)
        outs.append((out, case))
    return outs, attention_by_position(Q, K, V)


@prop("kv_cache", "writes k and v at position `length` of the caches, and changes nothing else")
def kv_cache_writes(sol):
    for nh, nkv in ((2, 2), (4, 2)):
        decode(sol, nh, nkv)


@prop("kv_cache", "each step returns softmax(q Kᵀ / √hd) V over positions 0 .. length (Vaswani et al., Eq. 1)")
def kv_cache_is_attention(sol):
    outs, expected = decode(sol, 2, 2)
    for t, (out, case) in enumerate(outs):
        close(out, expected[:, :, t:t + 1], "the output", case)


@prop("kv_cache", "grouped-query attention: query head i reads key/value head i // (n_head / n_kv_head)")
def kv_cache_groups(sol):
    for nh, nkv, batch in ((4, 2, 2), (6, 3, 1), (4, 1, 3)):  # batch ≠ n_kv_head: neither stands for the other
        outs, expected = decode(sol, nh, nkv, seed=nh + nkv, batch=batch)
        for t, (out, case) in enumerate(outs):
            close(out, expected[:, :, t:t + 1], "the output", case)


# ---------------------------------------------------------------------------------------------------
# Grading

def load(exercise, path):
    """The solution of `exercise` in `path` (a folder of <exercise>.py files, or one file); a Wrong saying why not."""
    file = path / f"{exercise}.py" if path.is_dir() else path
    if not file.is_file():
        raise Wrong(f"{file}: no such file")
    module = ModuleType(f"solution_{exercise}")
    module.__file__ = str(file)
    try:
        exec(compile(file.read_text(), str(file), "exec"), module.__dict__)  # its errors name the file as given
    except SyntaxError as e:
        raise Wrong(f"{file} does not load: SyntaxError: {e.msg} (line {e.lineno})") from None
    except Exception as e:
        raise Wrong(f"{file} does not load: {type(e).__name__}: {e} (at {where(e)})") from None
    return Solution(module, file)


def grade(exercise, path):
    """[(status, property, detail)] of one exercise: status "pass", "FAIL" or "todo" (not yet implemented)."""
    try:
        sol = load(exercise, Path(path))
    except Wrong as e:
        return [("FAIL", "the solution file loads", str(e))]
    results = []
    for title, check in PROPERTIES[exercise]:
        try:
            check(sol)
            results.append(("pass", title, ""))
        except NotYet as e:
            results.append(("todo", title, str(e)))
        except Wrong as e:
            results.append(("FAIL", title, str(e)))
    return results


def report(exercise, path, results):
    """Print one exercise's results; True when it passes."""
    if all(status == "todo" for status, _, _ in results):
        print(f"{exercise}: not yet implemented ({path})")
        return False
    print(f"{exercise} ({path})")
    for status, title, detail in results:
        print(f"  {status}  {title}" + (f"\n        {detail}" if detail else ""))
    return all(status == "pass" for status, _, _ in results)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m exercises.grade", description=__doc__.split("\n\n")[0])
    p.add_argument("exercises", nargs="*", metavar="EXERCISE",
                   help=f"what to grade (default: all): {', '.join(EXERCISES)}")
    p.add_argument("--solutions", default=os.path.relpath(Path(__file__).parent),
                   help="a folder of <exercise>.py files (default: this folder, yours), or one .py file for the one "
                        "exercise named")
    args = p.parse_args(argv)
    unknown = [e for e in args.exercises if e not in EXERCISES]
    if unknown:
        p.error(f"unknown exercise {unknown[0]!r}; the exercises are {', '.join(EXERCISES)}")
    path = Path(args.solutions)
    if not path.exists():
        p.error(f"--solutions {args.solutions}: no such file or folder")
    if path.is_file() and len(args.exercises) != 1:
        p.error(f"--solutions {args.solutions} is one file: name the one exercise it solves")
    names = args.exercises or EXERCISES
    passed = [report(name, path / f"{name}.py" if path.is_dir() else path, grade(name, path)) for name in names]
    print(f"{sum(passed)} of {len(names)} {'exercises' if len(names) > 1 else 'exercise'} passed")
    return 0 if all(passed) else 1


if __name__ == "__main__":
    sys.exit(main())
