"""PERA: polynomial expansion rank adaptation. LoRA plus Hadamard products of its own factors.

This file imports only torch, math and numbers, so it can be copied alone into another project:
    names = inject(model, rank=8)   # wrap q, k, v, up, down; freeze all that is not an adapter
    ...train...
    merge(model)                    # fold the updates in; plain nn.Linear layers again
"""
import math
import numbers

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


def n_terms(r, terms="all", degree=2):
    """P, the length of h: the multisets of 2 to `degree` of the r indices, all of them, the pure powers ("square")
    or those with two or more distinct indices ("cross"); r(r+1)/2, r, r(r-1)/2 at degree 2."""
    every, powers = sum(math.comb(r + k - 1, k) for k in range(2, degree + 1)), (degree - 1) * r
    return {"all": every, "square": powers, "cross": every - powers}[terms]


def frobenius_sq(X, Y):
    """‖X Y‖_F² = Σ (XᵀX) ⊙ (Y Yᵀ), from two (k, k) Gram matrices, never forming the product X Y."""
    return ((X.T @ X) * (Y @ Y.T)).sum()


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

    # What the tools know of PERA (support/adapters.py reads it; the layer itself needs none of it): the range of
    # each setting, train.py's defaults, and the file, in PEFT's style (PEFT has no PERA).
    settings = {"rank": "int >= 1", "alpha": "nonzero", "dropout": "[0, 1)", "terms": TERMS, "degree": "int >= 2",
                "init": INITS, "h_lr_ratio": ">= 0",
                "coefficients": COEFFICIENTS}
    defaults = {"lr": 1e-4, "dropout": 0.05}  # the PERA paper's
    peft_type, peft_constants = "PERA", {}
    peft_fields = {"r": "rank", "pera_alpha": "alpha", "pera_dropout": "dropout", "terms": "terms", "degree": "degree",
                   "init": "init", "h_lr_ratio": "h_lr_ratio",
                   "coefficients": "coefficients"}
    tensor_keys = {"A": "pera_A", "B": "pera_B", "h": "pera_h"}

    def __init__(self, base, rank, *, alpha=None, dropout=0.0, terms="all", degree=2, init="code", h_lr_ratio=1.0,
                 coefficients="trained"):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"PERALinear wraps an nn.Linear, got {type(base).__name__}")
        if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 1:
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        if alpha is not None and not (isinstance(alpha, numbers.Real) and math.isfinite(alpha) and alpha != 0):
            raise ValueError(f"alpha must be a finite number other than 0, got {alpha!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if terms not in TERMS:
            raise ValueError(f"terms must be one of {TERMS}, got {terms!r}")
        if isinstance(degree, bool) or not isinstance(degree, numbers.Integral) or degree < 2:
            raise ValueError(f"degree must be an integer >= 2 (degree 1 is LoRA: use lora.py), got {degree!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if coefficients not in COEFFICIENTS:
            raise ValueError(f"coefficients must be one of {COEFFICIENTS}, got {coefficients!r}")
        if terms == "cross" and rank == 1:
            raise ValueError("terms='cross' with rank 1 keeps no terms: cross terms need two distinct indices")
        if not (isinstance(h_lr_ratio, numbers.Real) and math.isfinite(h_lr_ratio) and h_lr_ratio >= 0):
            raise ValueError(f"h_lr_ratio must be a finite number >= 0 (0: h stays at its init), got {h_lr_ratio!r}")
        self.base = base.requires_grad_(False)
        self.rank = rank = int(rank)  # r in the papers
        self.alpha = rank if alpha is None else alpha
        self.scaling = self.alpha / rank
        self.terms = terms
        self.degree = degree = int(degree)
        self.init = init
        self.lr_ratios = {"h": float(h_lr_ratio)}  # h's learning rate is h_lr_ratio × A's and B's (the PERA study)
        self.coefficients = coefficients
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

        w = base.weight
        dtype = torch.promote_types(w.dtype, torch.float32)
        self.A = nn.Parameter(torch.zeros(rank, base.in_features, device=w.device, dtype=dtype))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=dtype))
        self._idx = None  # the terms' indices, built by `idx` on A's device
        self.h = nn.Parameter(torch.zeros(n_terms(rank, terms, degree), device=w.device, dtype=dtype))  # (P,), idx's order
        if coefficients == "multinomial":  # the authors' first version: fixed coefficients, ΔW = s Σ_m (B A)^⊙m
            self.h.requires_grad_(False).data.copy_(multinomial(rank, terms, degree))
        if init == "code":  # the authors' code, LoRA's init: ΔW = 0 because B = 0
            nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        else:  # the paper's text: ΔW = 0 because A = 0
            nn.init.normal_(self.B, std=1 / rank)
        self.train(base.training)  # a layer of a model in eval mode stays in eval mode: no dropout

    def forward(self, x):
        if not self.lean or self.degree > 2:  # the plain computation
            B_hat, A_hat = self.expanded_factors()  # (out, r + P), (r + P, in)
            B_hat, A_hat = B_hat.to(x.dtype), A_hat.to(x.dtype)
            # s multiplies the (..., r + P) activation, the narrowest tensor on the path.
            return self.base(x) + F.linear(self.scaling * F.linear(self.dropout(x), A_hat), B_hat)
        # Lean: the same update with the factors' gradients in closed form (PERAUpdate, below): a third of the
        # kernels, and none of the float32 (P, in), (out, P) intermediates kept for the backward;
        # tests/test_lean.py::test_lean_backward_is_the_plain_one
        return self.base(x) + PERAUpdate.apply(self.dropout(x), self.A, self.B, self.h, self.idx, self.scaling)

    lean = True  # False: the plain computation above, kept for the tests and for reading

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
        """A new frozen nn.Linear holding W0 + ΔW, summed in float32 and rounded once to W0's dtype; no unmerge."""
        w, b = self.base.weight, self.base.bias
        linear = torch.nn.utils.skip_init(nn.Linear, w.shape[1], w.shape[0], b is not None, device=w.device, dtype=w.dtype)
        linear.load_state_dict({"weight": w + self.delta_weight()} | ({} if b is None else {"bias": b}))
        return linear.requires_grad_(False).train(self.training)

    @property
    def weight(self):
        """W0 + ΔW in W0's dtype, for code that reads .weight (nn.MultiheadAttention, a tied head); W0 is base.weight."""
        return (self.base.weight + self.delta_weight()).to(self.base.weight.dtype)

    bias = property(lambda self: self.base.bias)  # b, read with .weight; the adapter never changes it

    def rank_bound(self):
        """The most rank(ΔW) can be: r + P, the columns of B̂ (eval.py's rank report)."""
        return self.rank + self.h.numel()

    def share(self):
        """('polynomial', ‖ΔW − s·BA‖ / ‖s·BA‖): what the terms add to LoRA's part (eval.py's rank report)."""
        return "polynomial", polynomial_share(self)

    @staticmethod
    def label(settings):
        """What a run's name adds to 'PERA r=4': the settings that differ from the paper's defaults."""
        return ((f" ({settings['terms']} only)" if settings["terms"] != "all" else "")
                + (f", {settings['init']} init" if settings.get("init", "code") != "code" else "")
                + (f", h lr ×{settings['h_lr_ratio']:g}" if settings.get("h_lr_ratio", 1.0) != 1.0 else "")
                + (f", {settings['coefficients']} coefficients" if settings.get("coefficients", "trained") != "trained"
                   else ""))

    def extra_repr(self):
        return (f"rank={self.rank}, alpha={self.alpha}, terms={self.terms!r}, degree={self.degree}, "
                f"init={self.init!r}, P={len(self.h)}")


