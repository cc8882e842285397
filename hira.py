"""HiRA: Hadamard high-rank adaptation. The low-rank product B A modulates the frozen weight elementwise.

This file imports only torch and math, so it can be copied alone into another project:
    names = inject(model, rank=8)   # wrap q, k, v, up, down; freeze everything else
    ...train...
    merge(model)                    # fold the updates in; plain nn.Linear layers again
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

TARGETS = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")


class HiRALinear(nn.Module):
    """y = (W0 + ΔW) x + bias,   ΔW = W0 ⊙ (B A)   (HiRA paper Eq. 6).

    Because B A multiplies W0 elementwise, rank(ΔW) ≤ rank(W0) · r rather than r, for the same
    r · (in + out) trainable numbers as LoRA. With W0 replaced by a matrix of ones HiRA is LoRA with
    s = 1 (paper §4.3). There is no alpha / r scaling: the authors' code and PEFT have none.

    Naming: the paper writes ΔW = W0 ⊙ (AB) with its A of shape (out, r), so its A is our B and its B
    our A. We keep one naming across lora.py, hira.py and pera.py: A (r, in), B (out, r). Init follows
    the authors' code and PEFT: A Kaiming-uniform, B zero, so ΔW = 0 and a fresh adapter changes nothing
    (the paper's "A zero, B Kaiming" is the same init under its names).

    There is no activation-side shortcut: the forward has to build the (out, in) matrix W0 ⊙ (B A), which
    is the method's inherent cost. The base and the update can share one matmul, though. With no dropout
    active (p = 0, or eval mode) the forward is x @ (W0 + W0 ⊙ BA)^T, the merged weight itself: one matmul
    forward and two backward, where PEFT's base(x) + x @ (W0 ⊙ BA)^T spends two and three. Dropout active
    in training needs the two-matmul form, since the base must see x and the update dropout(x).

    The fused form is used only when the matmul runs in float32 or float64. Rounded to bf16, the fused
    weight would lose every entry of B A below 2^-9 ≈ 0.002 in magnitude (a young update would be
    invisible to the forward: measured, a relative error of 1.0 at |BA| ≈ 1e-4), so in bf16 or under
    autocast the update gets its own matmul, base(x) + x @ (W0 ⊙ BA)^T, and keeps its precision.
    B A and W0 ⊙ (B A) are computed in float32; A and B are float32 (float64 for a float64 base) on
    base.weight's device, even for a bf16 base.
    """

    def __init__(self, base, rank, dropout=0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"HiRALinear wraps an nn.Linear, got {type(base).__name__}")
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.base = base.requires_grad_(False)
        self.r = rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        w = base.weight
        dtype = torch.promote_types(w.dtype, torch.float32)
        self.A = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=dtype))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=dtype))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def forward(self, x):
        autocast = torch.is_autocast_enabled(x.device.type)
        dtype = torch.get_autocast_dtype(x.device.type) if autocast else x.dtype  # what the matmul computes in
        dropout_active = self.training and isinstance(self.dropout, nn.Dropout)
        if dropout_active or dtype not in (torch.float32, torch.float64):
            return self.base(x) + F.linear(self.dropout(x), self.delta_weight().to(dtype))
        weight = self.base.weight + self.delta_weight()  # W0 + W0 ⊙ BA: the merged weight, one matmul
        return F.linear(x, weight.to(x.dtype), self.base.bias)

    def delta_weight(self):
        """ΔW = W0 ⊙ (B A), shaped like base.weight, in float32 (float64 for a float64 adapter) even under autocast."""
        dtype = torch.promote_types(self.A.dtype, torch.float32)
        with torch.autocast(self.A.device.type, enabled=False):
            return self.base.weight.to(dtype) * (self.B.to(dtype) @ self.A.to(dtype))

    @torch.no_grad()
    def merge(self):
        """A new frozen nn.Linear with weight W0 + ΔW (summed in float32, then rounded once to W0's dtype).

        The adapter itself is left as it was; there is no unmerge, keep the adapter if you need it again.
        """
        base = self.base
        merged = torch.nn.utils.skip_init(nn.Linear, base.in_features, base.out_features, bias=base.bias is not None,
                                          device=base.weight.device, dtype=base.weight.dtype)
        merged.weight.copy_(base.weight + self.delta_weight())
        if base.bias is not None:
            merged.bias.copy_(base.bias)
        return merged.requires_grad_(False)

    def extra_repr(self):
        return f"r={self.r}"


def inject(model, rank, targets=TARGETS, **kw):
    """Wrap every nn.Linear named `target` or `*.target` in HiRALinear, freeze all else; return the wrapped names."""
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)]
    missing = [t for t in targets if not any(name == t or name.endswith("." + t) for name in names)]
    if missing:
        raise ValueError(f"no nn.Linear in the model is named {missing} (or ends with '.<target>')")
    adapters = [HiRALinear(model.get_submodule(name), rank, **kw) for name in names]  # bad arguments: no change made
    model.requires_grad_(False)
    for name, adapter in zip(names, adapters):
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, adapter)
    return names


def merge(model):
    """Replace every HiRALinear in `model` by its merged nn.Linear, in place; return the model."""
    for name, module in list(model.named_modules()):
        if isinstance(module, HiRALinear):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.merge())
    return model
