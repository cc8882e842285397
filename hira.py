"""HiRA: Hadamard high-rank adaptation. The low-rank product B A modulates the frozen weight elementwise.
With lora_rank > 0, HiLoRA, the HiRA paper's combination with LoRA: a LoRA part beside the Hadamard one.

This file imports only torch and math, so it can be copied alone into another project:
    names = inject(model, rank=8)   # wrap q, k, v, up, down; freeze all that is not an adapter
                                    # (HiLoRA: inject(model, rank=r1, lora_rank=r2))
    ...train...
    merge(model)                    # fold the updates in; plain nn.Linear layers again
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

TARGETS = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")


class HiRALinear(nn.Module):
    """y = (W0 + ΔW) x + bias,   ΔW = W0 ⊙ (B A)   (HiRA paper Eq. 6);
    with lora_rank > 0, HiLoRA:  ΔW = W0 ⊙ (B A) + s · lora_B lora_A,   s = alpha / lora_rank   (HiRA §6.6).

    W0 (out, in) is the frozen base.weight, A is (r, in) and B (out, r): the paper's A (out, r) is our B
    and its B our A, so that every adapter file uses one naming. Because B A multiplies W0 elementwise,
    rank(ΔW) ≤ rank(W0) · r rather than r, for LoRA's r · (in + out) trainable numbers; with W0 replaced
    by ones, HiRA is LoRA with s = 1 (paper §4.3). There is no alpha / r scaling: the authors' code and
    PEFT have none. Init (the authors' code and PEFT): A Kaiming-uniform, B = 0, so ΔW = 0 and a fresh
    adapter changes nothing.

    HiLoRA: rank is r1, lora_rank r2; lora_A (r2, in) and lora_B (out, r2) have lora.py's init (drawn after
    A) and scaling (default alpha = r2, s = 1). lora_rank = 0 is HiRA; rank = 0 drops the Hadamard part
    (A = B = None) and is lora.py's LoRALinear, random draws and forward alike.

    The forward builds the (out, in) matrix W0 ⊙ (B A) every call: the method's inherent cost. With no
    dropout active, in float32 or float64, it then runs the base and the update as one matmul with
    W0 + ΔW; in bf16 or under autocast the update keeps a matmul of its own, since W0 + ΔW rounded to bf16
    would lose a young update. Dropout acts on the update's input only. HiLoRA's LoRA part is summed into
    that (out, in) matrix too (docs/methods.md#hilora: what that costs and saves).
    A and B are float32 (float64 for a float64 base) on base.weight's device, even for a bf16 base, and
    B A and W0 ⊙ (B A) are computed in float32. model.to(torch.bfloat16) after injection converts A and B
    too: convert the model first, then inject.
    Derivations and measurements: docs/methods.md#hira
    """

    def __init__(self, base, rank, dropout=0.0, lora_rank=0, alpha=None):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"HiRALinear wraps an nn.Linear, got {type(base).__name__}")
        if isinstance(lora_rank, bool) or not isinstance(lora_rank, int) or lora_rank < 0:
            raise ValueError(f"lora_rank must be a non-negative integer, got {lora_rank!r}")
        # HiLoRA may drop its Hadamard part (r1 = 0: LoRA)
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < (0 if lora_rank else 1):
            raise ValueError(f"rank must be a {'non-negative' if lora_rank else 'positive'} integer, got {rank!r}")
        if alpha is not None and not lora_rank:
            raise ValueError(f"alpha ({alpha}) scales HiLoRA's LoRA part, alpha / lora_rank: none at lora_rank 0")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.base = base.requires_grad_(False)
        self.rank = rank  # r in the papers; HiLoRA's r1
        self.lora_rank = lora_rank  # HiLoRA's r2
        self.alpha = (lora_rank if alpha is None else alpha) if lora_rank else None
        self.scaling = self.alpha / lora_rank if lora_rank else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        w = base.weight
        dtype = torch.promote_types(w.dtype, torch.float32)
        self.A = self.B = self.lora_A = self.lora_B = None  # a part of rank 0 has no parameters
        if rank:
            self.A = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=dtype))
            self.B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=dtype))
            nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        if lora_rank:
            self.lora_A = nn.Parameter(torch.empty(lora_rank, base.in_features, device=w.device, dtype=dtype))
            self.lora_B = nn.Parameter(torch.zeros(base.out_features, lora_rank, device=w.device, dtype=dtype))
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.train(base.training)  # a layer of a model in eval mode stays in eval mode: no dropout

    def forward(self, x):
        if self.A is None:  # HiLoRA at r1 = 0: lora.py's forward, on the activation side
            A, B = self.lora_A.to(x.dtype), self.lora_B.to(x.dtype)
            return self.base(x) + F.linear(self.scaling * F.linear(self.dropout(x), A), B)
        autocast = torch.is_autocast_enabled(x.device.type)
        dtype = torch.get_autocast_dtype(x.device.type) if autocast else x.dtype  # what the matmul computes in
        dropout_active = self.training and isinstance(self.dropout, nn.Dropout)
        fused = not dropout_active and dtype in (torch.float32, torch.float64)  # bf16 would round ΔW away in W0 + ΔW
        if not self.lean:  # the plain computation; autograd keeps B A and ΔW, both (out, in), for the backward
            if not fused:
                return self.base(x) + F.linear(self.dropout(x), self.delta_weight().to(dtype))  # W0 x + bias + ΔW x'
            # Fused: saves a matmul forward and one backward; tests/test_adapters.py::test_fused_forward_is_the_plain_one
            weight = self.base.weight + self.delta_weight()  # W0 + W0 ⊙ BA: the merged weight, one matmul
            return F.linear(x, weight.to(x.dtype), self.base.bias)
        # Lean: the same, with ΔW rebuilt in the backward (HadamardLinear, below): nothing (out, in) is kept from
        # the forward to the backward; tests/test_lean.py::test_lean_backward_is_the_plain_one
        parts = (self.A, self.B, self.lora_A, self.lora_B, self.scaling)
        if not fused:
            return self.base(x) + HadamardLinear.apply(self.dropout(x), dtype, False, self.base.weight, None, *parts)
        return HadamardLinear.apply(x, x.dtype, True, self.base.weight, self.base.bias, *parts)

    lean = True  # False: the plain computation above, kept for the tests and for reading

    def delta_weight(self):
        """ΔW = W0 ⊙ (B A) [+ s · lora_B lora_A], shaped like base.weight, in float32 (float64 for a float64
        adapter) even under autocast."""
        own = self.A if self.A is not None else self.lora_A  # a parameter of the adapter: its dtype and device
        dtype = torch.promote_types(own.dtype, torch.float32)
        with torch.autocast(own.device.type, enabled=False):
            lora = None if self.lora_A is None else self.scaling * (self.lora_B.to(dtype) @ self.lora_A.to(dtype))
            if self.A is None:  # r1 = 0: lora.py's ΔW
                return lora
            hadamard = self.base.weight.to(dtype) * (self.B.to(dtype) @ self.A.to(dtype))
            return hadamard if lora is None else hadamard + lora

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
        return f"rank={self.rank}" + (f", lora_rank={self.lora_rank}, alpha={self.alpha}" if self.lora_rank else "")


class HadamardLinear(torch.autograd.Function):
    """x ΔWᵀ, or x (W0 + ΔW)ᵀ + bias when fused, with ΔW = W0 ⊙ (B A) [+ s · lora_B lora_A] built in float32, as
    HiRALinear.forward's plain path computes it, but keeping only x and the factors for the backward, which
    builds ΔW again: the (out, in) matrices live one layer at a time, as in the merge, instead of every
    layer's B A (float32) and ΔW (bf16) waiting for the backward, 6 bytes per entry of W0 (about 20 GiB on
    Llama-3-8B). The price is B A and W0 ⊙ B A once more, per layer and step. The gradients are the plain
    path's: G = gyᵀ x (out, in), g(BA) = W0 ⊙ G, gB = g(BA) Aᵀ, gA = Bᵀ g(BA), g(lora_B lora_A) = s · G.
    tests/test_lean.py::test_lean_backward_is_the_plain_one holds the two equal.
    """

    @staticmethod
    def forward(ctx, x, dtype, fused, W0, bias, A, B, lora_A, lora_B, s):
        ctx.x_dtype, ctx.fused, ctx.s = x.dtype, fused, s
        x = x.to(dtype)  # as autocast would cast it (nothing new when x is in dtype already)
        ctx.save_for_backward(x, W0, A, B, lora_A, lora_B)
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x, HadamardLinear.weight(ctx, W0, A, B, lora_A, lora_B, dtype), bias if fused else None)

    @staticmethod
    def weight(ctx, W0, A, B, lora_A, lora_B, dtype):
        """ΔW, or W0 + ΔW when fused, computed in float32 (float64 for a float64 adapter) as delta_weight
        computes it, and rounded once to dtype."""
        f = torch.promote_types(A.dtype, torch.float32)
        ba = B.to(f) @ A.to(f)
        out = None if ctx.fused else torch.empty_like(W0, dtype=dtype)  # the last product rounds into it
        if lora_A is None:  # W0 ⊙ BA, W0 promoted to float32 inside the product: no (out, in) copy of it
            delta = torch.mul(W0, ba, out=out)
        else:  # s · lora_B lora_A + W0 ⊙ BA in one pass
            lora = lora_B.to(f) @ lora_A.to(f)
            delta = torch.addcmul(lora if ctx.s == 1 else ctx.s * lora, W0, ba, out=out)
        return (W0 + delta).to(dtype) if ctx.fused else delta

    @staticmethod
    def backward(ctx, gy):
        x, W0, A, B, lora_A, lora_B = ctx.saved_tensors
        f = torch.promote_types(A.dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            gx = None
            if ctx.needs_input_grad[0]:
                gx = (gy @ HadamardLinear.weight(ctx, W0, A, B, lora_A, lora_B, x.dtype)).to(ctx.x_dtype)  # (..., in)
            G = (gy.reshape(-1, gy.shape[-1]).T @ x.reshape(-1, x.shape[-1])).to(f)  # (out, in): ∂L/∂ΔW
            g_ba = G * W0
            grads = [g_ba @ A.to(f).T, B.to(f).T @ g_ba]  # gB (out, r), gA (r, in)
            if lora_A is not None:
                g_lora = G if ctx.s == 1 else ctx.s * G
                grads += [g_lora @ lora_A.to(f).T, lora_B.to(f).T @ g_lora]
            else:
                grads += [None, None]
        gB, gA, g_lB, g_lA = grads
        return gx, None, None, None, None, gA, gB, g_lA, g_lB, None


def inject(model, rank, targets=TARGETS, **kw):
    """Wrap every nn.Linear named `target` or `*.target` in HiRALinear; return the wrapped names.

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
            raise ValueError(f"{name} is a {type(module).__name__}, not an nn.Linear: HiRALinear adapts y = x W0^T + b "
                             f"with W0 of shape (out, in), which only nn.Linear guarantees (GPT-2's Conv1D stores "
                             f"its weight as (in, out))")
        names.append(name)
    missing = [t for t in targets if not any(name == t or name.endswith("." + t) for name in names)]
    if missing:
        raise ValueError(f"no nn.Linear in the model is named {missing} (or ends with '.<target>')")
    adapters = [HiRALinear(model.get_submodule(name), rank, **kw) for name in names]  # bad arguments: no change made
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
    """Replace every HiRALinear in `model` by its merged nn.Linear, in place; return the model."""
    for name, module in list(model.named_modules()):
        if isinstance(module, HiRALinear):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.merged())
    return model
