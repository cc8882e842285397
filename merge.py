"""Fold a trained adapter into its base model and write a plain Hugging Face model folder.

    python merge.py --adapter runs/pera-r4 --out merged/pera-r4 [--model DIR] [--dtype bf16]

The folder holds the base's config.json, a model.safetensors in which every adapted weight is W0 + ΔW, and
the base's tokenizer files, so transformers (AutoModelForCausalLM.from_pretrained), llama.cpp's converter
or vLLM load it as the plain Llama/Qwen2 model it was: no adapter code, no extra computation. For PERA
that is the paper's "no inference overhead" made concrete: once its polynomial terms are summed into W0,
nothing of PERA is left to run. The folder appears only when complete: it is written as .<out>.partial/
beside it, under a lock, and renamed; a merge stopped by Ctrl-C, SIGTERM or a full disk removes it, and the
next merge into the same --out removes one that a kill left. An adapter is never merged twice into one model.
"""
import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from model import Transformer
from support import adapters, cli, provenance, safety
from support.provenance import check_not_merged
from support.safetensors_io import load_checkpoint_tensors, save_safetensors

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
HF_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# The tokenizer's files and the generation defaults a model folder may hold; each one present is copied as it is.
COPIED_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
                "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json", "generation_config.json")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=cli.HelpFormatter)
    p.add_argument("--adapter", required=True, help="adapter folder (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("--model", default=None, help="base model folder (default: the adapter's base_model_name_or_path)")
    p.add_argument("--out", required=True, help="the merged model folder to write (must not exist yet)")
    p.add_argument("--dtype", choices=list(DTYPES), default=None,
                   help="dtype of the written weights (default: each tensor's dtype in the base checkpoint)")
    return p.parse_args(argv)


def merge_folder(adapter, model_dir, out, dtype=None) -> dict:
    """Write the merged model folder `out` atomically; return what was done. Bad input raises ValueError
    or FileNotFoundError naming the culprit, and then nothing is written."""
    adapter, model_dir, shown = Path(adapter), Path(model_dir), Path(out)
    out = Path(os.path.abspath(out))  # "--out ." or "x/..": the folder that the name stands for
    if not out.name:
        raise ValueError(f"--out {shown}: the root folder cannot be written as a model folder; choose another --out")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {shown} is a file; --out must be a folder, one that does not exist yet")
    if out.parent.exists() and not out.parent.is_dir():
        raise NotADirectoryError(f"--out {shown}: {shown.parent if shown.name == out.name else out.parent} is a file, "
                                 f"not a folder")
    for name in ADAPTER_FILES:  # read whole (hashed): a device or a pipe would never end
        regular_file(adapter / name)
    for name in ("merged_from.json", *COPIED_FILES):  # read or copied when present: never skipped for being odd
        regular_file(model_dir / name)
    # for merged_from.json: the paths as the user gave them, which adapter it is, and what the base already holds
    given = {"adapter": str(adapter), "base_model": str(model_dir), "adapter_sha256": adapters.digest(adapter)}
    merged = provenance.merged_from(model_dir)
    if merged is not None:
        given["base_merged_from"] = merged
        check_not_merged(given)
    # The folder is written as .<out>.partial beside out: a name derived from out, so that the next merge into it
    # finds what a killed one left, and one that holds merge.py's lock file (made first) is merge.py's
    partial = out.with_name(f".{out.name}.partial")
    if partial.exists() and not partial.is_dir() or partial.is_dir() and not (partial / ".lock").exists() and any(
            partial.iterdir()):
        in_the_way = shown.with_name(partial.name) if shown.name == out.name else partial  # as the user spelled it
        raise FileExistsError(f"{in_the_way} is in the way: merge.py writes there, and it was not made by merge.py")
    with safety.folder_lock(partial, "merge.py", shown=shown):
        try:
            if out.exists():
                raise FileExistsError(f"{shown} already exists; choose another --out or remove it")
            for leftover in partial.iterdir():  # an earlier merge's, stopped by a kill
                if leftover.name != ".lock":
                    shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
            info = write_merged(adapter, model_dir, partial, dtype, given)
            os.replace(partial, out)
            (out / ".lock").unlink()
        except BaseException:  # Ctrl-C, SIGTERM, a full disk, bad input: nothing is left behind
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return {**info, "bytes": (out / "model.safetensors").stat().st_size}


def regular_file(path):
    """A file the tools read: one line when it is a folder, or a device, a pipe, a socket (or a link to one)."""
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; it should be a file")
    if path.exists() and not path.is_file():
        raise OSError(f"{path} is not a regular file (a device, a pipe or a socket, or a link to one)")


def write_merged(adapter, model_dir, folder, dtype, given):
    """The merged model's files, written into folder; what merged_from.json says, and the files copied."""
    stored = {k: t.dtype for k, t in load_checkpoint_tensors(model_dir).items()}  # memory-mapped: nothing read yet
    out_dtype = {k: dtype or d for k, d in stored.items()}
    # ΔW is summed into W0 in float32 (merged() does that for any W0 dtype), so when every tensor is written in
    # the dtype it is stored in, the model can be held in that dtype too: the same bytes, half the memory of bf16.
    same = len(set(stored.values()) | set(out_dtype.values())) == 1
    work_dtype = next(iter(stored.values())) if same else torch.float32
    model = Transformer.from_pretrained(model_dir, dtype=work_dtype)
    spec = adapters.load_adapter(model, adapter)
    n_layers = len(adapters.adapter_layers(model, spec["method"]))
    adapters.merge(model, spec["method"])
    tensors = {k: t.to(out_dtype.get(k, dtype or t.dtype)) for k, t in model.state_dict().items()}

    config = json.loads((model_dir / "config.json").read_text())
    recorded = config.get("dtype", config.get("torch_dtype"))
    save_safetensors(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    if dtype is not None and recorded != HF_DTYPE_NAMES[dtype]:
        # the one field that changes: what transformers' dtype="auto" loads the weights as
        config["dtype" if "dtype" in config or "torch_dtype" not in config else "torch_dtype"] = HF_DTYPE_NAMES[dtype]
        adapters.write_json(folder / "config.json", config)
    else:
        shutil.copyfile(model_dir / "config.json", folder / "config.json")  # byte for byte: the plain architecture
    copied = [name for name in COPIED_FILES if (model_dir / name).is_file()]
    for name in copied:
        shutil.copyfile(model_dir / name, folder / name)
    # provenance; deliberately not adapter_config.json, which transformers would take for an adapter to load
    info = {**given, "settings": spec, "merged_layers": n_layers, "dtype": HF_DTYPE_NAMES[dtype] if dtype else "as stored"}
    adapters.write_json(folder / "merged_from.json", info)
    return {**info, "copied_files": copied}


def main(argv=None):
    args = parse_args(argv)
    adapter = Path(args.adapter)
    config_file = adapter / "adapter_config.json"
    with cli.user_input():
        regular_file(config_file)
    if not config_file.is_file():
        sys.exit(f"error: {adapter}: no adapter_config.json (is this an adapter folder from train.py?)")
    with cli.user_input():  # not JSON, not an object, a base that is not a path
        named = provenance.trained_on(adapter)  # read even with --model: a broken file is said here, by name
    base = args.model or named
    if not base:
        sys.exit(f"error: {config_file} names no base model; pass --model DIR")
    if not args.model and not Path(base).is_dir():  # a relative path is read from the current directory
        sys.exit(f"error: {base} (the base model {config_file} names): no such folder; pass --model DIR")
    start = time.time()
    # a full or read-only disk; then a corrupt or mismatched file, an --out that exists
    with cli.user_input(), cli.disk_errors(Path(args.out).parent, lambda: f"nothing was written to {args.out}"):
        info = merge_folder(adapter, base, args.out, DTYPES.get(args.dtype))
    spec = info["settings"]
    try:
        print(f"merged {spec['method']} r={spec['rank']} ({info['merged_layers']} layers) into {base}: wrote {args.out} "
              f"(model.safetensors {info['bytes'] / 2**20:.1f} MiB, {info['dtype']}; config.json"
              + "".join(f", {name}" for name in info["copied_files"]) + f") in {time.time() - start:.1f} s", flush=True)
    except OSError as e:  # `> /dev/full`, `| head -c1`: the folder is written, only this line is lost
        if sys.stdout is not None:  # the interpreter flushes stdout once more at exit: let that write go nowhere
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(f"error: stdout: {e.strerror or e}; the merged model {args.out} was written all the same")
    return info


if __name__ == "__main__":
    cli.run(main)
