"""LoRAN (Deng et al. 2025, arXiv 2509.21870): LoRA with a structured nonlinearity, Sinter, applied to its update.

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


def sinter(x, amplitude, omega):
    """Sinter(x) = x + amplitude · x · sin(omega · x), elementwise: the identity plus a small sine ripple."""
    return x + amplitude * x * torch.sin(omega * x)


class LoRANLinear(nn.Module):
    """y = (W0 + ΔW) x + bias,   ΔW = s · Sinter(B A),   Sinter(x) = x + λ·x·sin(ω x),   s = alpha / r.

    The nonlinearity acts elementwise on the (out, in) update B A, as the authors' code (a fork of PEFT 0.4)
    does. The defaults λ = amplitude = 5e-4 and ω = omega = 1e3 are that code's (`mlora_af_sin_A`,
    `mlora_af_sin_omega`); their released 20-Newsgroups run on Llama-2-7B used λ = 5e-5, ω = 1e4, r = 64,
    alpha 16 (s = 0.25), dropout 0.2, on q_proj and v_proj. Init is LoRA's (A Kaiming-uniform, B = 0), so
    ΔW = 0 and a fresh adapter is the base layer; amplitude = 0 is LoRA exactly. The sine makes ΔW
    full-rank in general, for the same r · (in + out) trainable numbers as LoRA.

    Like HiRA, there is no activation-side shortcut: the forward builds the (out, in) update every step.
    Base and update share one matmul as in hira.py: with no dropout active (p = 0, or eval mode), the
    forward is x @ (W0 + ΔW)^T, the merged weight itself, one matmul forward and two backward. Dropout
    active in training needs base(x) + dropout(x) @ ΔW^T, since the base must see x and the update
    dropout(x). The fused form is used only when the matmul runs in float32 or float64: rounded to bf16,
    the fused weight would lose every entry of ΔW below bf16's resolution of W0, so in bf16 or under
    autocast the update gets its own matmul (hira.py's docstring has the measurement). B A and Sinter are
    computed in float32; A and B are float32 (float64 for a float64 base) on base.weight's device.
    """

    def __init__(self, base, rank, alpha=None, dropout=0.0, amplitude=5e-4, omega=1e3):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRANLinear wraps an nn.Linear, got {type(base).__name__}")
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if not (math.isfinite(amplitude) and math.isfinite(omega)):
            raise ValueError(f"amplitude and omega must be finite, got {amplitude} and {omega}")
        self.base = base.requires_grad_(False)
        self.r = rank
        self.alpha = rank if alpha is None else alpha
        self.scaling = self.alpha / rank
        self.amplitude, self.omega = float(amplitude), float(omega)
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
        weight = self.base.weight + self.delta_weight()  # W0 + s·Sinter(BA): the merged weight, one matmul
        return F.linear(x, weight.to(x.dtype), self.base.bias)

    def delta_weight(self):
        """ΔW = s · Sinter(B A), shaped like base.weight, in float32 (float64 for a float64 adapter) even under autocast."""
        dtype = torch.promote_types(self.A.dtype, torch.float32)
        with torch.autocast(self.A.device.type, enabled=False):
            return self.scaling * sinter(self.B.to(dtype) @ self.A.to(dtype), self.amplitude, self.omega)

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
        return f"r={self.r}, alpha={self.alpha}, amplitude={self.amplitude}, omega={self.omega}"


def inject(model, rank, targets=TARGETS, **kw):
    """Wrap every nn.Linear named `target` or `*.target` in LoRANLinear, freeze all else; return the wrapped names."""
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)]
    missing = [t for t in targets if not any(name == t or name.endswith("." + t) for name in names)]
    if missing:
        raise ValueError(f"no nn.Linear in the model is named {missing} (or ends with '.<target>')")
    adapters = [LoRANLinear(model.get_submodule(name), rank, **kw) for name in names]  # bad arguments: no change made
    model.requires_grad_(False)
    for name, adapter in zip(names, adapters):
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, adapter)
    return names


def merge(model):
    """Replace every LoRANLinear in `model` by its merged nn.Linear, in place; return the model."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRANLinear):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.merge())
    return model
