"""Exercise 7, solved plainly: one decode step of grouped-query attention with a KV cache."""
import math

import torch


def decode_step(q, k, v, cache_k, cache_v, length):
    cache_k[:, :, length] = k[:, :, 0]
    cache_v[:, :, length] = v[:, :, 0]
    group = q.shape[1] // k.shape[1]
    keys = cache_k[:, :, :length + 1].repeat_interleave(group, dim=1)  # (batch, nh, length + 1, hd)
    values = cache_v[:, :, :length + 1].repeat_interleave(group, dim=1)
    scores = q @ keys.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (batch, nh, 1, length + 1)
    return torch.softmax(scores, dim=-1) @ values
