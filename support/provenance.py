"""Which model an adapter was trained on, and which adapters a model folder already has merged in.

An adapter's adapter_config.json names its base (`base_model_name_or_path`); merge.py writes a
merged_from.json beside the merged weights, with the adapter's SHA-256 and, when the base was itself a
merged model, the base's own merged_from.json. An adapter whose SHA-256 appears anywhere in that chain is
already in the weights: merging or applying it again would add its update ΔW twice.
"""
import json
from pathlib import Path

from support import adapters


def read_json(path):
    """A JSON file the user gave; one that is not (not UTF-8, not JSON, nested past the parser) is an error naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise ValueError(f"{path}: not valid JSON (nested too deeply)") from None


def trained_on(adapter):
    """The base model an adapter's adapter_config.json names: a path (as written there), or None."""
    config_file = Path(adapter) / "adapter_config.json"
    config = read_json(config_file)
    if not isinstance(config, dict):
        raise ValueError(f"{config_file}: expected a JSON object of adapter settings, got a {type(config).__name__}")
    base = config.get("base_model_name_or_path")
    if base is not None and not isinstance(base, str):
        raise ValueError(f"{config_file}: field 'base_model_name_or_path' is {json.dumps(base)}, expected the base "
                         f"model's folder (a text) or null; pass --model DIR")
    return base or None


def merged_from(model_dir):
    """What merge.py merged into model_dir (its merged_from.json), or None for a model no adapter was merged into."""
    path = Path(model_dir) / "merged_from.json"
    if not path.exists():
        return None
    merged = read_json(path)
    if not isinstance(merged, dict):
        raise ValueError(f"{path}: expected merge.py's JSON object, got a {type(merged).__name__}")
    return merged


def check_not_merged(given, doing="merging"):
    """Refuse an adapter that the base model already has merged in (its merged_from.json, and theirs before).
    given: the adapter and base_model as the user named them, adapter_sha256, base_merged_from."""
    merged = given["base_merged_from"]
    while isinstance(merged, dict):
        if merged.get("adapter_sha256") == given["adapter_sha256"]:
            raise ValueError(f"{given['base_model']} already has {given['adapter']} merged into it (its "
                             f"merged_from.json: adapter {merged.get('adapter')}, merged into "
                             f"{merged.get('base_model')}); {doing} it again would add its update twice")
        merged = merged.get("base_merged_from")


def check_not_applied(adapter, model_dir, sha256=None):
    """eval.py and generate.py: refuse an adapter (None: none) that model_dir has merged in already."""
    merged = merged_from(model_dir) if adapter is not None else None
    if merged is not None:
        check_not_merged({"adapter": str(adapter), "base_model": str(model_dir), "base_merged_from": merged,
                          "adapter_sha256": sha256 or adapters.digest(adapter)}, doing="applying")
