"""Exercise 2 (easy, about 20 minutes): the rank and the effective rank of a weight update ΔW.

HiRA and PERA promise a ΔW of higher rank than LoRA's r (HiRA §4.3 and §6.4; PERA's bound 2r + C(r,2)).
Two measures of it, from the singular values σ_1 ≥ σ_2 ≥ ... of a matrix M (rows, cols):

rank(M) returns an int: the number of σ_i above σ_1 · max(rows, cols) · ε, with ε = torch.finfo(M.dtype).eps,
    what rounding leaves of a singular value that is exactly zero.
effective_rank(M) returns a float: exp(−Σ_i p_i log p_i) with p_i = σ_i / Σ_j σ_j over the σ_i > 0 (Roy &
    Vetterli 2007): the exponential of the entropy of the normalised singular values. k equal singular
    values give k; a decaying spectrum gives less than the rank.

The zero matrix (a fresh adapter's ΔW) has rank 0 and effective rank 0. M is float64;
torch.linalg.svdvals gives its singular values.

Grade it: python -m exercises.grade effective_rank
"""
import torch


def rank(M):
    raise NotImplementedError


def effective_rank(M):
    raise NotImplementedError
