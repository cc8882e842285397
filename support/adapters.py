"""The five methods behind one name each, and their files on disk in Hugging Face PEFT's layout.

`adapter_model.safetensors` + `adapter_config.json`: for LoRA, HiRA and DoRA the key names and config
fields are PEFT's own (`base_model.model.<layer>.lora_A.weight`, `peft_type: "LORA"`; `...hira_A`,
`peft_type: "HIRA"`; DoRA is PEFT's LoRA with `use_dora: true` and a `...lora_magnitude_vector`), so
`PeftModel.from_pretrained` loads them onto the transformers model. PEFT has no PERA and no LoRAN; their
files follow the same style: `peft_type: "PERA"` with `pera_A`, `pera_B`, `pera_h`, and
`peft_type: "LORAN"` with `loran_A`, `loran_B` and the `amplitude` and `omega` fields.
"""
import hashlib
import json
import os
from pathlib import Path

import dora
import hira
import lora
import loran
import pera
from support.safetensors_io import load_safetensors, save_safetensors

METHODS = {"lora": lora, "hira": hira, "pera": pera, "dora": dora, "loran": loran}
CLASSES = {"lora": lora.LoRALinear, "hira": hira.HiRALinear, "pera": pera.PERALinear, "dora": dora.DoRALinear,
           "loran": loran.LoRANLinear}
PEFT_TYPES = {"lora": "LORA", "hira": "HIRA", "pera": "PERA", "dora": "LORA", "loran": "LORAN"}  # DoRA: LORA + use_dora
# our parameter name -> the suffix PEFT gives it after the layer's name
TENSOR_KEYS = {
    "lora": {"A": "lora_A.weight", "B": "lora_B.weight"},
    "hira": {"A": "hira_A", "B": "hira_B"},
    "pera": {"A": "pera_A", "B": "pera_B", "h": "pera_h"},
    "dora": {"A": "lora_A.weight", "B": "lora_B.weight", "m": "lora_magnitude_vector"},
    "loran": {"A": "loran_A", "B": "loran_B"},
}
DEFAULT_TARGETS = lora.TARGETS  # the same tuple in all five adapter files (tests/test_shared_parts.py)


def settings(method, rank, targets=DEFAULT_TARGETS, alpha=None, dropout=0.0, terms="all", degree=2, init="code",
             h_lr_ratio=1.0, amplitude=5e-4, omega=1e3) -> dict:
    """Everything that defines an adapter's shape and function, checked once; for PERA also how it was
    trained (its init and h's learning-rate ratio), which a reader of the adapter needs to know."""
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}' (methods: {', '.join(METHODS)})")
    spec = {"method": method, "rank": int(rank), "targets": list(targets), "dropout": float(dropout)}
    if method != "hira":  # HiRA has no alpha / r scaling
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
    kw = {k: spec[k] for k in ("alpha", "dropout", "terms", "degree", "init", "amplitude", "omega") if k in spec}
    return METHODS[spec["method"]].inject(model, spec["rank"], targets=tuple(spec["targets"]), **kw)


def merge(model, method):
    return METHODS[method].merge(model)


def adapter_layers(model, method) -> dict:
    return {name: m for name, m in model.named_modules() if isinstance(m, CLASSES[method])}


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
    else:
        config.update(pera_alpha=spec["alpha"], pera_dropout=spec["dropout"], terms=spec["terms"],
                      degree=spec["degree"], init=spec["init"], h_lr_ratio=spec["h_lr_ratio"])
    return config


def settings_from_peft_config(config: dict, path="adapter_config.json") -> dict:
    method = {v: k for k, v in PEFT_TYPES.items() if k != "dora"}.get(config.get("peft_type"))
    if method is None:
        raise ValueError(f"{path}: peft_type {config.get('peft_type')!r} is not one of "
                         f"{', '.join(dict.fromkeys(PEFT_TYPES.values()))}")
    if method == "lora" and config.get("use_dora"):
        method = "dora"
    for key in ("r", "target_modules"):
        if key not in config:
            raise ValueError(f"{path}: missing field '{key}'")
    if method in ("lora", "dora") and (config.get("use_rslora") or config.get("bias", "none") != "none"):
        raise ValueError(f"{path}: rsLoRA and bias training are not implemented here")
    targets = config["target_modules"]
    targets = [targets] if isinstance(targets, str) else targets
    prefix = "lora" if method == "dora" else method  # PEFT's DoRA keeps LoRA's field names
    return settings(method, config["r"], targets, alpha=config.get(f"{prefix}_alpha"),
                    dropout=config.get(f"{prefix}_dropout", 0.0), terms=config.get("terms", "all"),
                    degree=config.get("degree", 2), init=config.get("init", "code"),
                    h_lr_ratio=config.get("h_lr_ratio", 1.0), amplitude=config.get("amplitude", 5e-4),
                    omega=config.get("omega", 1e3))


def save_adapter(model, folder, spec: dict, base_model: str):
    """Write adapter_model.safetensors and adapter_config.json into folder, each atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, layer in adapter_layers(model, spec["method"]).items():
        for ours, theirs in TENSOR_KEYS[spec["method"]].items():
            tensors[f"base_model.model.{name}.{theirs}"] = getattr(layer, ours).detach().float()
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
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_file}: invalid JSON ({e})") from None
    tensors = load_safetensors(folder / "adapter_model.safetensors")
    inject(model, spec)
    expected = {}
    for name, layer in adapter_layers(model, spec["method"]).items():
        for ours, theirs in TENSOR_KEYS[spec["method"]].items():
            expected[f"base_model.model.{name}.{theirs}"] = getattr(layer, ours)
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


def digest(folder):
    """The SHA-256 of an adapter's tensors file: which adapter this is, wherever it is copied."""
    h = hashlib.sha256()
    with open(Path(folder) / "adapter_model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
