"""HiRA: Hadamard high-rank adaptation. The low-rank product B A modulates the frozen weight elementwise.
HiLoRALinear, the HiRA paper's combination with LoRA: a LoRA part beside the Hadamard one.

This file imports only torch, math and numbers, so it can be copied alone into another project:
    names = inject(model, rank=8)   # wrap q, k, v, up, down; freeze all that is not an adapter
                                    # (HiLoRA: inject(model, rank=r1, adapter=HiLoRALinear, lora_rank=r2))
    ...train...
    merge(model)                    # fold the updates in; plain nn.Linear layers again
"""
import math
import numbers

import torch
import torch.nn as nn
import torch.nn.functional as F

TARGETS = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")


def factors(base, rank):
    """A (rank, in) Kaiming-uniform and B (out, rank) zero, as lora.py's, on base.weight's device in float32
    (float64 for a float64 base); a part of rank 0 has no parameters: (None, None)."""
    if rank == 0:
        return None, None
    w = base.weight
    dtype = torch.promote_types(w.dtype, torch.float32)
    A = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=dtype))
    B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=dtype))
    nn.init.kaiming_uniform_(A, a=math.sqrt(5))
    return A, B


def check_rank(name, rank, least):
    """rank as an int, if it is an integer (a Python or numpy one, not a bool) of at least `least`."""
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < least:
        raise ValueError(f"{name} must be a {'positive' if least else 'non-negative'} integer, got {rank!r}")
    return int(rank)


