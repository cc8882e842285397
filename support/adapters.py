"""The methods behind one name each, and their files on disk in Hugging Face PEFT's layout.

`adapter_model.safetensors` + `adapter_config.json`: for LoRA, HiRA and DoRA the key names and config
fields are PEFT's own (`base_model.model.<layer>.lora_A.weight`, `peft_type: "LORA"`; `...hira_A`,
`peft_type: "HIRA"`; DoRA is PEFT's LoRA with `use_dora: true` and a `...lora_magnitude_vector`), so
`PeftModel.from_pretrained` loads them onto the transformers model. PEFT has no PERA and no LoRAN; their
files follow the same style: `peft_type: "PERA"` with `pera_A`, `pera_B`, `pera_h`, and
`peft_type: "LORAN"` with `loran_A`, `loran_B` and the `amplitude` and `omega` fields; HiLoRA (hira.py with
a LoRA part) `peft_type: "HILORA"` with HiRA's `hira_A`, `hira_B` and LoRA's `lora_A.weight`, `lora_B.weight`,
`r` (r1), `lora_r` (r2), `lora_alpha` (null at r2 = 0) and `hilora_dropout`; a part of rank 0 has no tensors.
"""
import hashlib
import json
import math
import os
from pathlib import Path

import torch
import torch.nn as nn

import dora
import hira
import lora
import loran
import pera
from support import cli
from support.safetensors_io import check_tensors, load_safetensors, save_safetensors

METHODS = {"lora": lora, "hira": hira, "pera": pera, "dora": dora, "loran": loran, "hilora": hira}
CLASSES = {"lora": lora.LoRALinear, "hira": hira.HiRALinear, "pera": pera.PERALinear, "dora": dora.DoRALinear,
           "loran": loran.LoRANLinear, "hilora": hira.HiRALinear}
PEFT_TYPES = {"lora": "LORA", "hira": "HIRA", "pera": "PERA", "dora": "LORA", "loran": "LORAN",
              "hilora": "HILORA"}  # DoRA: LORA + use_dora
# our parameter name -> the suffix PEFT gives it after the layer's name
TENSOR_KEYS = {
    "lora": {"A": "lora_A.weight", "B": "lora_B.weight"},
    "hira": {"A": "hira_A", "B": "hira_B"},
    "pera": {"A": "pera_A", "B": "pera_B", "h": "pera_h"},
    "dora": {"A": "lora_A.weight", "B": "lora_B.weight", "m": "lora_magnitude_vector"},
    "loran": {"A": "loran_A", "B": "loran_B"},
    "hilora": {"A": "hira_A", "B": "hira_B", "lora_A": "lora_A.weight", "lora_B": "lora_B.weight"},
}
DEFAULT_TARGETS = lora.TARGETS  # the same tuple in all five adapter files (tests/test_shared_parts.py)


def settings(method, rank, targets=DEFAULT_TARGETS, alpha=None, dropout=0.0, terms="all", degree=2, init="code",
             h_lr_ratio=1.0, amplitude=5e-4, omega=1e3, lora_rank=0) -> dict:
    """Everything that defines an adapter's shape and function, checked once; for PERA also how it was
    trained (its init and h's learning-rate ratio), which a reader of the adapter needs to know."""
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}' (methods: {', '.join(METHODS)})")
    spec = {"method": method, "rank": int(rank), "targets": list(targets), "dropout": float(dropout)}
    if method == "hilora":  # rank is r1 (the Hadamard part); alpha scales the LoRA part, alpha / r2
        if alpha is not None and not lora_rank:
            raise ValueError(f"alpha ({alpha}) scales HiLoRA's LoRA part, alpha / lora_rank: none at lora_rank 0")
        alpha = float(alpha if alpha is not None else lora_rank) if lora_rank else None
        spec.update(lora_rank=int(lora_rank), alpha=alpha)
    elif method != "hira":  # HiRA has no alpha / r scaling
        spec["alpha"] = float(alpha if alpha is not None else rank)
    if method == "pera":
        if init not in pera.INITS:
            raise ValueError(f"unknown PERA init '{init}' (inits: {', '.join(pera.INITS)})")
        spec.update(terms=terms, degree=int(degree), init=init, h_lr_ratio=float(h_lr_ratio))
    if method == "loran":
        spec.update(amplitude=float(amplitude), omega=float(omega))
    return spec


def inject(model, spec: dict) -> list:
    """Wrap the target linears of `model` with the method's adapter; freeze everything else."""
    kw = {k: spec[k] for k in ("alpha", "dropout", "terms", "degree", "init", "amplitude", "omega", "lora_rank")
          if k in spec}
    return METHODS[spec["method"]].inject(model, spec["rank"], targets=tuple(spec["targets"]), **kw)


def merge(model, method):
    return METHODS[method].merge(model)


def adapter_layers(model, method) -> dict:
    return {name: m for name, m in model.named_modules() if isinstance(m, CLASSES[method])}


