"""Wrong on purpose (exercise 4): h weighs both B̂'s and Â's extra terms, so each term carries h_ij², not h_ij."""
import torch


def expanded_factors(A, B, h, terms="all"):
    r = A.shape[0]
    i, j = torch.triu_indices(r, r, offset=int(terms == "cross"))
    if terms == "square":
        i = j = torch.arange(r)
    A_terms = h[:, None] * A[i] * A[j]  # (P, in)
    B_terms = h * B[:, i] * B[:, j]  # BUG: (out, P), h belongs on the A side only
    return torch.cat([B, B_terms], dim=1), torch.cat([A, A_terms])
