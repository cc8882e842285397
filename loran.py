"""LoRAN (Deng et al. 2025, arXiv 2509.21870): LoRA with a structured nonlinearity, Sinter, applied to its update.

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


def sinter(x, amplitude, omega):
    """Sinter(x) = x + amplitude · x · sin(omega · x), elementwise: the identity plus a small sine ripple."""
    return torch.addcmul(x, x, torch.sin(omega * x), value=amplitude)  # one pass for x + amplitude · x · sin


class LoRANLinear(nn.Module):
    """y = (W0 + ΔW) x + bias,   ΔW = s · Sinter(B A),   Sinter(x) = x + λ·x·sin(ω x),   s = alpha / r.

    W0 (out, in) is the frozen base.weight, A is (r, in) and B (out, r). Sinter acts elementwise on the
    (out, in) update B A, as the authors' code (a fork of PEFT 0.4) does, and its defaults λ = amplitude =
    5e-4 and ω = omega = 1e3 are that code's. Init is LoRA's, A Kaiming-uniform and B = 0, so ΔW = 0 and
    a fresh adapter is the base layer; amplitude = 0 is LoRA exactly. The sine makes ΔW full-rank in
    general, for LoRA's r · (in + out) trainable numbers.

    Like HiRA, the forward builds the (out, in) update every call. With no dropout active, in float32 or
    float64, it then runs the base and the update as one matmul with W0 + ΔW; in bf16 or under autocast
    the update keeps a matmul of its own, since W0 + ΔW rounded to bf16 would lose a young update.
    Dropout acts on the update's input only. A and B are float32 (float64 for a float64 base) on
    base.weight's device, and B A and Sinter are computed in float32. model.to(torch.bfloat16) after
    injection converts A and B too: convert the model first, then inject.
    Derivations, measurements and the authors' settings: docs/methods.md#loran
    """

    # What the tools know of LoRAN (support/adapters.py reads it; the layer itself needs none of it): the range of
    # each setting, train.py's defaults, and the file, in PEFT's style (PEFT has no LoRAN).
    settings = {"rank": "int >= 1", "alpha": "nonzero", "dropout": "[0, 1)", "amplitude": "finite", "omega": "finite"}
    defaults = {"lr": 1e-4, "dropout": 0.2}  # LoRA's lr (the paper gives none for this task); the authors' released run
    peft_type, peft_constants = "LORAN", {}
    peft_fields = {"r": "rank", "loran_alpha": "alpha", "loran_dropout": "dropout", "amplitude": "amplitude",
                   "omega": "omega"}
    tensor_keys = {"A": "loran_A", "B": "loran_B"}

    def __init__(self, base, rank, *, alpha=None, dropout=0.0, amplitude=5e-4, omega=1e3):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRANLinear wraps an nn.Linear, got {type(base).__name__}")
        if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 1:
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        if alpha is not None and not (isinstance(alpha, numbers.Real) and math.isfinite(alpha) and alpha != 0):
            raise ValueError(f"alpha must be a finite number other than 0, got {alpha!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if not (math.isfinite(amplitude) and math.isfinite(omega)):
            raise ValueError(f"amplitude and omega must be finite, got {amplitude} and {omega}")
        self.base = base.requires_grad_(False)
        self.rank = rank = int(rank)  # r in the papers
        self.alpha = rank if alpha is None else alpha
        self.scaling = self.alpha / rank
        self.amplitude, self.omega = float(amplitude), float(omega)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        w = base.weight
        dtype = torch.promote_types(w.dtype, torch.float32)
        self.A = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=dtype))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=dtype))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.train(base.training)  # a layer of a model in eval mode stays in eval mode: no dropout

    def forward(self, x):
        autocast = torch.is_autocast_enabled(x.device.type)
        dtype = torch.get_autocast_dtype(x.device.type) if autocast else x.dtype  # what the matmul computes in
        dropout_active = self.training and isinstance(self.dropout, nn.Dropout)
        fused = not dropout_active and dtype in (torch.float32, torch.float64)  # bf16 would round ΔW away in W0 + ΔW
        if not self.lean:  # the plain computation; autograd keeps B A, its sine and ΔW, all (out, in), for the backward
            if not fused:
                return self.base(x) + F.linear(self.dropout(x), self.delta_weight().to(dtype))  # W0 x + bias + ΔW x'
            # Fused: saves a matmul forward and one backward; tests/test_adapters.py::test_fused_forward_is_the_plain_one
            weight = self.base.weight + self.delta_weight()  # W0 + s·Sinter(BA): the merged weight, one matmul
            return F.linear(x, weight.to(x.dtype), self.base.bias)
        # Lean: the same, with ΔW rebuilt in the backward (SinterLinear, below): nothing (out, in) is kept from
        # the forward to the backward; tests/test_lean.py::test_lean_backward_is_the_plain_one
        parts = (self.A, self.B, self.scaling, self.amplitude, self.omega)
        if not fused:
            return self.base(x) + SinterLinear.apply(self.dropout(x), dtype, False, self.base.weight, None, *parts)
        return SinterLinear.apply(x, x.dtype, True, self.base.weight, self.base.bias, *parts)

    lean = True  # False: the plain computation above, kept for the tests and for reading

    def delta_weight(self):
        """ΔW = s · Sinter(B A), shaped like base.weight, in float32 (float64 for a float64 adapter) even under autocast."""
        dtype = torch.promote_types(self.A.dtype, torch.float32)
        with torch.autocast(self.A.device.type, enabled=False):
            return self.scaling * sinter(self.B.to(dtype) @ self.A.to(dtype), self.amplitude, self.omega)

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
        """The most rank(ΔW) can be: the elementwise sine lifts it to min(out, in) (eval.py's rank report)."""
        return min(self.base.weight.shape)

    def share(self):
        """('sine', ‖ΔW − s·BA‖ / ‖s·BA‖): what the sine terms add to LoRA's part, as PERA's polynomial share."""
        lora_part = self.scaling * self.B @ self.A
        return "sine", float((self.delta_weight() - lora_part).norm() / lora_part.norm()) if lora_part.any() else 0.0

    def extra_repr(self):
        return f"rank={self.rank}, alpha={self.alpha}, amplitude={self.amplitude}, omega={self.omega}"


class SinterLinear(torch.autograd.Function):
    """x ΔWᵀ, or x (W0 + ΔW)ᵀ + bias when fused, with ΔW = s · Sinter(B A) built in float32, as
    LoRANLinear.forward's plain path computes it, but keeping only x and the factors for the backward, which
    builds B A again: the (out, in) matrices live one layer at a time instead of every layer's B A, its sine
    and ΔW waiting for the backward. The gradients are the plain path's: G = gyᵀ x (out, in),
    g(BA) = s · G ⊙ Sinter'(B A), Sinter'(u) = 1 + λ sin(ω u) + λ ω u cos(ω u), gB = g(BA) Aᵀ, gA = Bᵀ g(BA).
    tests/test_lean.py::test_lean_backward_is_the_plain_one holds the two equal.
    """

    @staticmethod
    def forward(ctx, x, dtype, fused, W0, bias, A, B, s, amplitude, omega):
        ctx.x_dtype, ctx.fused, ctx.consts = x.dtype, fused, (s, amplitude, omega)
        x = x.to(dtype)  # as autocast would cast it (nothing new when x is in dtype already)
        ctx.save_for_backward(x, W0, A, B)
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x, SinterLinear.weight(ctx, W0, A, B, dtype)[0], bias if fused else None)

    @staticmethod
    def weight(ctx, W0, A, B, dtype):
        """ΔW, or W0 + ΔW when fused, computed in float32 (float64 for a float64 adapter) as delta_weight
        computes it and rounded once to dtype; and u = B A, ω u and sin(ω u), which the backward needs again."""
        s, amplitude, omega = ctx.consts
        f = torch.promote_types(A.dtype, torch.float32)
        u = B.to(f) @ A.to(f)
        wu = omega * u
        sin = torch.sin(wu)
        out = None if ctx.fused or s != 1 else torch.empty_like(W0, dtype=dtype)  # the last pass rounds into it
        delta = torch.addcmul(u, u, sin, value=amplitude, out=out)  # sinter(u)
        delta = delta if s == 1 else s * delta  # s = 1 (alpha = r) multiplies nothing
        return (W0 + delta if ctx.fused else delta).to(dtype), u, wu, sin

    @staticmethod
    def backward(ctx, gy):
        x, W0, A, B = ctx.saved_tensors
        s, amplitude, omega = ctx.consts
        f = torch.promote_types(A.dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            weight, u, wu, sin = SinterLinear.weight(ctx, W0, A, B, x.dtype)
            gx = (gy @ weight).to(ctx.x_dtype) if ctx.needs_input_grad[0] else None  # (..., in)
            G = gy.reshape(-1, gy.shape[-1]).T @ x.reshape(-1, x.shape[-1])  # (out, in): ∂L/∂ΔW, in x's dtype
            G = G if s == 1 else s * G.to(f)  # (a bf16 G is promoted to float32 by the product below)
            ripple = torch.addcmul(sin, u, torch.cos(wu), value=omega)  # sin(ω u) + ω u cos(ω u)
            g_u = torch.addcmul(G, G, ripple, value=amplitude)  # s · G ⊙ Sinter'(B A), Sinter' = 1 + λ · ripple
            gB, gA = g_u @ A.to(f).T, B.to(f).T @ g_u
        return gx, None, None, None, None, gA, gB, None, None, None


def inject(model, rank, *, targets=TARGETS, adapter=LoRANLinear, **kw):
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
    """Replace every LoRANLinear in `model` by its merged nn.Linear, in place; return the model."""
    for name in [n for n, m in model.named_modules() if isinstance(m, LoRANLinear)]:
        model.set_submodule(name, model.get_submodule(name).merged())
    return model
