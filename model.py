"""A LLaMA-family decoder (Llama 2/3, Qwen2, SmolLM2) that loads Hugging Face checkpoints.

Read it top to bottom: the config, the layers, the model, loading, generation; last, the checks of a
model folder's config.json and tokenizer (the checkpoint files themselves are read by safetensors_io.py).
Module and parameter names are the Hugging Face ones (`model.layers.0.self_attn.q_proj.weight`, ...),
so a checkpoint's tensors load with no mapping table, and adapters target layers by the names the
papers use (q_proj, k_proj, v_proj, up_proj, down_proj).
"""
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from support.safetensors_io import check_tensors, load_checkpoint_tensors

# -----------------------------------------------------------------------------
# Config: one dataclass, filled from the checkpoint's own config.json (read and checked by read_config, at the end).

@dataclass
class Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None  # None: same as num_attention_heads (no grouped-query attention)
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # {"rope_type": "linear" | "llama3", ...}; None is plain RoPE
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2 has biases on q, k, v
    o_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | list | None = 2
    model_type: str = "llama"

    def __post_init__(self):
        self.num_key_value_heads = self.num_key_value_heads or self.num_attention_heads
        self.head_dim = self.head_dim or self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf(cls, d: dict) -> "Config":
        """A Hugging Face config.json's dict, checked by config_from_hf (after the model, where files are read)."""
        return config_from_hf(d)


# -----------------------------------------------------------------------------
# The layers: rotary position embeddings, RMSNorm, attention (with its KV cache), the MLP, the block.

def rope_inv_freq(config: Config) -> torch.Tensor:
    """The rotary frequencies theta^(-2i/d), with Llama 3's or linear scaling applied (float32)."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = config.rope_scaling or {"rope_type": "default"}
    if scaling["rope_type"] == "linear":  # positions divided by `factor`, i.e. frequencies divided by it
        inv_freq = inv_freq / scaling["factor"]
    elif scaling["rope_type"] == "llama3":
        # Llama 3.1: long wavelengths are slowed down by `factor`, short ones kept, the band between
        # interpolated smoothly (wavelengths measured against the original context length).
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
        inv_freq = torch.where(is_medium, smoothed, scaled)
    return inv_freq


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x, cos, sin):
    # Hugging Face's layout: the head dimension is split in two halves (not interleaved pairs).
    return x * cos + rotate_half(x) * sin


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # computed in float32 whatever the weights' dtype, cast back before the scale (as transformers does)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class KVCache:
    """Keys and values of the positions seen so far, preallocated for `max_len` positions, one pair per layer."""

    def __init__(self, config: Config, batch_size, max_len, dtype, device):
        shape = (batch_size, config.num_key_value_heads, max_len, config.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.length = 0  # positions filled; advanced by Transformer.hidden after all layers have written

    def layer(self, i):
        """Layer i's keys and values: its block gets them, not an index (which torch.compile would make a constant)."""
        return LayerCache(self.k[i], self.v[i], self.length)


@dataclass
class LayerCache:
    k: torch.Tensor  # (B, nkv, max_len, hd)
    v: torch.Tensor
    length: int

    def update(self, k, v):
        """Store this call's keys/values; return all keys/values so far."""
        end = self.length + k.size(2)
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


class Attention(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        d = config.hidden_size
        self.q_proj = nn.Linear(d, self.n_head * self.head_dim, bias=config.qkv_bias)
        self.k_proj = nn.Linear(d, self.n_kv_head * self.head_dim, bias=config.qkv_bias)
        self.v_proj = nn.Linear(d, self.n_kv_head * self.head_dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, d, bias=config.o_bias)

    def forward(self, x, cos, sin, mask, cache):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, nkv, T_past + T, hd)
        causal = True if mask is None and T > 1 else False  # a branch: a bool even when torch.compile makes T symbolic
        # grouped-query attention: each group of n_head / n_kv_head query heads shares one key/value head
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           enable_gqa=self.n_kv_head != self.n_head)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # (B, T, nh * hd)
        return self.o_proj(y)