class PERAUpdate(torch.autograd.Function):
    """s · (x Âᵀ) B̂ᵀ for degree 2, as PERALinear.forward's plain path computes it, with the gradients of A, B
    and h in closed form (docs/exercises.md derives h's): with Gₐ = ∂L/∂Â (r + P, in), G_b = ∂L/∂B̂ (out, r + P),
        ∂L/∂h_p = ⟨Gₐ[r + p], a_i ⊙ a_j⟩,
        ∂L/∂A = Gₐ[:r] + Σ_p h_p Gₐ[r + p] ⊙ (a_j at row i, a_i at row j),
        ∂L/∂B = G_b[:, :r] + Σ_p G_b[:, r + p] ⊙ (b_j at column i, b_i at column j).
    Autograd would run every index_select, product and concatenation backward (index_select ×4, mul ×3, cat ×2,
    each with its own backward) and keep their float32 (P, in) and (out, P) inputs; this keeps the factors
    (parameters, alive anyway), Â and B̂ in the activation's dtype, x and x Âᵀ, and gathers each factor once.
    tests/test_lean.py::test_lean_backward_is_the_plain_one holds the two equal.
    """

    @staticmethod
    def forward(ctx, x, A, B, h, idx, s):
        autocast = torch.is_autocast_enabled(x.device.type)
        dtype = torch.get_autocast_dtype(x.device.type) if autocast else x.dtype  # what the matmuls compute in
        with torch.autocast(x.device.type, enabled=False):
            P, ij = idx.shape[1], idx.reshape(-1)  # (2P,): the i's, then the j's
            A_ij = A.index_select(0, ij).view(2, P, -1)  # a_i and a_j, (2, P, in)
            B_ij = B.index_select(1, ij).view(B.shape[0], 2, P)  # b_i and b_j, (out, 2, P)
            # (r + P, in) and (out, r + P), each concatenated straight into the activation's dtype
            A_hat = torch.cat([A, h[:, None] * (A_ij[0] * A_ij[1])], out=A.new_empty(A.shape[0] + P, A.shape[1], dtype=dtype))
            B_hat = torch.cat([B, B_ij[:, 0] * B_ij[:, 1]], dim=1, out=B.new_empty(B.shape[0], B.shape[1] + P, dtype=dtype))
            x_ = x.to(dtype)
            u = F.linear(x_, A_hat)  # (..., r + P)
            u = u if s == 1 else s * u  # s = 1 (alpha = r) multiplies nothing
            ctx.save_for_backward(x_, u, A_hat, B_hat, A, B, h, idx)
            ctx.s, ctx.x_dtype = s, x.dtype
            return F.linear(u, B_hat)

    @staticmethod
    def backward(ctx, gy):
        x, u, A_hat, B_hat, A, B, h, idx = ctx.saved_tensors
        r, P, f = A.shape[0], idx.shape[1], A.dtype
        with torch.autocast(x.device.type, enabled=False):
            gy2 = gy.reshape(-1, gy.shape[-1])  # (tokens, out)
            g_B_hat = (gy2.T @ u.reshape(-1, u.shape[-1])).to(f)  # (out, r + P)
            gu = gy @ B_hat  # (..., r + P)
            gu = gu if ctx.s == 1 else ctx.s * gu
            g_A_hat = (gu.reshape(-1, gu.shape[-1]).T @ x.reshape(-1, x.shape[-1])).to(f)  # (r + P, in)
            gx = (gu @ A_hat).to(ctx.x_dtype) if ctx.needs_input_grad[0] else None
            ij, ji = idx.reshape(-1), idx.flip(0).reshape(-1)  # each index beside its partner
            A_ji = A.index_select(0, ji).view(2, P, -1)  # a_j and a_i
            g_terms = g_A_hat[r:] * A_ji  # (2, P, in): ∂L/∂(h_p a_i ⊙ a_j) ⊙ a_j, then ⊙ a_i
            gh = (g_terms[0, :, None] @ A_ji[1, :, :, None]).view(P)  # ⟨∂L/∂(h_p a_i ⊙ a_j) ⊙ a_j, a_i⟩, batched
            gA = g_A_hat[:r].index_add(0, ij, (h[:, None] * g_terms).view(2 * P, -1))
            B_ji = B.index_select(1, ji).view(B.shape[0], 2, P)  # b_j and b_i
            gB = g_B_hat[:, :r].index_add(1, ij, (g_B_hat[:, None, r:] * B_ji).view(B.shape[0], 2 * P))
        return gx, gA, gB, gh, None, None


