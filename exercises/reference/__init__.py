"""The reference solutions: each file runs the repository's own implementation behind its exercise's signature.

    lora_forward.py    lora.py: LoRALinear's forward and merged()
    effective_rank.py  eval.py: ranks(), what --rank-report measures
    hira_update.py     hira.py: HiRALinear's delta_weight() and its fused forward
    pera_factors.py    pera.py: PERALinear.expanded_factors()
    h_gradient.py      pera.py: autograd through PERALinear.delta_weight()
    dora_norm.py       dora.py: DoRALinear.weight_norm() and its forward
    kv_cache.py        model.py: Attention's forward with a KVCache

    python -m exercises.grade --solutions exercises/reference     # from the repository's root: all pass

plain/ holds the same seven solved plainly, as a student would write them (plain torch, no repository file);
experiments/mutants.py makes its slips from both.
"""
import torch.nn as nn


def linear(W0, bias=None):
    """An nn.Linear whose weight and bias are the tensors W0 and bias themselves, not copies of them."""
    out, n_in = W0.shape
    base = nn.Linear(n_in, out, bias=bias is not None, device="meta")  # no memory, no random init
    base.weight = nn.Parameter(W0, requires_grad=False)
    if bias is not None:
        base.bias = nn.Parameter(bias, requires_grad=False)
    return base


def using(layer, **tensors):
    """`layer`, computing with these tensors in place of its parameters of the same names: gradients reach them."""
    for name, tensor in tensors.items():
        delattr(layer, name)  # a parameter no more, so a plain tensor may take its place
        setattr(layer, name, tensor)
    return layer