class MLP(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        d, f, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(d, f, bias=bias)
        self.up_proj = nn.Linear(d, f, bias=bias)
        self.down_proj = nn.Linear(f, d, bias=bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class Block(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, mask, cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


# -----------------------------------------------------------------------------
# The model: embeddings, the blocks, the final norm and the output head; then loading and generation.

class Transformer(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.model = nn.ModuleDict(dict(
            embed_tokens=nn.Embedding(config.vocab_size, config.hidden_size),
            layers=nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers)),
            norm=RMSNorm(config.hidden_size, config.rms_norm_eps),
        ))
        # With tied embeddings the output projection IS the embedding matrix: no lm_head.weight exists.
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(config), persistent=False)
        self.grad_checkpoint = False  # True: keep only each block's input, recompute the block in the backward pass

    def hidden(self, idx, attention_mask=None, cache: KVCache | None = None):
        """The final normalised hidden states (B, T, d) of tokens idx (B, T).

        attention_mask (B, T_past + T), 1 for real tokens and 0 for padding, lets a left-padded batch give
        each row exactly what it would get alone: positions count real tokens only, and nothing attends
        to padding. Without it every token is real. With a cache, idx continues the cached positions.
        """
        B, T = idx.shape
        past = cache.length if cache is not None else 0
        if attention_mask is None:
            pos = torch.arange(past, past + T, device=idx.device).expand(B, T)
            mask = None if past == 0 or T == 1 else self._causal_mask(torch.ones(B, past + T, dtype=torch.bool, device=idx.device), T)
        else:
            real = attention_mask.bool()
            if real.shape != (B, past + T):
                raise ValueError(f"attention_mask has shape {tuple(real.shape)}, expected {(B, past + T)}")
            pos = (real.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
            mask = self._causal_mask(real, T)
        freqs = pos[..., None].float() * self.inv_freq  # (B, T, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        x = self.model.embed_tokens(idx)
        cos, sin = emb.cos().to(x.dtype)[:, None], emb.sin().to(x.dtype)[:, None]  # (B, 1, T, hd)
        for i, layer in enumerate(self.model.layers):
            if self.grad_checkpoint and torch.is_grad_enabled() and cache is None:
                # activation checkpointing: memory for one block's activations instead of every block's, for
                # a second forward of each block (non-reentrant: dropout masks and gradients are the same)
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, mask, None, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache.layer(i) if cache is not None else None)
        if cache is not None:
            cache.length += T
        return self.model.norm(x)

    @staticmethod
    def _causal_mask(real, T):
        """(B, 1, T, T_total) boolean: query t sees real keys up to its own position."""
        total = real.size(1)
        q_pos = torch.arange(total - T, total, device=real.device)[:, None]
        k_pos = torch.arange(total, device=real.device)[None, :]
        mask = (k_pos <= q_pos) & real[:, None, :]  # (B, T, T_total)
        mask |= k_pos == q_pos  # a padding query sees itself, so its (unused) row is not all -inf (NaN)
        return mask[:, None]

    def logits(self, h):
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(h, weight)

    def loss(self, h, targets):
        """Summed cross-entropy, in float32, of the tokens targets (N,) predicted from final hidden states h (N, d)."""
        return F.cross_entropy(self.logits(h).float(), targets, reduction="sum")

    def forward(self, idx, attention_mask=None, cache: KVCache | None = None):
        """Logits (B, T, vocab) for tokens idx (B, T); see `hidden` for the mask and the cache."""
        return self.logits(self.hidden(idx, attention_mask, cache))

    def compile(self, dynamic=True, **kwargs):
        """torch.compile every block, adapters included, and loss(); hidden(), forward() and generate() then run
        compiled, and loss() fuses the log-softmax over the vocabulary and its gradient into one loop each.

        The blocks are alike, so they share their compiled code (regional compilation): compiling takes the
        time of one block, not of all of them. Parameter names do not change (no `_orig_mod.` prefix).
        dynamic=True: one code for every batch size and length, which vary from call to call, instead of one
        for the first and one more for the rest. Dropout keeps drawing its masks from torch's generator, as
        in eager mode (inductor's fallback_random), so a compiled run and an eager one are the same run,
        within float32 rounding. Compiling happens at the first call, and again for each new kind of call:
        the first block (its input needs no gradient), no_grad, a KV cache. Measurements: docs/bench.md#compile
        """
        # Floats (an adapter's scaling, eps) stay constants, as eager code has them. A version of the blocks' code per
        # kind of call and of adapter: more than torch's default 8 (past which it runs them eagerly, with a warning)
        # once several models are compiled in one process (bench.py, the tests).
        torch._dynamo.config.specialize_float = True
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        for layer in self.model.layers:
            layer.compile(dynamic=dynamic, options={"fallback_random": True}, **kwargs)
        self.loss = torch.compile(self.loss, dynamic=dynamic, **kwargs)  # log-softmax and its gradient in one loop

    # -------------------------------------------------------------------------
    # Loading a Hugging Face checkpoint folder.

    @classmethod
    def from_pretrained(cls, path, dtype=torch.float32, device="cpu") -> "Transformer":
        """Load config.json and model.safetensors (or a sharded index); strict about every tensor."""
        path = Path(path)
        config_file = path / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{path}: no config.json (is this a Hugging Face model folder?)")
        config = read_config(config_file)
        with torch.device("meta"):  # no memory and no random init for weights about to be replaced
            model = cls(config)
        tensors = load_checkpoint_tensors(path)
        expected = model.state_dict()
        ignored = [k for k in tensors if k.endswith("rotary_emb.inv_freq") or (k == "lm_head.weight" and config.tie_word_embeddings)]
        for k in ignored:  # computed buffers that old checkpoints saved, and a duplicate of tied embeddings
            del tensors[k]
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        if missing:
            raise ValueError(f"{path}: checkpoint is missing {len(missing)} tensor(s): {', '.join(missing[:5])}"
                             + (" ..." if len(missing) > 5 else ""))
        if unexpected:
            raise ValueError(f"{path}: checkpoint has {len(unexpected)} unexpected tensor(s): {', '.join(unexpected[:5])}"
                             + (" ..." if len(unexpected) > 5 else ""))
        for k, t in tensors.items():
            if t.shape != expected[k].shape:
                raise ValueError(f"{path}: tensor '{k}' has shape {tuple(t.shape)}, the config implies {tuple(expected[k].shape)}")
            tensors[k] = t.to(device=device, dtype=dtype) if t.is_floating_point() else t
        check_tensors(tensors, path)  # float, and finite in the dtype the model computes in
        model.load_state_dict(tensors, strict=True, assign=True)
        model.inv_freq = rope_inv_freq(config).to(device)
        return model.eval()

    # -------------------------------------------------------------------------
    # Generation with a KV cache: the prompt once, then one position per new token.

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=0.0, top_k=None, eos_id=None, attention_mask=None,
                 generator=None, on_token=None):
        """idx (B, T) with up to max_new_tokens new tokens appended; greedy when temperature is 0.

        Left-padded prompts with their attention_mask give each row the tokens it would get alone.
        eos_id (an id or a collection of ids) ends a row; finished rows are filled with the (first) end
        token, and generation stops once every row has ended. on_token, if given, is called with each
        step's new ids (B,) as soon as they are chosen (to stream the text).
        """
        B, T = idx.shape
        eos = torch.tensor([eos_id] if isinstance(eos_id, int) else list(eos_id or []), device=idx.device)
        cache = KVCache(self.config, B, T + max_new_tokens, self.model.embed_tokens.weight.dtype, idx.device)
        mask = attention_mask.bool() if attention_mask is not None else None
        finished = torch.zeros(B, dtype=torch.bool, device=idx.device)
        fill = torch.full((B,), eos[0].item() if len(eos) else 0, device=idx.device)
        out, step_input = [idx], idx
        for _ in range(max_new_tokens):
            h = self.hidden(step_input, mask, cache)[:, -1]  # only the last position needs logits
            logits = self.logits(h).float()  # (B, vocab)
            if temperature == 0.0:
                next_id = logits.argmax(-1)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                next_id = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)
            next_id = torch.where(finished, fill, next_id)
            out.append(next_id[:, None])
            if on_token is not None:
                on_token(next_id)
            finished |= torch.isin(next_id, eos)
            if finished.all():
                break
            step_input = next_id[:, None]
            if mask is not None:
                mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.bool, device=idx.device)], dim=1)
        return torch.cat(out, dim=1)


