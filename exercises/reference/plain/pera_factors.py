"""Exercise 4, solved plainly: PERA's expanded factors B̂ = [B, b_i ⊙ b_j], Â = [A; h_ij (a_i ⊙ a_j)]."""
import torch


def expanded_factors(A, B, h, terms="all"):
    r = A.shape[0]
    if terms == "square":
        i = j = torch.arange(r)
    else:
        i, j = torch.triu_indices(r, r, offset=1 if terms == "cross" else 0)
    B_hat = torch.cat([B, B[:, i] * B[:, j]], dim=1)  # (out, r + P)
    A_hat = torch.cat([A, h[:, None] * A[i] * A[j]], dim=0)  # (r + P, in)
    return B_hat, A_hat
