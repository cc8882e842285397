"""Exercise 5's reference: autograd through pera.py's ΔW, ∂⟨G, ΔW⟩/∂h (ΔW is linear in h: any h will do)."""
import torch

import pera
from exercises.reference import linear, using


def h_gradient(A, B, G, alpha, terms="all"):
    layer = pera.PERALinear(linear(torch.empty_like(G, device="meta")), A.shape[0], alpha=alpha, terms=terms)
    h = torch.zeros(layer.h.shape, dtype=A.dtype, requires_grad=True)
    with torch.enable_grad():
        return torch.autograd.grad((G * using(layer, A=A, B=B, h=h).delta_weight()).sum(), h)[0]
