"""The methods behind one name each, and their files on disk in Hugging Face PEFT's layout.

A method is its adapter class, registered in METHODS with one line: everything the tools know of it is
read from that class (its file keys and PEFT type, its settings and their ranges, train.py's defaults),
and this file never branches on a method's name. Adding a method is its file and one line here
(tests/test_registry.py adds one in a test).

`adapter_model.safetensors` + `adapter_config.json`: for LoRA, HiRA and DoRA the key names and config
fields are PEFT's own (`base_model.model.<layer>.lora_A.weight`, `peft_type: "LORA"`; `...hira_A`,
`peft_type: "HIRA"`; DoRA is PEFT's LoRA with `use_dora: true` and a `...lora_magnitude_vector`), so
`PeftModel.from_pretrained` loads them onto the transformers model. PEFT has no PERA, LoRAN or HiLoRA;
their files follow the same style (each class's `peft_type`, `peft_fields` and `tensor_keys`); a part of
rank 0 (HiLoRA's) has no tensors.
"""
import hashlib
import inspect
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

METHODS = {  # --method -> the adapter class, which describes its method to the tools
    "lora": lora.LoRALinear,
    "hira": hira.HiRALinear,
    "pera": pera.PERALinear,
    "dora": dora.DoRALinear,
    "loran": loran.LoRANLinear,
    "hilora": hira.HiLoRALinear,
}
DEFAULT_TARGETS = lora.TARGETS  # the same tuple in all five adapter files (tests/test_shared_parts.py)
# The ranges the classes' `settings` name, as the checks of a flag or of a file's field (a tuple: the choices)
RANGES = {"int >= 0": cli.COUNT, "int >= 1": cli.POSITIVE_INT, "int >= 2": cli.Number(int, low=2),
          "> 0": cli.POSITIVE, ">= 0": cli.NON_NEGATIVE, "finite": cli.FINITE, "nonzero": cli.NONZERO, "[0, 1)": cli.DROPOUT}
REQUIRED = inspect.Parameter.empty  # the default of a setting that has none


def label(method) -> str:
    """The method's name as its paper writes it: its class's name (LoRALinear: LoRA)."""
    return METHODS[method].__name__.removesuffix("Linear")


def options(method) -> dict:
    """The method's keyword settings (all but rank) and their defaults, from its class's signature."""
    return {p.name: p.default for p in inspect.signature(METHODS[method]).parameters.values() if p.kind == p.KEYWORD_ONLY}


def allowed(method, name, value) -> bool:
    """Whether value is in the range (or among the choices) that the method's class gives setting `name`."""
    expected = METHODS[method].settings[name]
    return value in expected if isinstance(expected, tuple) else RANGES[expected].ok(value)


def expected(method, name) -> str:
    expected = METHODS[method].settings[name]
    return "one of " + ", ".join(expected) if isinstance(expected, tuple) else str(RANGES[expected])


def settings(method, rank, targets=DEFAULT_TARGETS, **kw) -> dict:
    """Everything that defines an adapter's shape and function, checked once by its class (built on the meta
    device: no memory); for PERA also how it was trained (h's learning-rate ratio), which a reader needs."""
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}' (methods: {', '.join(METHODS)})")
    known, kw = options(method), {k: v for k, v in kw.items() if v is not None}  # None: the default
    if unknown := [k for k in kw if k not in known]:
        raise ValueError(f"{', '.join(unknown)}: not a setting of {method} (its settings: {', '.join(known)})")
    if missing := [k for k, v in known.items() if v is REQUIRED and k not in kw]:
        raise ValueError(f"{method} needs {' and '.join(missing)}")
    try:
        layer = METHODS[method](nn.Linear(1, 1, device="meta"), rank, **kw)
    except (RuntimeError, OverflowError) as e:  # a size beyond any memory
        raise ValueError(f"{method} at rank {rank}: {' '.join(str(e).split())}") from None
    spec = {"method": method, "rank": int(rank), "targets": list(targets)}
    for name in sorted(known, key=lambda k: k != "dropout"):  # dropout first, as the files before the registry
        value = layer.alpha if name == "alpha" else kw.get(name, known[name])  # alpha None means a default
        kind = METHODS[method].settings[name]
        spec[name] = value if value is None or isinstance(kind, tuple) else (int if kind[:3] == "int" else float)(value)
    return spec


def inject(model, spec: dict) -> list:
    """Wrap the target linears of `model` with the method's adapter; freeze everything else."""
    kw = {k: spec[k] for k in options(spec["method"])}  # lora.py's inject is every adapter file's (tests/test_shared_parts.py)
    return lora.inject(model, spec["rank"], targets=tuple(spec["targets"]), adapter=METHODS[spec["method"]], **kw)


def merge(model, method):
    """Replace each of the method's adapters in model by its merged nn.Linear, in place; return the model."""
    for name, layer in adapter_layers(model, method).items():
        model.set_submodule(name, layer.merged())
    return model


def adapter_layers(model, method) -> dict:
    return {name: m for name, m in model.named_modules() if type(m) is METHODS[method]}


