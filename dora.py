"""DoRA (Liu et al. 2024): weight-decomposed low-rank adaptation. A LoRA update sets the direction of each
output row of the weight, and a trained magnitude vector its length.

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


class DoRALinear(nn.Module):
    """W' = m ⊙ (W0 + s·B A) / ‖W0 + s·B A‖_row,   y = W' x + bias,   s = alpha / r   (DoRA paper Eq. 5).

    W0 (out, in) is the frozen base.weight, A is (r, in), B (out, r) and m (out,). Each output row of W' is
    a direction, that row of W0 + s·BA over its norm n, times a trained magnitude m. Init: A Kaiming-
    uniform, B = 0 and m = ‖W0‖_row, so a fresh adapter is the base layer exactly (m / n = 1). As the
    paper suggests (§4.3) and PEFT does, n is detached from the gradient: A and B learn through the LoRA
    path only.

    The forward stays on the activation side and never forms the (out, in) W': with d = m / n − 1 (out,),
        y = base(x) + s·B A x + d ⊙ (W0 x + s·B A x),
    one matmul with W0 and LoRA's two thin ones. While training with dropout it follows PEFT's rule: the
    base sees x and both correction terms see dropout(x), at the cost of a second matmul with W0.
    A, B and m are float32 (float64 for a float64 base) on base.weight's device, even for a bf16 base;
    the norms are computed in float32 and the forward casts to the activation's dtype.
    model.to(torch.bfloat16) after injection converts A, B and m too: convert the model first, then inject.
    Derivations and measurements: docs/methods.md#dora
    """

    def __init__(self, base, rank, alpha=None, dropout=0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"DoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.base = base.requires_grad_(False)
        self.rank = rank  # r in the papers
        self.alpha = rank if alpha is None else alpha
        self.scaling = self.alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        w = base.weight
        dtype = torch.promote_types(w.dtype, torch.float32)
        self.A = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=dtype))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=dtype))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        # With B = 0 the norm below is ‖W0‖_row, computed the way the forward computes it: m / n is exactly 1.
        self.m = nn.Parameter(self.weight_norm())
        self.train(base.training)  # a layer of a model in eval mode stays in eval mode: no dropout

    def forward(self, x):
        A, B, bias = self.A.to(x.dtype), self.B.to(x.dtype), self.base.bias
        n = self.weight_norm()  # (out,), a constant for autograd
        d = (self.m - n) / n  # m / n − 1, small: 1 + d in bf16 would round a young magnitude update away
        if self.training and isinstance(self.dropout, nn.Dropout):  # PEFT's rule: both corrections see dropout(x)
            x_ = self.dropout(x)
            lora = F.linear(self.scaling * F.linear(x_, A), B)  # s·B A x'
            y = self.base(x) + lora
            return torch.addcmul(y, d.to(y.dtype), F.linear(x_, self.base.weight.to(y.dtype)) + lora)
        fast = not torch.is_autocast_enabled(x.device.type) and x.dtype in (torch.float32, torch.float64)
        if not fast:
            u = self.base(x) + F.linear(self.scaling * F.linear(x, A), B)  # W0 x + bias + s·B A x
            d = d.to(u.dtype)
            y = torch.addcmul(u, d, u)  # u + d ⊙ u
            return y if bias is None else y - d * bias.to(u.dtype)  # − d ⊙ bias: the bias is not rescaled
        # Fast: 2 (tokens, out) tensors, not 4 or 5; tests/test_adapters.py::test_dora_fast_forward_is_the_plain_one
        x2 = x.reshape(-1, x.shape[-1])  # (tokens, in): addmm_ below needs a 2-D tensor that is not a view
        u = self.base(x2)  # (tokens, out)
        # u += s·(x Aᵀ) Bᵀ in place: linear's backward does not need its output, and no extra pass is made
        u.addmm_(F.linear(x2, A), B.T, alpha=self.scaling)
        g = 1 + d  # = m / n, in float32 or float64 here
        y = g * u if bias is None else torch.addcmul((1 - g) * bias, g, u)  # g ⊙ u + (1 − g) ⊙ bias
        return y.view(*x.shape[:-1], -1)

    @torch.no_grad()
    def weight_norm(self):
        """n = ‖W0 + s·B A‖ per output row (out,), detached, in float32 (float64 for a float64 adapter)."""
        # No (out, in) temporary, one (out, r) product: tests/test_adapters.py::test_dora_row_norm_form_is_the_direct_norm
        dtype = torch.promote_types(self.A.dtype, torch.float32)
        W0, A, B, s = self.base.weight, self.A.to(dtype), self.B.to(dtype), self.scaling
        device = "cpu" if W0.is_meta else W0.device.type  # autocast knows no meta device (a model built on meta)
        with torch.autocast(device, enabled=False):
            w0_sq = torch.linalg.vector_norm(W0, dim=1, dtype=dtype) ** 2  # (out,)
            # W0 Aᵀ (out, r) in W0's own dtype: a bf16 W0 is not copied to a float32 (out, in) matrix.
            w0_at = F.linear(W0, A.to(W0.dtype)).to(dtype)
            cross = (B * w0_at).sum(1)  # rowsum(B ⊙ W0 Aᵀ) = Σ_j W0_ij (BA)_ij
            square = ((B @ (A @ A.T)) * B).sum(1)  # rowsum(B AAᵀ ⊙ B) = ‖(BA)_i‖²
            return (w0_sq + 2 * s * cross + s * s * square).clamp_min(0).sqrt()

    def delta_weight(self):
        """ΔW = W' − W0 = (m / n) ⊙ (W0 + s·B A) − W0, shaped like base.weight, in float32 (float64 for a
        float64 adapter) even under autocast. Full-rank in general: (m/n − 1) ⊙ W0 is W0 rescaled row by row."""
        dtype = torch.promote_types(self.A.dtype, torch.float32)
        with torch.autocast(self.A.device.type, enabled=False):
            W0 = self.base.weight.to(dtype)
            direction = W0 + self.scaling * (self.B.to(dtype) @ self.A.to(dtype))
            return (self.m.to(dtype) / self.weight_norm()).unsqueeze(1) * direction - W0

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
        return f"rank={self.rank}, alpha={self.alpha}"


def inject(model, rank, targets=TARGETS, **kw):
    """Wrap every nn.Linear named `target` or `*.target` in DoRALinear; return the wrapped names.

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
            raise ValueError(f"{name} is a {type(module).__name__}, not an nn.Linear: DoRALinear adapts y = x W0^T + b "
                             f"with W0 of shape (out, in), which only nn.Linear guarantees (GPT-2's Conv1D stores "
                             f"its weight as (in, out))")
        names.append(name)
    missing = [t for t in targets if not any(name == t or name.endswith("." + t) for name in names)]
    if missing:
        raise ValueError(f"no nn.Linear in the model is named {missing} (or ends with '.<target>')")
    adapters = [DoRALinear(model.get_submodule(name), rank, **kw) for name in names]  # bad arguments: no change made
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
    """Replace every DoRALinear in `model` by its merged nn.Linear, in place; return the model."""
    for name, module in list(model.named_modules()):
        if isinstance(module, DoRALinear):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.merged())
    return model
