"""Wrong on purpose (exercise 3): the fused forward adds the bias, and then adds it again."""
import torch.nn.functional as F


def delta_weight(W0, A, B):
    return W0 * (B @ A)


def forward(x, W0, bias, A, B):
    return F.linear(x, W0 + delta_weight(W0, A, B), bias) + bias  # BUG: F.linear has added the bias already