def file_tensors(model, method) -> dict:
    """The adapter's parameters by their key in adapter_model.safetensors; a part of rank 0 (HiLoRA's) has none."""
    return {f"base_model.model.{name}.{theirs}": getattr(layer, ours)
            for name, layer in adapter_layers(model, method).items()
            for ours, theirs in METHODS[method].tensor_keys.items() if getattr(layer, ours) is not None}


def peft_config(spec: dict, base_model: str) -> dict:
    """adapter_config.json: PEFT's fields, then the method's own (its class's peft_fields, then peft_constants)."""
    cls = METHODS[spec["method"]]
    config = {"peft_type": cls.peft_type, "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
              "r": spec["rank"], "target_modules": spec["targets"], "inference_mode": True, "fan_in_fan_out": False,
              "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None}
    return config | {field: spec[name] for field, name in cls.peft_fields.items() if field != "r"} | cls.peft_constants


def settings_from_peft_config(config: dict, path="adapter_config.json") -> dict:
    """The settings of an adapter_config.json, each field checked: a wrong one is an error naming it."""
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object of adapter settings, got a {type(config).__name__}")
    peft_types = [m for m, cls in METHODS.items() if cls.peft_type == config.get("peft_type")]
    if not peft_types:
        raise ValueError(f"{path}: peft_type {config.get('peft_type')!r} is not one of "
                         f"{', '.join(dict.fromkeys(cls.peft_type for cls in METHODS.values()))}")
    # Methods of one peft_type (PEFT's LoRA and DoRA) differ in a constant (use_dora); absent, it is the first's
    first = METHODS[peft_types[0]].peft_constants
    method = next((m for m in peft_types if all(config.get(k, first.get(k, v)) == v
                                                for k, v in METHODS[m].peft_constants.items() if not k.startswith("init"))),
                  peft_types[0])
    cls = METHODS[method]
    for key, value in cls.peft_constants.items():  # a variant not implemented here (rsLoRA, bias training)
        if key in config and config[key] != value and not key.startswith("init"):  # the init: a fresh adapter's only
            raise ValueError(f"{path}: field '{key}' is {json.dumps(config[key])}, expected {json.dumps(value)} "
                             f"(other values are not implemented here)")
    for key, name in cls.peft_fields.items():
        if key not in config and (name == "rank" or options(method).get(name) is REQUIRED):
            raise ValueError(f"{path}: missing field '{key}'")
        if key in config and not (config[key] is None and name == "alpha") and not allowed(method, name, config[key]):
            raise ValueError(f"{path}: field '{key}' is {json.dumps(config[key])}, expected {expected(method, name)}")
    if "target_modules" not in config:
        raise ValueError(f"{path}: missing field 'target_modules'")
    targets = config["target_modules"]
    targets = [targets] if isinstance(targets, str) else targets
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"{path}: field 'target_modules' is {json.dumps(config['target_modules'])}, expected a "
                         f"layer name or a list of them")
    kw = {name: config[key] for key, name in cls.peft_fields.items() if key in config and name != "rank"}
    try:  # a value the class refuses (a lora_alpha beside lora_r 0, cross terms at rank 1) is this file's
        return settings(method, config["r"], targets, **kw)
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
    cls = METHODS[spec["method"]]
    for name, part in getattr(cls, "rank_parts", {"rank": "A"}).items():  # checked before inject builds the adapter:
        key, field = cls.tensor_keys[part], next(f for f, s in cls.peft_fields.items() if s == name)  # r may be huge
        rows = {t.shape[0] for k, t in tensors.items() if k.endswith("." + key) and t.dim() == 2}
        if rows != ({spec[name]} if spec[name] else set()):  # a part of rank 0 has no tensors
            raise ValueError(f"{config_file}: {field} is {spec[name]}, but the {key} tensors "
                             f"of {folder / 'adapter_model.safetensors'} have {sorted(rows) or 'no'} rows")
    try:  # target_modules that name no layer of this model: the file's
        inject(model, spec)
    except ValueError as e:
        raise ValueError(f"{config_file}: target_modules {spec['targets']}: {e}") from None
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


def trainable_parameters(model, spec: dict) -> int:
    """How many parameters inject(model, spec) adds, from the target layers' shapes alone: each adapter is built
    on the meta device, which holds no memory, and its trainable parameters counted."""
    cls, kw, counts = METHODS[spec["method"]], {k: spec[k] for k in options(spec["method"])}, {}
    total = 0
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and any(name == t or name.endswith("." + t) for t in spec["targets"]):
            if (shape := (m.in_features, m.out_features)) not in counts:
                layer = cls(nn.Linear(*shape, bias=False, device="meta"), spec["rank"], **kw)
                counts[shape] = sum(p.numel() for p in layer.parameters() if p.requires_grad)
            total += counts[shape]
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
    return sha256(Path(folder) / "adapter_model.safetensors")


def sha256(path):
    """A file's SHA-256, read a MiB at a time; a folder or a device (a link to /dev/zero would never end) is refused."""
    h, path = hashlib.sha256(), Path(path)
    if path.exists() and not path.is_file():
        raise ValueError(f"{path}: not a regular file (a folder, a device, a pipe, or a link to one)")
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
