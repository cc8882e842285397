"""LoRA (Hu et al. 2021): a frozen nn.Linear plus a trainable low-rank update on the activation side.

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


class LoRALinear(nn.Module):
    """y = W0 x + bias + s · B (A · dropout(x)),   ΔW = s · B A,   s = alpha / r   (PERA paper Eq. 8).

    `base` holds the frozen W0 (out, in) and bias. A (r, in) starts Kaiming-uniform, as nn.Linear
    initialises its own weight, and B (out, r) starts at zero, so a fresh adapter computes exactly what
    `base` does. The forward stays on the activation side and never forms the (out, in) matrix ΔW:
    two thin matmuls cost r · (in + out) per token instead of in · out. Dropout acts on the adapter's
    input only.

    A and B are created in float32 (float64 for a float64 base) on base.weight's device, even when the
    base is bf16: the optimizer then updates float32 numbers. The forward casts them to the activation's
    dtype, so a bf16 model, with or without autocast, runs the adapter in bf16 like the rest of the layer.
    """

    def __init__(self, base, rank, alpha=None, dropout=0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.base = base.requires_grad_(False)
        self.r = rank
        self.alpha = rank if alpha is None else alpha
        self.scaling = self.alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        w = base.weight
        dtype = torch.promote_types(w.dtype, torch.float32)
        self.A = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=dtype))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=dtype))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def forward(self, x):
        A, B = self.A.to(x.dtype), self.B.to(x.dtype)
        # s multiplies the (..., r) activation, the narrowest tensor on the path.
        return self.base(x) + F.linear(self.scaling * F.linear(self.dropout(x), A), B)

    def delta_weight(self):
        """ΔW = s · B A, shaped like base.weight, in float32 (float64 for a float64 adapter) even under autocast."""
        dtype = torch.promote_types(self.A.dtype, torch.float32)
        with torch.autocast(self.A.device.type, enabled=False):
            return self.scaling * (self.B.to(dtype) @ self.A.to(dtype))

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
        return f"r={self.r}, alpha={self.alpha}"


def inject(model, rank, targets=TARGETS, **kw):
    """Wrap every nn.Linear named `target` or `*.target` in LoRALinear, freeze all else; return the wrapped names."""
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)]
    missing = [t for t in targets if not any(name == t or name.endswith("." + t) for name in names)]
    if missing:
        raise ValueError(f"no nn.Linear in the model is named {missing} (or ends with '.<target>')")
    adapters = [LoRALinear(model.get_submodule(name), rank, **kw) for name in names]  # bad arguments: no change made
    model.requires_grad_(False)
    for name, adapter in zip(names, adapters):
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, adapter)
    return names


def merge(model):
    """Replace every LoRALinear in `model` by its merged nn.Linear, in place; return the model."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.merge())
    return model
