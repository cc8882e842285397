"""Exercise 6 (hard, about 60 minutes): DoRA's row norms without an (out, in) temporary, and its forward.

DoRA (DoRA paper, Eq. 5) gives each output row of the weight a direction and a trained length m (out,):

    W' = m ⊙ V / ‖V‖_row,     V = W0 + s · B A,     s = alpha / r,     y = x W'ᵀ + bias,

with W0 (out, in), A (r, in), B (out, r), bias (out,), x (..., in), and ‖V‖_row (out,) the norm of each
row of V. The norm is a constant for autograd (detached, DoRA §4.3): A and B learn through V only.

row_norm(W0, A, B, alpha) returns ‖V‖_row (out,) without forming any (out, in) matrix but W0 itself:
    expand ‖W0_o + s (B A)_o‖² into three terms that (out, r) and (r, r) products give
    (torch.linalg.vector_norm reduces the rows of W0 without a copy).
forward(x, W0, bias, A, B, m, alpha) returns y (..., out) on the activation side, never forming V or W':
    row o of W' is row o of V times m_o / ‖V_o‖, so it scales output o of x Vᵀ.

Grade it: python -m exercises.grade dora_norm
"""
import torch


def row_norm(W0, A, B, alpha):
    raise NotImplementedError


def forward(x, W0, bias, A, B, m, alpha):
    raise NotImplementedError
