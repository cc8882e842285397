"""LoRA (Hu et al. 2021): a frozen nn.Linear plus a trainable low-rank update on the activation side.

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
    model.to(torch.bfloat16) after injection converts A and B too, as it converts every parameter:
    convert the model first, then inject.
    Cost and dtypes in detail: docs/methods.md#lora
    """

    # What the tools know of LoRA (support/adapters.py reads it; the layer itself needs none of it): the range of
    # each setting, train.py's defaults, and the file: adapter_config.json's fields, adapter_model.safetensors' keys.
    settings = {"rank": "int >= 1", "alpha": "nonzero", "dropout": "[0, 1)"}
    defaults = {"lr": 1e-4, "dropout": 0.05}  # the PERA paper's
    peft_type, peft_fields = "LORA", {"r": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout"}  # PEFT's own
    peft_constants = {"bias": "none", "init_lora_weights": True, "use_dora": False, "use_rslora": False,
                      "rank_pattern": {}, "alpha_pattern": {}}
    tensor_keys = {"A": "lora_A.weight", "B": "lora_B.weight"}  # parameter -> key, after the layer's name

    def __init__(self, base, rank, *, alpha=None, dropout=0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
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
        self.train(base.training)  # a layer of a model in eval mode stays in eval mode: no dropout

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
        """The most rank(ΔW) can be: r (eval.py's rank report)."""
        return self.rank

    def extra_repr(self):
        return f"rank={self.rank}, alpha={self.alpha}"


def inject(model, rank, *, targets=TARGETS, adapter=LoRALinear, **kw):
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
    """Replace every LoRALinear in `model` by its merged nn.Linear, in place; return the model."""
    for name in [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]:
        model.set_submodule(name, model.get_submodule(name).merged())
    return model
