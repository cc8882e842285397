"""DoRA (Liu et al. 2024): weight-decomposed low-rank adaptation. A LoRA update sets the direction of each
output row of the weight, and a trained magnitude vector its length.

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


class DoRALinear(nn.Module):
    """W' = m ⊙ (W0 + s·B A) / ‖W0 + s·B A‖_row,   y = W' x + bias,   s = alpha / r   (DoRA paper Eq. 5).

    W0 (out, in) is the frozen base.weight, A is (r, in), B (out, r) and m (out,). Each output row of W' is
    a direction, that row of W0 + s·BA over its norm n, times a trained magnitude m. Init: A Kaiming-
    uniform, B = 0 and m = ‖W0‖_row, so a fresh adapter is the base layer exactly (m / n = 1; a row of
    zeros, n = 0, has no direction: 1 stands for its n). As the paper suggests (§4.3) and PEFT does, n is
    detached from the gradient: A and B learn through the LoRA path only.

    The forward stays on the activation side and never forms the (out, in) W': with d = m / n − 1 (out,),
        y = base(x) + s·B A x + d ⊙ (W0 x + s·B A x),
    one matmul with W0 and LoRA's two thin ones. While training with dropout it follows PEFT's rule: the
    base sees x and both correction terms see dropout(x), at the cost of a second matmul with W0.
    A, B and m are float32 (float64 for a float64 base) on base.weight's device, even for a bf16 base;
    the norms are computed in float32 and the forward casts to the activation's dtype.
    model.to(torch.bfloat16) after injection converts A, B and m too: convert the model first, then inject.
    Derivations and measurements: docs/methods.md#dora
    """

    # What the tools know of DoRA (support/adapters.py reads it; the layer itself needs none of it): the range of
    # each setting, train.py's defaults, and the file: PEFT's LoRA with use_dora and the magnitude vector.
    settings = {"rank": "int >= 1", "alpha": "nonzero", "dropout": "[0, 1)"}
    defaults = {"lr": 1e-4, "dropout": 0.05}  # the DoRA authors' commonsense runs (LLaMA-7B r32, LLaMA3-8B)
    peft_type, peft_fields = "LORA", {"r": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout"}  # PEFT's own
    peft_constants = {"bias": "none", "init_lora_weights": True, "use_dora": True, "use_rslora": False,
                      "rank_pattern": {}, "alpha_pattern": {}}
    tensor_keys = {"A": "lora_A.weight", "B": "lora_B.weight", "m": "lora_magnitude_vector"}

    def __init__(self, base, rank, *, alpha=None, dropout=0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"DoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 1:
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        if alpha is not None and not (isinstance(alpha, numbers.Real) and math.isfinite(alpha) and alpha != 0):
            raise ValueError(f"alpha must be a finite number other than 0, got {alpha!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.base = base.requires_grad_(False)
        self.rank = rank = int(rank)  # r in the papers
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
        n = self.weight_norm()  # (out,), a constant for autograd; > 0, so that a zero row divides by no zero
        d = (self.m - n) / n  # m / n − 1, small: 1 + d in bf16 would round a young update away
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
            # at least √tiny: an all-zero row (m = n then) divides by no zero, and a fresh adapter is its base
            return (w0_sq + 2 * s * cross + s * s * square).clamp_min(torch.finfo(dtype).tiny).sqrt()

    def delta_weight(self):
        """ΔW = W' − W0 = (m / n) ⊙ (W0 + s·B A) − W0, shaped like base.weight, in float32 (float64 for a
        float64 adapter) even under autocast. Full-rank in general: (m/n − 1) ⊙ W0 is W0 rescaled row by row."""
        dtype = torch.promote_types(self.A.dtype, torch.float32)
        with torch.autocast(self.A.device.type, enabled=False):
            W0 = self.base.weight.to(dtype)
            direction = W0 + self.scaling * (self.B.to(dtype) @ self.A.to(dtype))
            n = self.weight_norm()
            return (self.m.to(dtype) / n).unsqueeze(1) * direction - W0

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
        """The most rank(ΔW) can be: r + the rows whose magnitude moved, since ΔW = (m/n − 1) ⊙ W0 + (m/n) ⊙ s·BA
        and a row with m = n adds no W0 row (eval.py's rank report)."""
        return self.rank + int((self.m / self.weight_norm() != 1).sum())

    def extra_repr(self):
        return f"rank={self.rank}, alpha={self.alpha}"


def inject(model, rank, *, targets=TARGETS, adapter=DoRALinear, **kw):
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
    """Replace every DoRALinear in `model` by its merged nn.Linear, in place; return the model."""
    for name in [n for n, m in model.named_modules() if isinstance(m, DoRALinear)]:
        model.set_submodule(name, model.get_submodule(name).merged())
    return model
