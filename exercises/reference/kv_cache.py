"""Exercise 7's reference: model.py's Attention.forward with its KVCache, on q, k and v given directly.

The layer's input is q, k and v side by side; q_proj, k_proj and v_proj each select their part of it, o_proj
returns the heads' outputs, and RoPE is turned off (cos = 1, sin = 0). What remains is model.py's cache
update and attention, run as they run in generate().
"""
import torch

from model import Attention, Config, KVCache


def decode_step(q, k, v, cache_k, cache_v, length):
    batch, nh, _, hd = q.shape
    nkv, max_len = k.shape[1], cache_k.shape[2]
    d = (nh + 2 * nkv) * hd  # the input [q | k | v] of one token
    config = Config(vocab_size=1, hidden_size=d, intermediate_size=1, num_hidden_layers=1, num_attention_heads=nh,
                    num_key_value_heads=nkv, head_dim=hd)
    attention = Attention(config).to(q.dtype)
    eye = torch.eye(d, dtype=q.dtype)
    with torch.no_grad():
        attention.q_proj.weight.copy_(eye[:nh * hd])
        attention.k_proj.weight.copy_(eye[nh * hd:(nh + nkv) * hd])
        attention.v_proj.weight.copy_(eye[(nh + nkv) * hd:])
        attention.o_proj.weight.copy_(eye[:, :nh * hd])
    cache = KVCache(config, batch, max_len, q.dtype, q.device)
    cache.k[0], cache.v[0], cache.length = cache_k, cache_v, length
    x = torch.cat([t.transpose(1, 2).reshape(batch, 1, -1) for t in (q, k, v)], dim=-1)  # (batch, 1, d)
    cos, sin = torch.ones(1, 1, 1, hd, dtype=q.dtype), torch.zeros(1, 1, 1, hd, dtype=q.dtype)
    y = attention(x, cos, sin, None, cache.layer(0))[..., :nh * hd]  # (batch, 1, nh * hd)
    cache_k.copy_(cache.k[0])
    cache_v.copy_(cache.v[0])
    return y.view(batch, 1, nh, hd).transpose(1, 2)  # (batch, nh, 1, hd)
