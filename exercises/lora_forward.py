"""Exercise 1 (easy, about 20 minutes): LoRA's forward on the activation side, and its merge.

LoRA keeps a linear layer's weight W0 (out, in) frozen and learns a low-rank update (PERA paper, Eq. 8):

    y = x W0ᵀ + bias + x ΔWᵀ,     ΔW = s · B A,     s = alpha / r,

with A (r, in), B (out, r), bias (out,) and x (..., in), any number of leading dimensions.

forward(x, W0, bias, A, B, alpha) returns y (..., out). Compute it on the activation side, the way a layer
that sees thousands of tokens should: x Aᵀ (..., r) first, then B. Never form the (out, in) matrix ΔW,
neither in the forward nor in the backward that autograd derives from it.

merge(W0, A, B, alpha) returns W0 + ΔW (out, in): the plain weight that computes what the adapter does, so
that a merged model costs nothing extra at inference.

Grade it: python -m exercises.grade lora_forward
"""
import torch


def forward(x, W0, bias, A, B, alpha):
    raise NotImplementedError


def merge(W0, A, B, alpha):
    raise NotImplementedError
