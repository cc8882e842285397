"""Checkpoint files: the safetensors format, read and written, and a model folder's (sharded) tensors.

A .safetensors file is an 8-byte little-endian header length n, n bytes of JSON, then the raw tensor
bytes. The header maps each tensor's name to {"dtype", "shape", "data_offsets": [begin, end]} (byte
offsets into the data that follows the header); an optional "__metadata__" entry holds string pairs.
The format's specification: https://github.com/huggingface/safetensors (its README, "Format").
A large model is split into shards, named by `model.safetensors.index.json`'s "weight_map".
"""
import json
import math
import mmap
import os
from pathlib import Path

import torch

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}


def load_safetensors(path) -> dict:
    """Read every tensor of a .safetensors file, memory-mapped (no copy until a tensor is written)."""
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise ValueError(f"{path}: not a safetensors file (only {size} bytes)")
        buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # private pages: writable, file untouched
    n = int.from_bytes(buffer[:8], "little")
    if n > size - 8:
        raise ValueError(f"{path}: corrupt safetensors file (header of {n} bytes in a {size}-byte file; truncated?)")
    try:
        header = json.loads(bytes(buffer[8:8 + n]))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: corrupt safetensors header ({e})") from None
    except RecursionError:
        raise ValueError(f"{path}: corrupt safetensors header (JSON nested too deeply)") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    start, end_of_data = 8 + n, size - 8 - n
    tensors, spans = {}, []
    for name, info in header.items():
        try:
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            shape, (begin, end) = list(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: corrupt or unsupported header entry for tensor '{name}': {info}") from None
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape + [begin, end]):
            raise ValueError(f"{path}: tensor '{name}' has shape {shape} and data_offsets {info['data_offsets']}: "
                             f"expected integers >= 0")
        numel = math.prod(shape)
        if end - begin != numel * dtype.itemsize or not 0 <= begin <= end <= end_of_data:
            raise ValueError(f"{path}: tensor '{name}' has data_offsets {[begin, end]} that do not fit its "
                             f"shape {shape} {info['dtype']} or the file ({end_of_data} data bytes; truncated?)")
        spans.append((begin, end, name))
        if numel == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
        else:
            tensors[name] = torch.frombuffer(buffer, dtype=dtype, count=numel, offset=start + begin).view(shape)
    spans.sort()
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):  # two tensors that share bytes: a forged file
        if begin < end:
            raise ValueError(f"{path}: tensors '{first}' and '{second}' overlap (their data_offsets share bytes)")
    return tensors


def check_tensors(tensors: dict, path):
    """Every tensor of a file whose tensors are weights: of a float dtype, and finite (no NaN, no inf) in float32,
    the dtype adapters compute in; else an error naming the file and the first tensor that is not. Called once,
    where the file is loaded."""
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise ValueError(f"{path}: tensor '{name}' has dtype {t.dtype}, expected floating point")
        # float32's range too: what float64 holds beyond it is inf there (no float32 copy of a bf16 or fp16 tensor,
        # whose range is inside float32's: loading a bf16 checkpoint stays within its own size, test_bench.py)
        chunks = t.reshape(-1).split(1 << 22)  # a few MB of temporaries at a time, whatever the tensor's size
        wide = t.dtype == torch.float64 and any(bool(c.abs().max() > torch.finfo(torch.float32).max) for c in chunks)
        if wide or not all(bool(torch.isfinite(c).all()) for c in chunks):
            bad = t[~torch.isfinite(t.float())]
            raise ValueError(f"{path}: tensor '{name}' holds {len(bad)} non-finite value(s) (the first: "
                             f"{bad[0].item()})")


def save_safetensors(tensors: dict, path, metadata: dict | None = None):
    """Write tensors to a .safetensors file atomically (a temporary file, then a rename)."""
    path = Path(path)
    header, offset, arrays = {}, 0, []
    for name, t in tensors.items():
        if t.dtype not in DTYPE_NAMES:
            raise ValueError(f"cannot save tensor '{name}' of dtype {t.dtype} in safetensors")
        t = t.detach().to("cpu").contiguous()
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        arrays.append(t.reshape(-1).view(torch.uint8))
        offset += nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # pad so the data starts 8-byte aligned
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(len(blob).to_bytes(8, "little"))
            f.write(blob)
            for a in arrays:
                f.write(memoryview(a.numpy()))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# A model folder holds one model.safetensors, or shards listed in model.safetensors.index.json.

def load_checkpoint_tensors(path: Path) -> dict:
    """All tensors of a model folder: model.safetensors, or the shards named by model.safetensors.index.json."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise ValueError(f"{index}: not a valid safetensors index ({e})") from None
        except RecursionError:
            raise ValueError(f"{index}: not a valid safetensors index (JSON nested too deeply)") from None
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) and f == Path(f).name and f.endswith(
                ".safetensors") for f in weight_map.values()):
            raise ValueError(f"{index}: not a valid safetensors index ('weight_map' must map each tensor to the "
                             f"name of a .safetensors file in {path})")
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            if not (path / shard).is_file():
                raise FileNotFoundError(f"{index}: shard {shard} is missing")
            for k, t in load_safetensors(path / shard).items():
                if weight_map.get(k) != shard:
                    raise ValueError(f"{path / shard}: tensor '{k}' is not listed for this shard in {index.name}")
                tensors[k] = t
        return tensors
    single = path / "model.safetensors"
    if not single.is_file():
        raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json")
    return load_safetensors(single)
