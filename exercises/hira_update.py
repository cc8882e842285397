"""Exercise 3 (medium, about 30 minutes): HiRA's update, and its forward in one matmul.

HiRA (HiRA paper, Eq. 6) multiplies a low-rank product elementwise with the frozen weight W0 (out, in):

    ΔW = W0 ⊙ (B A),     y = x (W0 + ΔW)ᵀ + bias,

with A (r, in), B (out, r), bias (out,) and x (..., in). The paper's A (out, r) is our B, its B our A. There
is no alpha / r. Because of ⊙, rank(ΔW) ≤ rank(W0) · r (the paper's inequality 4), where LoRA's is r; and
with W0 replaced by a matrix of ones, HiRA is LoRA (§4.3).

delta_weight(W0, A, B) returns ΔW (out, in).
forward(x, W0, bias, A, B) returns y (..., out) with ONE matmul on the tokens x: HiRA has to build the
(out, in) matrix ΔW anyway, so base and update can share the matmul (one forward, two backward, instead
of two and three).

Grade it: python -m exercises.grade hira_update
"""
import torch


def delta_weight(W0, A, B):
    raise NotImplementedError


def forward(x, W0, bias, A, B):
    raise NotImplementedError