def file_tensors(model, method) -> dict:
    """The adapter's parameters by their key in adapter_model.safetensors; a part of rank 0 (HiLoRA's) has none."""
    return {f"base_model.model.{name}.{theirs}": getattr(layer, ours)
            for name, layer in adapter_layers(model, method).items()
            for ours, theirs in TENSOR_KEYS[method].items() if getattr(layer, ours) is not None}


def peft_config(spec: dict, base_model: str) -> dict:
    """adapter_config.json: PEFT's fields for its own types; the same style for PERA and LoRAN."""
    method = spec["method"]
    config = {"peft_type": PEFT_TYPES[method], "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
              "r": spec["rank"], "target_modules": spec["targets"], "inference_mode": True, "fan_in_fan_out": False,
              "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None}
    if method in ("lora", "dora"):
        config.update(lora_alpha=spec["alpha"], lora_dropout=spec["dropout"], bias="none", init_lora_weights=True,
                      use_dora=method == "dora", use_rslora=False, rank_pattern={}, alpha_pattern={})
    elif method == "hira":
        config.update(hira_dropout=spec["dropout"], init_weights=True, rank_pattern={})
    elif method == "loran":
        config.update(loran_alpha=spec["alpha"], loran_dropout=spec["dropout"], amplitude=spec["amplitude"],
                      omega=spec["omega"])
    elif method == "hilora":
        config.update(lora_r=spec["lora_rank"], lora_alpha=spec["alpha"], hilora_dropout=spec["dropout"])
    else:
        config.update(pera_alpha=spec["alpha"], pera_dropout=spec["dropout"], terms=spec["terms"],
                      degree=spec["degree"], init=spec["init"], h_lr_ratio=spec["h_lr_ratio"])
    return config


# The adapter_config.json fields read here, and what each must be: a range or the choices ({p}: the method's
# prefix, PEFT's "lora" for DoRA; alpha may be null, which means r)
FIELDS = {"r": cli.POSITIVE_INT, "{p}_alpha": cli.NONZERO, "{p}_dropout": cli.DROPOUT}
METHOD_FIELDS = {"pera": {"degree": cli.Number(int, low=2), "h_lr_ratio": cli.POSITIVE, "terms": pera.TERMS,
                          "init": pera.INITS},
                 "loran": {"amplitude": cli.FINITE, "omega": cli.FINITE},
                 "hilora": {"r": cli.COUNT, "lora_r": cli.COUNT, "lora_alpha": cli.NONZERO}}  # r1 = 0: LoRA


def settings_from_peft_config(config: dict, path="adapter_config.json") -> dict:
    """The settings of an adapter_config.json, each field checked: a wrong one is an error naming it."""
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object of adapter settings, got a {type(config).__name__}")
    method = {v: k for k, v in PEFT_TYPES.items() if k != "dora"}.get(config.get("peft_type"))
    if method is None:
        raise ValueError(f"{path}: peft_type {config.get('peft_type')!r} is not one of "
                         f"{', '.join(dict.fromkeys(PEFT_TYPES.values()))}")
    if method == "lora" and config.get("use_dora"):
        method = "dora"
    for key in ("r", "target_modules") + (("lora_r",) if method == "hilora" else ()):
        if key not in config:
            raise ValueError(f"{path}: missing field '{key}'")
    if method in ("lora", "dora") and (config.get("use_rslora") or config.get("bias", "none") != "none"):
        raise ValueError(f"{path}: rsLoRA and bias training are not implemented here")
    prefix = "lora" if method == "dora" else method  # PEFT's DoRA keeps LoRA's field names
    for key, expected in {**FIELDS, **METHOD_FIELDS.get(method, {})}.items():
        key, value = key.format(p=prefix), config.get(key.format(p=prefix))
        if key not in config or (key.endswith("_alpha") and value is None):
            continue
        if not (expected.ok(value) if isinstance(expected, cli.Number) else value in expected):
            raise ValueError(f"{path}: field '{key}' is {json.dumps(value)}, expected "
                             f"{expected if isinstance(expected, cli.Number) else 'one of ' + ', '.join(expected)}")
    targets = config["target_modules"]
    targets = [targets] if isinstance(targets, str) else targets
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"{path}: field 'target_modules' is {json.dumps(config['target_modules'])}, expected a "
                         f"layer name or a list of them")
    alpha = config.get("lora_alpha" if method == "hilora" else f"{prefix}_alpha")  # HiLoRA: its LoRA part's
    try:  # a value settings() refuses (an unknown init, a lora_alpha beside lora_r 0) is this file's
        return settings(method, config["r"], targets, alpha=alpha,
                        dropout=config.get(f"{prefix}_dropout", 0.0), terms=config.get("terms", "all"),
                        degree=config.get("degree", 2), init=config.get("init", "code"),
                        h_lr_ratio=config.get("h_lr_ratio", 1.0), amplitude=config.get("amplitude", 5e-4),
                        omega=config.get("omega", 1e3), lora_rank=config.get("lora_r", 0))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def save_adapter(model, folder, spec: dict, base_model: str):
    """Write adapter_model.safetensors and adapter_config.json into folder, each atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {key: p.detach().float() for key, p in file_tensors(model, spec["method"]).items()}
    save_safetensors(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    write_json(folder / "adapter_config.json", peft_config(spec, base_model))


def load_adapter(model, folder) -> dict:
    """Inject the adapter described by folder/adapter_config.json into model and load its tensors (strictly)."""
    folder = Path(folder)
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder}: no adapter_config.json")
    try:
        spec = settings_from_peft_config(json.loads(config_file.read_text()), config_file)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{config_file}: invalid JSON ({e})") from None
    tensors = load_safetensors(folder / "adapter_model.safetensors")
    check_tensors(tensors, folder / "adapter_model.safetensors")  # float and finite, once, here
    ranks = {"A": spec["rank"]} if spec["method"] != "hilora" else {"A": spec["rank"], "lora_A": spec["lora_rank"]}
    for part, rank in ranks.items():  # checked before inject builds the adapter: an r that is wrong may be huge
        a_key = TENSOR_KEYS[spec["method"]][part]
        rows = {t.shape[0] for k, t in tensors.items() if k.endswith("." + a_key) and t.dim() == 2}
        if rows != ({rank} if rank else set()):  # a part of rank 0 has no tensors
            raise ValueError(f"{config_file}: {'r' if part == 'A' else 'lora_r'} is {rank}, but the {a_key} tensors "
                             f"of {folder / 'adapter_model.safetensors'} have {sorted(rows) or 'no'} rows")
    inject(model, spec)
    expected = file_tensors(model, spec["method"])
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{folder / 'adapter_model.safetensors'}: does not fit the model: "
                         f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}, "
                         f"unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
    for key, param in expected.items():
        if tensors[key].shape != param.shape:
            raise ValueError(f"{folder / 'adapter_model.safetensors'}: tensor '{key}' has shape "
                             f"{tuple(tensors[key].shape)}, the model needs {tuple(param.shape)}")
        param.data.copy_(tensors[key])
    return spec


def write_json(path, obj):
    """Write JSON atomically: a reader never sees a half-written file."""
    write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")  # NaN is not JSON: a bug, said at once


def write_text(path, text):
    """Write a text file atomically (a temporary file, then a rename); on any failure the old file stands."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# -----------------------------------------------------------------------------
