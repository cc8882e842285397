"""Wrong on purpose (exercise 6): the row norm is not detached, so A and B also learn through the norm, which
DoRA (§4.3) and PEFT leave out. The forward's values are right; its gradients are not."""
import torch


def row_norm(W0, A, B, alpha):
    s = alpha / A.shape[0]
    W0_A = W0 @ A.T  # (out, r)
    square = torch.linalg.vector_norm(W0, dim=1) ** 2 + 2 * s * (B * W0_A).sum(1) + s * s * ((B @ (A @ A.T)) * B).sum(1)
    return square.clamp_min(0).sqrt()


def forward(x, W0, bias, A, B, m, alpha):
    g = m / row_norm(W0, A, B, alpha)  # BUG: row_norm(...).detach()
    u = x @ W0.T + alpha / A.shape[0] * (x @ A.T) @ B.T
    return g * u + bias
