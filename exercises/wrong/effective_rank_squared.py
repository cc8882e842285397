"""Wrong on purpose (exercise 2): the entropy of the squared singular values σ_i² / Σ σ_j² (the energy), not of
σ_i / Σ σ_j. Equal singular values still give k; any other spectrum gives a different number."""
import torch


def rank(M):
    s = torch.linalg.svdvals(M)
    return int((s > s.max() * max(M.shape) * torch.finfo(M.dtype).eps).sum()) if s.max() > 0 else 0


def effective_rank(M):
    energy = torch.linalg.svdvals(M) ** 2  # BUG: p_i = σ_i / Σ σ_j, not σ_i² / Σ σ_j²
    if energy.sum() == 0:
        return 0.0
    p = energy[energy > 0] / energy.sum()
    return float(torch.exp(-(p * p.log()).sum()))
