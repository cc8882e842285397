"""PERA: polynomial expansion rank adaptation. LoRA plus Hadamard products of its own factors.

This file imports only torch and math, so it can be copied alone into another project:
    names = inject(model, rank=8)   # wrap q, k, v, up, down; freeze all that is not an adapter
    ...train...
    merge(model)                    # fold the updates in; plain nn.Linear layers again
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

TARGETS = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")
TERMS = ("all", "square", "cross")
INITS = ("code", "paper")
COEFFICIENTS = ("trained", "multinomial")


def pairs(r, terms="all"):
    """The index pairs (i, j), i ≤ j, of Eq. 9's terms as a (2, P) tensor, in h's order.

    The order is torch.triu_indices(r, r)'s, as in the authors' code: (0, 0), (0, 1), ..., (0, r-1), (1, 1), ...
    terms="square" keeps i = j (Eq. 10), "cross" keeps i < j (Eq. 11).
    """
    # Built on the CPU even under torch.device("meta"), and with no mask by value, which the data-free
    # tensors of torch's FakeTensorMode (bench.py's memory planner) cannot compute.
    if terms == "square":  # i = j
        i = torch.arange(r, device="cpu")
        return torch.stack([i, i])  # (2, r)
    return torch.triu_indices(r, r, offset=int(terms == "cross"), device="cpu")  # (2, P): i ≤ j, or i < j for "cross"


class PERALinear(nn.Module):
    """ΔW = s · ( B A + Σ_{i ≤ j} h_ij (b_i ⊙ b_j)(a_i ⊙ a_j)^T ) = s · B̂ Â,  s = alpha / r  (PERA paper Eq. 9).

    b_i is column i of B (out, r), a_i is row i of A (r, in), and h (P,) is one trainable vector per layer,
    one entry per kept pair, in torch.triu_indices order. Concatenation writes ΔW as one product,
        B̂ = [B, b_i ⊙ b_j]  (out, r + P)        Â = [A; h_ij (a_i ⊙ a_j)]  (r + P, in),
    built once per call; the forward then stays on the activation side like LoRA and never forms the
    (out, in) ΔW. rank(ΔW) ≤ r + P. terms: "all" (Eq. 9, P = r(r+1)/2), "square" i = j (Eq. 10, P = r),
    "cross" i < j (Eq. 11, P = r(r-1)/2). degree k > 2, beyond the paper, is at the end of this file.

    Init, ΔW = 0 either way (a fresh adapter changes nothing; with h = 0 PERA is LoRA): init="code" (the
    default, the authors' code) A Kaiming-uniform, B = 0, h = 0; init="paper" (the paper's text) A = 0,
    B Gaussian with std 1/r, h = 0. Under both, h's gradient is zero at step 0 (it is quadratic in the
    factor that starts at zero): the polynomial terms start silent.

    alpha defaults to r, so s = 1, as in the authors' code. Dropout acts on the adapter's input only.
    A, B, h are float32 (float64 for a float64 base) on base.weight's device, even for a bf16 base; the
    forward casts B̂ and Â to the activation's dtype. model.to(torch.bfloat16) after injection converts
    A, B, h too: convert the model first, then inject.
    Derivations and measurements: docs/methods.md#pera
    """

    def __init__(self, base, rank, alpha=None, dropout=0.0, terms="all", degree=2, init="code", coefficients="trained"):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"PERALinear wraps an nn.Linear, got {type(base).__name__}")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if terms not in TERMS:
            raise ValueError(f"terms must be one of {TERMS}, got {terms!r}")
        if not isinstance(degree, int) or degree < 2:
            raise ValueError(f"degree must be an integer >= 2 (degree 1 is LoRA: use lora.py), got {degree!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if coefficients not in COEFFICIENTS:
            raise ValueError(f"coefficients must be one of {COEFFICIENTS}, got {coefficients!r}")
        if terms == "cross" and rank == 1:
            raise ValueError("terms='cross' with rank 1 keeps no terms: cross terms need two distinct indices")
        self.base = base.requires_grad_(False)
        self.rank = rank  # r in the papers
        self.alpha = rank if alpha is None else alpha
        self.scaling = self.alpha / rank
        self.terms = terms
        self.degree = degree
        self.init = init
        self.coefficients = coefficients
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

        w = base.weight
        dtype = torch.promote_types(w.dtype, torch.float32)
        self.A = nn.Parameter(torch.zeros(rank, base.in_features, device=w.device, dtype=dtype))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=dtype))
        self._idx = None  # the terms' indices, built by `idx` on A's device
        self.h = nn.Parameter(torch.zeros(self.idx.shape[1], device=w.device, dtype=dtype))  # (P,), in idx's order
        if coefficients == "multinomial":  # the authors' first version: fixed coefficients, ΔW = s Σ_m (B A)^⊙m
            self.h.requires_grad_(False).copy_(multinomial(self.idx, rank))
        if init == "code":  # the authors' code, LoRA's init: ΔW = 0 because B = 0
            nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        else:  # the paper's text: ΔW = 0 because A = 0
            nn.init.normal_(self.B, std=1 / rank)
        self.train(base.training)  # a layer of a model in eval mode stays in eval mode: no dropout

    def forward(self, x):
        B_hat, A_hat = self.expanded_factors()  # (out, r + P), (r + P, in)
        B_hat, A_hat = B_hat.to(x.dtype), A_hat.to(x.dtype)
        # s multiplies the (..., r + P) activation, the narrowest tensor on the path.
        return self.base(x) + F.linear(self.scaling * F.linear(self.dropout(x), A_hat), B_hat)

    def expanded_factors(self):
        """B̂ (out, r + P) and Â (r + P, in), with ΔW = s · B̂ Â: Eq. 9 as two concatenations."""
        if self.degree > 2:
            return degree_k_factors(self)  # beyond the paper: see the end of this file
        A, B, h = self.A, self.B, self.h  # (r, in), (out, r), (P,)
        i, j = self.idx  # (P,) each: torch.triu_indices(r, r), filtered by `terms` (see `pairs`)
        # A[i] ⊙ A[j] and B[:, i] ⊙ B[:, j], written with index_select: same values, twice as fast a backward
        A_terms = A.index_select(0, i) * A.index_select(0, j)  # (P, in): row p is a_i ⊙ a_j
        B_terms = B.index_select(1, i) * B.index_select(1, j)  # (out, P): column p is b_i ⊙ b_j
        A_hat = torch.cat([A, h[:, None] * A_terms])  # Â = [A; h ⊙ (A[i] ⊙ A[j])]  (r + P, in): h, A side only
        B_hat = torch.cat([B, B_terms], dim=1)  # B̂ = [B, B[:, i] ⊙ B[:, j]]  (out, r + P)
        return B_hat, A_hat

    @property
    def idx(self):
        """(2, P): rows i and j of the kept pairs, in h's order (`pairs`); (degree, P) for degree > 2.

        Derived from r, terms and degree, never stored: a buffer is the one thing the meta-device path
        (to_empty() then load_state_dict) cannot restore, since a state_dict holds only A, B, h and the base.
        """
        if self._idx is None or self._idx.device != self.A.device:
            if self.degree == 2:
                idx = pairs(self.rank, self.terms)
            else:
                idx = degree_k_indices(self.rank, self.terms, self.degree)
            self._idx = idx.to(self.A.device)
        return self._idx

    def delta_weight(self):
        """ΔW = s · B̂ Â, shaped like base.weight, in float32 (float64 for a float64 adapter) even under autocast."""
        dtype = torch.promote_types(self.A.dtype, torch.float32)
        with torch.autocast(self.A.device.type, enabled=False):
            B_hat, A_hat = self.expanded_factors()
            return self.scaling * (B_hat.to(dtype) @ A_hat.to(dtype))

    @torch.no_grad()
    def merged(self):
        """A new frozen nn.Linear with weight W0 + ΔW (summed in float32, then rounded once to W0's dtype).

        The adapter itself is left as it was; there is no unmerge, keep the adapter if you need it again.
        """
        base = self.base
        linear = torch.nn.utils.skip_init(nn.Linear, base.in_features, base.out_features, bias=base.bias is not None,
                                          device=base.weight.device, dtype=base.weight.dtype)
        linear.weight.copy_(base.weight + self.delta_weight())
        if base.bias is not None:
            linear.bias.copy_(base.bias)
        return linear.requires_grad_(False).train(self.training)

    @property
    def weight(self):
        """W0 + ΔW in W0's dtype, for code that reads layer.weight instead of calling the layer.

        nn.MultiheadAttention passes out_proj.weight to its functional form, nn.TransformerEncoderLayer's
        eval fast path and a tied output head read .weight too. They then compute what this layer computes
        (without its dropout), and gradients still reach the adapter. Exposing the frozen W0 instead, as
        PEFT's wrappers do, would make them skip the adapter silently. W0 itself is base.weight.
        """
        return (self.base.weight + self.delta_weight()).to(self.base.weight.dtype)

    @property
    def bias(self):
        return self.base.bias

    def extra_repr(self):
        return (f"rank={self.rank}, alpha={self.alpha}, terms={self.terms!r}, degree={self.degree}, "
                f"init={self.init!r}, P={len(self.h)}")


@torch.no_grad()
def polynomial_share(layer):
    """‖ΔW − s·BA‖_F / ‖s·BA‖_F: how large the polynomial terms are next to LoRA's part (0 while B A = 0).

    ΔW − s·BA = s · B̂[:, r:] Â[r:], so both norms come from (P, P) and (r, r) Gram matrices,
    ‖X Y‖_F² = Σ (XᵀX) ⊙ (Y Yᵀ), in float64, never forming an (out, in) matrix: cheap enough to log every
    step. The factors are built in the layer's own dtype (pass a float64 copy for a float64 figure).
    """
    B_hat, A_hat = (t.detach().double() for t in layer.expanded_factors())
    r = layer.rank
    sq_norm = lambda X, Y: ((X.T @ X) * (Y @ Y.T)).sum()  # noqa: E731  ‖X Y‖_F²
    lora_part = sq_norm(B_hat[:, :r], A_hat[:r])
    return float((sq_norm(B_hat[:, r:], A_hat[r:]) / lora_part).sqrt()) if lora_part > 0 else 0.0



@torch.no_grad()
def polynomial_share_bound(layer):
    """An upper bound on polynomial_share(layer) from the factors' sizes alone (docs/study.md, the bound).

    With x_i = b_i[o] a_i[k], entry (o, k) of a term of m indices is h times a product of m of the x_i, so
    |ΔW − s·BA|_ok ≤ s·max|h| · Σ_{m=2..k} X_ok^m, X = |B| |A| (x_i ≥ 0 summed: every product of m of them
    is one term of X_ok^m). With X_ok ≤ M = Σ_i max|b_i| · max|a_i| and ‖X^∘m‖_F ≤ M^(m−1) ‖X‖_F:

        share ≤ max|h| · Σ_{m=2..k} M^(m−1) · ‖|B| |A|‖_F / ‖B A‖_F

    for degree k = 2 simply max|h| · M · ρ, ρ ≥ 1 measuring how much B A cancels. Gram matrices as above.
    """
    h_max, M, rho = share_bound_factors(layer)
    return h_max * sum(M ** (m - 1) for m in range(2, layer.degree + 1)) * rho if rho > 0 else 0.0


@torch.no_grad()
def share_bound_factors(layer):
    """(max|h|, M, ρ) of polynomial_share_bound; ρ = 0 while B A = 0."""
    A, B, h = (t.detach().double() for t in (layer.A, layer.B, layer.h))
    sq_norm = lambda X, Y: ((X.T @ X) * (Y @ Y.T)).sum()  # noqa: E731  ‖X Y‖_F²
    lora_part = sq_norm(B, A)
    M = float((B.abs().amax(0) * A.abs().amax(1)).sum())
    rho = float((sq_norm(B.abs(), A.abs()) / lora_part).sqrt()) if lora_part > 0 else 0.0
    return float(h.abs().max()) if len(h) else 0.0, M, rho


def inject(model, rank, targets=TARGETS, **kw):
    """Wrap every nn.Linear named `target` or `*.target` in PERALinear; return the wrapped names.

    Every parameter that is not an adapter's own is frozen, so a second call (other targets, another rank)
    leaves the adapters of the first trainable. The model's train/eval mode is kept. A target that names
    no layer, or a layer that is not a plain nn.Linear (an adapter already, a GPT-2 Conv1D), is an error
    that names the layer, and then nothing is changed.
    """
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"targets must name one or more layers (e.g. {TARGETS}), got {targets!r}")
    matches = lambda name: any(name == t or name.endswith("." + t) for t in targets)  # noqa: E731
    names, wrapped = [], [n for n, m in model.named_modules() if is_adapter(m)]
    for name, module in model.named_modules():
        if not matches(name):
            continue
        if is_adapter(module):
            raise ValueError(f"{name} is already adapted (a {type(module).__name__}); adapters do not nest: "
                             f"merge it first, or leave it out of targets")
        inside = next((w for w in wrapped if name.startswith(w + ".")), None)
        if inside is not None:
            raise ValueError(f"{name} is part of the adapter at {inside} (a {type(model.get_submodule(inside)).__name__}); "
                             f"adapters do not nest")
        if not isinstance(module, nn.Linear):
            raise ValueError(f"{name} is a {type(module).__name__}, not an nn.Linear: PERALinear adapts y = x W0^T + b "
                             f"with W0 of shape (out, in), which only nn.Linear guarantees (GPT-2's Conv1D stores "
                             f"its weight as (in, out))")
        names.append(name)
    missing = [t for t in targets if not any(name == t or name.endswith("." + t) for name in names)]
    if missing:
        raise ValueError(f"no nn.Linear in the model is named {missing} (or ends with '.<target>')")
    adapters = [PERALinear(model.get_submodule(name), rank, **kw) for name in names]  # bad arguments: no change made
    for name, adapter in zip(names, adapters):
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, adapter)
    for module in model.modules():
        if not is_adapter(module):  # an adapter's own A, B, ... stay trainable; its frozen base is a module of its own
            for p in module.parameters(recurse=False):
                p.requires_grad_(False)
    return names


def is_adapter(module):
    """Whether module is an adapter of lora.py, hira.py, pera.py, dora.py, loran.py (or any class of their shape of API)."""
    return isinstance(getattr(module, "base", None), nn.Linear) and callable(getattr(module, "delta_weight", None))


def merge(model):
    """Replace every PERALinear in `model` by its merged nn.Linear, in place; return the model."""
    for name, module in list(model.named_modules()):
        if isinstance(module, PERALinear):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.merged())
    return model


def multinomial(idx, r):
    """m! / Π_i c_i! for each term (a column of idx, indices padded with r): the coefficient of its monomial in
    (Σ_i x_i)^m. With them PERA's sum is Σ_{m=2..k} (B A)^⊙m (docs/methods.md#pera): 1 for a square, 2 for a pair."""
    coefficients = []
    for term in idx.T.tolist():
        kept = [i for i in term if i != r]
        c = math.factorial(len(kept))
        for i in set(kept):
            c //= math.factorial(kept.count(i))
        coefficients.append(float(c))
    return torch.tensor(coefficients)


# ---------------------------------------------------------------------------------------------------
# Beyond the paper: degree k > 2, the paper's open question. Every multiset of 2..k indices
# i ≤ j ≤ l ≤ ... adds h · (b_i ⊙ b_j ⊙ b_l ...)(a_i ⊙ a_j ⊙ a_l ...)^T. h lists the pairs first (triu order),
# then the triples in lexicographic order, and so on. "square" keeps the pure powers (all indices equal,
# e.g. b_i ⊙ b_i ⊙ b_i), "cross" every multiset with two or more distinct indices.

def multisets(r, size, first=0):
    """Every non-decreasing index tuple of length `size` over first..r-1, in lexicographic order.

    For size 2 this is torch.triu_indices(r, r) order: (0, 0), (0, 1), ..., (0, r-1), (1, 1), ...
    """
    if size == 0:
        return [()]
    return [(i,) + rest for i in range(first, r) for rest in multisets(r, size - 1, i)]


def degree_k_indices(r, terms, degree):
    """(degree, P): column p holds the indices of term p, in h's order, padded to `degree` with index r."""
    kept = []
    for size in range(2, degree + 1):
        for m in multisets(r, size):
            if terms == "all" or (terms == "square") == (len(set(m)) == 1):
                kept.append(m + (r,) * (degree - size))  # index r pads to `degree`; it selects a row of ones
    return torch.tensor(kept, device="cpu").T.contiguous()


def degree_k_factors(layer):
    """B̂ (out, r + P) and Â (r + P, in) of a PERALinear of degree k > 2, with ΔW = s · B̂ Â."""
    # terms of fewer than `degree` indices are padded with index r: ones, a no-op factor
    A = torch.cat([layer.A, layer.A.new_ones(1, layer.A.shape[1])])  # (r + 1, in)
    B = torch.cat([layer.B, layer.B.new_ones(layer.B.shape[0], 1)], dim=1)  # (out, r + 1)
    idx = layer.idx  # (degree, P)
    A_terms, B_terms = A.index_select(0, idx[0]), B.index_select(1, idx[0])  # (P, in), (out, P)
    for row in idx[1:]:
        A_terms = A_terms * A.index_select(0, row)  # a_i ⊙ a_j ⊙ a_l ...
        B_terms = B_terms * B.index_select(1, row)  # b_i ⊙ b_j ⊙ b_l ...
    A_hat = torch.cat([layer.A, layer.h[:, None] * A_terms])  # (r + P, in); h weighs the A side only
    B_hat = torch.cat([layer.B, B_terms], dim=1)  # (out, r + P)
    return B_hat, A_hat