class HiRALinear(nn.Module):
    """y = (W0 + ΔW) x + bias,   ΔW = W0 ⊙ (B A)   (HiRA paper Eq. 6).

    W0 (out, in) is the frozen base.weight, A is (r, in) and B (out, r): the paper's A (out, r) is our B
    and its B our A, so that every adapter file uses one naming. Because B A multiplies W0 elementwise,
    rank(ΔW) ≤ rank(W0) · r rather than r, for LoRA's r · (in + out) trainable numbers; with W0 replaced
    by ones, HiRA is LoRA with s = 1 (paper §4.3). There is no alpha / r scaling: the authors' code and
    PEFT have none. Init (the authors' code and PEFT): A Kaiming-uniform, B = 0, so ΔW = 0 and a fresh
    adapter changes nothing.

    The forward builds the (out, in) matrix W0 ⊙ (B A) every call: the method's inherent cost. With no
    dropout active, in float32 or float64, it then runs the base and the update as one matmul with
    W0 + ΔW; in bf16 or under autocast the update keeps a matmul of its own, since W0 + ΔW rounded to bf16
    would lose a young update. Dropout acts on the update's input only.
    A and B are float32 (float64 for a float64 base) on base.weight's device, even for a bf16 base, and
    B A and W0 ⊙ (B A) are computed in float32. model.to(torch.bfloat16) after injection converts A and B
    too: convert the model first, then inject.
    Derivations and measurements: docs/methods.md#hira
    """
    # What the tools know of HiRA (support/adapters.py reads it; the layer itself needs none of it): the range of
    # each setting, train.py's defaults, and the file: PEFT's own.
    settings = {"rank": "int >= 1", "dropout": "[0, 1)"}
    defaults = {"lr": 1e-3, "dropout": 0.0}  # the HiRA paper's lr, ~10x LoRA's; its authors' code has no dropout
    peft_type, peft_fields = "HIRA", {"r": "rank", "hira_dropout": "dropout"}
    peft_constants = {"init_weights": True, "rank_pattern": {}}
    tensor_keys = {"A": "hira_A", "B": "hira_B"}

    def __init__(self, base, rank, *, dropout=0.0):
        super().__init__()
        self.wrap(base, check_rank("rank", rank, least=1), dropout)

    def wrap(self, base, rank, dropout):
        """What HiRALinear and HiLoRALinear build alike: the frozen base, the dropout and the Hadamard part."""
        if not isinstance(base, nn.Linear):
            raise TypeError(f"{type(self).__name__} wraps an nn.Linear, got {type(base).__name__}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.base = base.requires_grad_(False)
        self.rank = rank  # r in the papers; HiLoRA's r1
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.A, self.B = factors(base, rank)
        self.train(base.training)  # a layer of a model in eval mode stays in eval mode: no dropout

    def forward(self, x):
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
        parts = self.update_parts()
        if not fused:
            return self.base(x) + HadamardLinear.apply(self.dropout(x), dtype, False, self.base.weight, None, *parts)
        return HadamardLinear.apply(x, x.dtype, True, self.base.weight, self.base.bias, *parts)

    lean = True  # False: the plain computation above, kept for the tests and for reading

    def update_parts(self):
        """A, B and a LoRA part's factors and scaling (none here) for HadamardLinear."""
        return self.A, self.B, None, None, None

    def delta_weight(self):
        """ΔW = W0 ⊙ (B A), shaped like base.weight, in float32 (float64 for a float64 adapter) even under autocast."""
        dtype = torch.promote_types(self.A.dtype, torch.float32)
        with torch.autocast(self.A.device.type, enabled=False):
            return self.base.weight.to(dtype) * (self.B.to(dtype) @ self.A.to(dtype))

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
        """The most rank(ΔW) can be: W0 ⊙ lifts it to min(out, in) in general (eval.py's rank report)."""
        return min(self.base.weight.shape)

    def extra_repr(self):
        return f"rank={self.rank}"


class HiLoRALinear(HiRALinear):
    """HiLoRA (HiRA paper §6.6): ΔW = W0 ⊙ (B A) + s · lora_B lora_A,   s = alpha / lora_rank.

    HiRA's Hadamard part of rank r1 = rank, with a LoRA part of rank r2 = lora_rank beside it: lora_A
    (r2, in) and lora_B (out, r2) have lora.py's init (drawn after A) and scaling (default alpha = r2,
    s = 1). lora_rank = 0 is HiRALinear; rank = 0 drops the Hadamard part (A = B = None) and is lora.py's
    LoRALinear, random draws and forward alike. Otherwise the forward is HiRA's, with the LoRA part summed
    into its (out, in) matrix too (docs/methods.md#hilora: what that costs and saves).
    """
    settings = {"rank": "int >= 0", "lora_rank": "int >= 0", "alpha": "nonzero", "dropout": "[0, 1)"}
    defaults = {"lr": 1e-3, "dropout": 0.0}  # its Hadamard part needs HiRA's lr; the paper gives no settings of its own
    peft_type, peft_constants = "HILORA", {}
    peft_fields = {"r": "rank", "lora_r": "lora_rank", "lora_alpha": "alpha", "hilora_dropout": "dropout"}
    tensor_keys = {"A": "hira_A", "B": "hira_B", "lora_A": "lora_A.weight", "lora_B": "lora_B.weight"}
    rank_parts = {"rank": "A", "lora_rank": "lora_A"}  # a rank, and the parameter that has that many rows

    def __init__(self, base, rank, *, lora_rank, alpha=None, dropout=0.0):
        nn.Module.__init__(self)
        lora_rank = check_rank("lora_rank", lora_rank, least=0)
        rank = check_rank("rank", rank, least=0 if lora_rank else 1)  # r1 = 0 drops the Hadamard part: LoRA
        if alpha is not None and not lora_rank:
            raise ValueError(f"alpha ({alpha}) scales HiLoRA's LoRA part, alpha / lora_rank: none at lora_rank 0")
        if alpha is not None and not (isinstance(alpha, numbers.Real) and math.isfinite(alpha) and alpha != 0):
            raise ValueError(f"alpha must be a finite number other than 0, got {alpha!r}")
        self.wrap(base, rank, dropout)
        self.lora_rank = lora_rank  # r2
        self.alpha = (lora_rank if alpha is None else alpha) if lora_rank else None
        self.scaling = self.alpha / lora_rank if lora_rank else None
        self.lora_A, self.lora_B = factors(base, lora_rank)

    def forward(self, x):
        if self.A is None:  # r1 = 0: lora.py's forward, on the activation side
            A, B = self.lora_A.to(x.dtype), self.lora_B.to(x.dtype)
            return self.base(x) + F.linear(self.scaling * F.linear(self.dropout(x), A), B)
        return super().forward(x)  # HiRA's, with this delta_weight

    def update_parts(self):
        return self.A, self.B, self.lora_A, self.lora_B, self.scaling

    def delta_weight(self):
        """ΔW = W0 ⊙ (B A) + s · lora_B lora_A, either part absent at rank 0, shaped like base.weight, in float32
        (float64 for a float64 adapter) even under autocast."""
        if self.lora_A is None:  # r2 = 0: HiRA's ΔW
            return super().delta_weight()
        dtype = torch.promote_types(self.lora_A.dtype, torch.float32)
        with torch.autocast(self.lora_A.device.type, enabled=False):
            lora = self.scaling * (self.lora_B.to(dtype) @ self.lora_A.to(dtype))
        return lora if self.A is None else super().delta_weight() + lora

    def rank_bound(self):
        return min(self.base.weight.shape) if self.rank else self.lora_rank  # r1 = 0: LoRA's r2

    @staticmethod
    def label(settings):
        """What a run's name adds to 'HiLoRA r=r1': its r2, as the paper writes (r1 = 20, r2 = 12) as r=20+12."""
        return f"+{settings['lora_rank']}"

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


def inject(model, rank, *, targets=TARGETS, adapter=HiRALinear, **kw):
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
    """Replace every HiRALinear in `model` by its merged nn.Linear, in place; return the model."""
    for name in [n for n, m in model.named_modules() if isinstance(m, HiRALinear)]:
        model.set_submodule(name, model.get_submodule(name).merged())
    return model
