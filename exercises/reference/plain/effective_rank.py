"""Exercise 2, solved plainly: the numerical rank and the effective rank (Roy & Vetterli 2007)."""
import torch


def rank(M):
    s = torch.linalg.svdvals(M)
    return int((s > s.max() * max(M.shape) * torch.finfo(M.dtype).eps).sum())  # 0 for the zero matrix too


def effective_rank(M):
    s = torch.linalg.svdvals(M)
    s = s[s > 0]
    if len(s) == 0:
        return 0.0
    p = s / s.sum()
    return float(torch.exp(-(p * torch.log(p)).sum()))
