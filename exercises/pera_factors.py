"""Exercise 4 (medium, about 45 minutes): PERA's expanded factors, with the square and cross ablations.

PERA (PERA paper, Eq. 9) adds to LoRA's B A the Hadamard products of its own factors:

    ΔW = s · ( B A + Σ_{i ≤ j} h_ij (b_i ⊙ b_j)(a_i ⊙ a_j)ᵀ ) = s · B̂ Â,

with b_i column i of B (out, r), a_i row i of A (r, in), and h (P,) one coefficient per kept pair (i, j),
in torch.triu_indices(r, r) order: (0, 0), (0, 1), ..., (0, r−1), (1, 1), (1, 2), ...
terms="all" keeps every i ≤ j (Eq. 9, P = r(r+1)/2), "square" only i = j (Eq. 10, P = r), "cross" only
i < j (Eq. 11, P = r(r−1)/2, r ≥ 2).

expanded_factors(A, B, h, terms) returns the pair (B̂, Â):

    B̂ = [B, b_i ⊙ b_j]  (out, r + P)        Â = [A; h_ij (a_i ⊙ a_j)]  (r + P, in),

so that B̂ Â is the sum in the brackets (s stays outside), and gradients reach A, B and h. Built once per
step, they make PERA's forward a LoRA of rank r + P, and its merge LoRA's: no inference cost.

Grade it: python -m exercises.grade pera_factors
"""
import torch


def expanded_factors(A, B, h, terms="all"):
    raise NotImplementedError
