"""Wrong on purpose (exercise 6): the right row norms, taken on V = W0 + s·B A formed as an (out, in) matrix."""
import torch


def row_norm(W0, A, B, alpha):
    V = W0 + alpha / A.shape[0] * B @ A  # BUG: an (out, in) temporary as large as W0
    return torch.linalg.vector_norm(V, dim=1).detach()


def forward(x, W0, bias, A, B, m, alpha):
    g = m / row_norm(W0, A, B, alpha)
    return g * (x @ W0.T + alpha / A.shape[0] * (x @ A.T) @ B.T) + bias
