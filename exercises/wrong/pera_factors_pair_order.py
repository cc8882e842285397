"""Wrong on purpose (exercise 4): the pairs column by column, (0, 0), (0, 1), (1, 1), (0, 2), ..., so from r = 3
on h_p weighs another term than torch.triu_indices' order says."""
import torch


def expanded_factors(A, B, h, terms="all"):
    r = A.shape[0]
    pairs = [(i, j) for j in range(r) for i in range(j + 1)  # BUG: triu_indices runs row by row, i outer
             if terms == "all" or (terms == "square") == (i == j)]
    A_terms = torch.stack([h[p] * A[i] * A[j] for p, (i, j) in enumerate(pairs)])  # (P, in)
    B_terms = torch.stack([B[:, i] * B[:, j] for i, j in pairs], dim=1)  # (out, P)
    return torch.cat([B, B_terms], dim=1), torch.cat([A, A_terms])
