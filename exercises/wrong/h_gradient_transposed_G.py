"""Wrong on purpose (exercise 5): G used transposed, (b_i ⊙ b_j)ᵀ Gᵀ (a_i ⊙ a_j): only a square layer accepts it."""
import torch


def h_gradient(A, B, G, alpha, terms="all"):
    r = A.shape[0]
    i, j = torch.triu_indices(r, r, offset=int(terms == "cross"))
    if terms == "square":
        i = j = torch.arange(r)
    bb, aa = B[:, i] * B[:, j], A[i] * A[j]  # (out, P), (P, in)
    return alpha / r * (bb * (G.T @ aa.T)).sum(0)  # BUG: G @ aa.T (out, P), not G.T @ aa.T
