"""Exercise 7 (hard, about 60 minutes): one decode step of attention with a KV cache.

While a model generates, each new token attends to itself and every earlier token. The keys and values of
the earlier ones never change, so they are kept in a cache, and a step computes only the new token's
(Attention Is All You Need, Vaswani et al. 2017, Eq. 1):

    out = softmax(q Kᵀ / √hd) V,     K, V: the keys and values of positions 0 .. length,

decode_step(q, k, v, cache_k, cache_v, length) gets
    q (batch, nh, 1, hd): the new token's query, one per head;
    k, v (batch, nkv, 1, hd): its key and value;
    cache_k, cache_v (batch, nkv, max_len, hd): positions 0 .. length − 1 filled, the rest left over;
writes k and v at position `length` of the caches (in place, nothing else changed), and returns the
attention output (batch, nh, 1, hd). Grouped-query attention: nh is a multiple of nkv, and query head i
reads key/value head i // (nh / nkv). No mask is needed: the new token sees every position up to its own.

Grade it: python -m exercises.grade kv_cache
"""
import torch


def decode_step(q, k, v, cache_k, cache_v, length):
    raise NotImplementedError