# Memory: an adapter that would not fit is refused before it is built

STATE_BYTES = 16  # per trainable float32 parameter in training: itself, its gradient and AdamW's two moments


def pera_terms(r, terms="all", degree=2) -> int:
    """P, the length of PERA's h: the multisets of 2 to `degree` of the r indices, all of them, the pure
    powers ("square") or those with two or more distinct indices ("cross"); r(r+1)/2, r, r(r-1)/2 at degree 2."""
    every, powers = sum(math.comb(r + k - 1, k) for k in range(2, degree + 1)), (degree - 1) * r
    return {"all": every, "square": powers, "cross": every - powers}[terms]


def trainable_parameters(model, spec: dict) -> int:
    """How many parameters inject(model, spec) adds, from the target layers' shapes alone (nothing is built):
    A (r, in) and B (out, r) per layer, and PERA's h or DoRA's magnitude m (out)."""
    targets = spec["targets"]
    total = 0
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
            total += (spec["rank"] + (spec.get("lora_rank") or 0)) * (m.in_features + m.out_features)  # HiLoRA: r1 + r2
            if spec["method"] == "pera":
                total += pera_terms(spec["rank"], spec["terms"], spec["degree"])
            elif spec["method"] == "dora":
                total += m.out_features
    return total


def free_bytes(device):
    """Memory free for new tensors on device: CUDA's free memory, or the host's MemAvailable; None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        meminfo = Path("/proc/meminfo").read_text()
        return int(next(line.split()[1] for line in meminfo.splitlines() if line.startswith("MemAvailable:"))) * 1024
    except (OSError, StopIteration, ValueError):  # not Linux
        return None


def check_fits(model, spec: dict, device):
    """Refuse (ValueError) an adapter whose training state alone, STATE_BYTES per parameter as the memory planner
    (experiments/bench.py --plan) counts it, is more than the memory free on device; activations come on top."""
    n = trainable_parameters(model, spec)
    free = free_bytes(device)
    if free is not None and n * STATE_BYTES > free:
        raise ValueError(f"--rank {spec['rank']}: the {spec['method']} adapter would need at least "
                         f"{n * STATE_BYTES / 2 ** 30:,.1f} GiB ({n:,} parameters, each with its gradient and AdamW's two "
                         f"moments), and {device} has {free / 2 ** 30:,.1f} GiB free; choose a smaller --rank or "
                         f"fewer --targets")


def digest(folder):
    """The SHA-256 of an adapter's tensors file: which adapter this is, wherever it is copied."""
    h = hashlib.sha256()
    with open(Path(folder) / "adapter_model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
