"""LoRAN (Deng et al. 2025, arXiv 2509.21870): LoRA with a structured nonlinearity, Sinter, applied to its update.

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

    def __init__(self, base, rank, alpha=None, dropout=0.0, amplitude=5e-4, omega=1e3):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRANLinear wraps an nn.Linear, got {type(base).__name__}")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if not (math.isfinite(amplitude) and math.isfinite(omega)):
            raise ValueError(f"amplitude and omega must be finite, got {amplitude} and {omega}")
        self.base = base.requires_grad_(False)
        self.rank = rank  # r in the papers
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


def inject(model, rank, targets=TARGETS, **kw):
    """Wrap every nn.Linear named `target` or `*.target` in LoRANLinear; return the wrapped names.

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
            raise ValueError(f"{name} is a {type(module).__name__}, not an nn.Linear: LoRANLinear adapts y = x W0^T + b "
                             f"with W0 of shape (out, in), which only nn.Linear guarantees (GPT-2's Conv1D stores "
                             f"its weight as (in, out))")
        names.append(name)
    missing = [t for t in targets if not any(name == t or name.endswith("." + t) for name in names)]
    if missing:
        raise ValueError(f"no nn.Linear in the model is named {missing} (or ends with '.<target>')")
    adapters = [LoRANLinear(model.get_submodule(name), rank, **kw) for name in names]  # bad arguments: no change made
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
    """Replace every LoRANLinear in `model` by its merged nn.Linear, in place; return the model."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRANLinear):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.merged())
    return model
