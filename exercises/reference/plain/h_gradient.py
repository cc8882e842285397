"""Exercise 5, solved plainly: ∂L/∂h_ij = s · (b_i ⊙ b_j)ᵀ G (a_i ⊙ a_j)."""
import torch


def h_gradient(A, B, G, alpha, terms="all"):
    r = A.shape[0]
    if terms == "square":
        i = j = torch.arange(r)
    else:
        i, j = torch.triu_indices(r, r, offset=1 if terms == "cross" else 0)
    BB, AA = B[:, i] * B[:, j], A[i] * A[j]  # (out, P), (P, in)
    return alpha / r * ((BB.T @ G) * AA).sum(dim=1)