# -----------------------------------------------------------------------------
# Reading a model folder: its config.json checked where it is read (not in the Config above), its tokenizer matched.

def read_config(path) -> Config:
    """The Config of a config.json file; a file this model cannot run is one ValueError that names it."""
    try:
        return config_from_hf(json.loads(Path(path).read_text()))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None
    except RecursionError:
        raise ValueError(f"{path}: invalid JSON (nested too deeply)") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def config_from_hf(d: dict) -> Config:
    """A Hugging Face config.json dict as a Config; anything this file does not implement is an error."""
    if not isinstance(d, dict):
        raise ValueError(f"config: expected a JSON object of the model's settings, got a {type(d).__name__}")
    model_type = d.get("model_type")
    if model_type not in ("llama", "qwen2"):
        raise ValueError(f"config: model_type {model_type!r} is not supported (supported: 'llama', 'qwen2')")

    def positive(v, kind):  # sizes, eps and theta: a JSON true is not 1, and 0 or less breaks the model
        if not isinstance(v, kind) or isinstance(v, bool):
            return False
        return (isinstance(v, int) or math.isfinite(v)) and v > 0

    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if not positive(d.get(key), int):
            raise ValueError(f"config: required field '{key}' is missing or not a positive integer "
                             f"(got {d.get(key)!r})")
    for key, kind in (("num_key_value_heads", int), ("head_dim", int), ("max_position_embeddings", int),
                      ("rms_norm_eps", (int, float))):
        if d.get(key) is not None and not positive(d[key], kind):
            raise ValueError(f"config: field '{key}' is {d[key]!r}, not a positive "
                             f"{'integer' if kind is int else 'finite number'}")
    for key in ("tie_word_embeddings", "attention_bias", "mlp_bias"):
        if d.get(key) is not None and not isinstance(d[key], bool):
            raise ValueError(f"config: field '{key}' is {d[key]!r}, not true or false")
    if d.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config: hidden_act {d['hidden_act']!r} is not supported (only 'silu')")
    if d.get("use_sliding_window"):
        raise ValueError("config: use_sliding_window is true; sliding-window attention is not implemented")
    other_layers = set(d.get("layer_types") or []) - {"full_attention"}
    if other_layers:
        raise ValueError(f"config: layer_types has {sorted(other_layers)}; only 'full_attention' is implemented")
    if d.get("pretraining_tp", 1) not in (1, None):
        raise ValueError(f"config: pretraining_tp={d['pretraining_tp']} is not supported (only 1)")

    # RoPE: older configs write `rope_theta` + `rope_scaling`; transformers >= 5 writes one `rope_parameters` dict.
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise ValueError(f"config: rope_parameters / rope_scaling is {rope!r}, not a JSON object")
    rope = dict(rope)
    theta = rope.pop("rope_theta", d.get("rope_theta", 10000.0))
    if not positive(theta, (int, float)):
        raise ValueError(f"config: rope_theta is {theta!r}, not a positive finite number")
    rope_type = rope.pop("rope_type", rope.pop("type", "default"))
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"config: partial_rotary_factor={rope['partial_rotary_factor']} is not supported")
    required = {"default": [], "linear": ["factor"],
                "llama3": ["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"]}
    if rope_type not in required:
        raise ValueError(f"config: rope type {rope_type!r} is not supported (supported: {', '.join(required)})")
    missing = [k for k in required[rope_type] if k not in rope]
    if missing:
        raise ValueError(f"config: rope type {rope_type!r} needs field(s) {missing}")
    for key in required[rope_type]:
        if not positive(rope[key], int if key == "original_max_position_embeddings" else (int, float)):
            raise ValueError(f"config: rope field '{key}' is {rope[key]!r}, not a positive number")
    if rope_type == "llama3" and rope["high_freq_factor"] <= rope["low_freq_factor"]:
        raise ValueError(f"config: rope high_freq_factor ({rope['high_freq_factor']}) must be above "
                         f"low_freq_factor ({rope['low_freq_factor']})")
    rope_scaling = None if rope_type == "default" else {"rope_type": rope_type, **rope}

    token_id = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0  # noqa: E731
    for key in ("bos_token_id", "eos_token_id"):  # eos: one id or a list of them (Llama 3's instruct models)
        value = d.get(key)
        if not (value is None or token_id(value) or key == "eos_token_id" and isinstance(value, list)
                and value and all(map(token_id, value))):
            raise ValueError(f"config: {key} is {value!r}, expected a token id (an integer >= 0)"
                             + (", a list of them" if key == "eos_token_id" else "") + " or null")

    attention_bias = bool(d.get("attention_bias", False))
    config = Config(
        vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
        num_hidden_layers=d["num_hidden_layers"], num_attention_heads=d["num_attention_heads"],
        num_key_value_heads=d.get("num_key_value_heads"), head_dim=d.get("head_dim"),
        rms_norm_eps=d.get("rms_norm_eps", 1e-6),
        rope_theta=float(theta), rope_scaling=rope_scaling,
        max_position_embeddings=d.get("max_position_embeddings", 2048),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        qkv_bias=model_type == "qwen2" or attention_bias,  # Qwen2 always has q/k/v biases
        o_bias=model_type == "llama" and attention_bias,
        mlp_bias=bool(d.get("mlp_bias", False)),
        bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"), model_type=model_type,
    )
    if config.head_dim < 2 or config.head_dim % 2:  # RoPE rotates pairs of dimensions
        raise ValueError(f"config: head_dim is {config.head_dim} (head_dim, or hidden_size // num_attention_heads); "
                         f"RoPE needs a positive even number")
    if config.num_attention_heads % config.num_key_value_heads:
        raise ValueError(f"config: num_attention_heads ({config.num_attention_heads}) is not a multiple of "
                         f"num_key_value_heads ({config.num_key_value_heads})")
    return config


def check_vocabulary(tokenizer, model, model_dir):
    """Every id the tokenizer can give must have an embedding row; a mismatch would fail deep in F.embedding."""
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"{Path(model_dir) / 'tokenizer.json'}: token ids go up to {tokenizer.vocab_size - 1}, but "
                         f"{Path(model_dir) / 'config.json'} has vocab_size {model.config.vocab_size}: the tokenizer "
                         f"and the model do not belong together")