@torch.no_grad()
def polynomial_share(layer):
    """‖ΔW − s·BA‖_F / ‖s·BA‖_F: how large the polynomial terms are next to LoRA's part (0 while B A = 0).

    ΔW − s·BA = s · B̂[:, r:] Â[r:], so both norms come from (P, P) and (r, r) Gram matrices
    (frobenius_sq), in float64, never forming an (out, in) matrix: cheap enough to log every
    step. The factors are built in the layer's own dtype (pass a float64 copy for a float64 figure).
    """
    B_hat, A_hat = (t.detach().double() for t in layer.expanded_factors())
    r = layer.rank
    lora_part = frobenius_sq(B_hat[:, :r], A_hat[:r])
    return float((frobenius_sq(B_hat[:, r:], A_hat[r:]) / lora_part).sqrt()) if lora_part > 0 else 0.0



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
    lora_part = frobenius_sq(B, A)
    M = float((B.abs().amax(0) * A.abs().amax(1)).sum())
    rho = float((frobenius_sq(B.abs(), A.abs()) / lora_part).sqrt()) if lora_part > 0 else 0.0
    return float(h.abs().max()) if len(h) else 0.0, M, rho


def inject(model, rank, *, targets=TARGETS, adapter=PERALinear, **kw):
    """Wrap each nn.Linear named `target` or `*.target` in `adapter`, freeze all else; return the wrapped names.
    A target naming no layer, an adapter or a part of one, or not an nn.Linear is an error; nothing then changes."""
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"targets must name one or more layers (e.g. {TARGETS}), got {targets!r}")
    names = [n for n, _ in model.named_modules() if any(n == t or n.endswith("." + t) for t in targets)]
    if missing := [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]:
        raise ValueError(f"no nn.Linear in the model is named {missing} (or ends with '.<target>')")
    for name in names:
        if at := next((n for n, m in model.named_modules() if is_adapter(m) and f"{name}.".startswith(f"{n}.")), None):
            raise ValueError(f"{name} is {'already adapted' if at == name else f'part of the adapter at {at}'} "
                             f"(a {type(model.get_submodule(at)).__name__}); adapters do not nest")
        if not isinstance(module := model.get_submodule(name), nn.Linear):  # GPT-2's Conv1D stores W0 as (in, out)
            raise ValueError(f"{name} is a {type(module).__name__}, not an nn.Linear: {adapter.__name__} adapts "
                             f"y = x W0^T + b with W0 of shape (out, in), which only nn.Linear guarantees")
    adapters = {name: adapter(model.get_submodule(name), rank, **kw) for name in names}  # bad arguments: no change
    for p in (p for m in model.modules() if not is_adapter(m) for p in m.parameters(recurse=False)):
        p.requires_grad_(False)  # all but the adapters' own A, B, ...; each base is frozen by its adapter
    return [model.set_submodule(name, layer) or name for name, layer in adapters.items()]


def is_adapter(module):
    """Whether module is an adapter of lora.py, hira.py, pera.py, dora.py, loran.py (or of their shape of API)."""
    return isinstance(getattr(module, "base", None), nn.Linear) and callable(getattr(module, "delta_weight", None))


def merge(model):
    """Replace every PERALinear in `model` by its merged nn.Linear, in place; return the model."""
    for name in [n for n, m in model.named_modules() if isinstance(m, PERALinear)]:
        model.set_submodule(name, model.get_submodule(name).merged())
    return model


def multinomial(r, terms, degree):
    """m! / Π_i c_i! for each term, in h's order: the coefficient of its monomial in (Σ_i x_i)^m. With them and
    terms="all", PERA's sum is Σ_{m=2..k} (B A)^⊙m (docs/methods.md#pera): 1 for a square, 2 for a pair."""
    idx = pairs(r, terms) if degree == 2 else degree_k_indices(r, terms, degree)  # (degree, P), padded with r
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
