"""Rewrite the machine paths in committed results to repository-relative ones (run once; numbers untouched).

    python -m experiments.relative_paths            # rewrites in place, printing each change
    python -m experiments.relative_paths --check    # exit 1 if a tracked JSON file still holds one

Runs made before train.py, eval.py and bench.py wrote paths as the user gave them recorded absolute paths
of the machine they ran on. Each such string becomes what the project's own commands write by default:
the model `checkpoints/<name>`, the data `data/commonsense`, a run's folder (`out`, `adapter`) the folder
the scripts write it to (reproduce.sh: runs/reproduce/<run>; study.sh: results/study/<run>), a bench
`--json` the file itself, a test fixture's base model its folder in tests/fixtures. Only those quoted
strings change, in place; every other byte of the file (every number) stays as it was.
"""
import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MACHINE = re.compile(r"/(?:work|tmp|home)/")


def run_folder(file):
    """Where the script that made this run writes it, from where the run's files are kept now."""
    folder = file.parent.parent if file.parent.name.startswith("eval-") else file.parent  # eval.py's own folder
    parts = folder.relative_to(ROOT).parts
    if parts[:2] == ("results", "reproduce"):
        return "/".join(("runs", *parts[1:]))
    if parts[:2] == ("results", "study"):
        return "/".join(parts)
    raise ValueError(f"{file}: no rule for a run folder here")


def replacement(file, key, value):
    if key in ("out", "adapter"):
        return run_folder(file)
    if key == "json":
        return file.relative_to(ROOT).as_posix()
    if key == "data" and value.rstrip("/").endswith("/data"):
        return "data/commonsense"
    if "/checkpoints/" in value:
        return "checkpoints/" + value.split("/checkpoints/", 1)[1]
    if "/fixtures/models/" in value:
        return "tests/fixtures/models/" + value.split("/fixtures/models/", 1)[1]
    if key == "command":
        return re.sub(r"\S*/bin/python", "python", value).replace("results/peft_roundtrip.py",
                                                                  "-m experiments.peft_roundtrip")
    raise ValueError(f"{file}: no rule for {key!r}: {value!r}")


def machine_strings(node, key=None):
    """(key, string) for every string in a JSON value that holds a machine path."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from machine_strings(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from machine_strings(v, key)
    elif isinstance(node, str) and MACHINE.search(node):
        yield key, node


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only report; exit 1 if a machine path is left")
    args = p.parse_args()
    tracked = subprocess.run(["git", "ls-files", "*.json"], cwd=ROOT, capture_output=True, text=True, check=True)
    left = 0
    for name in tracked.stdout.split():
        file = ROOT / name
        text = file.read_text()
        found = sorted(set(machine_strings(json.loads(text))))
        for key, value in found:
            left += 1
            if args.check:
                print(f"{name}: {key}: {value}")
                continue
            new = replacement(file, key, value)
            text = text.replace(json.dumps(value), json.dumps(new))
            print(f"{name}: {key}: {value} -> {new}")
        if found and not args.check:
            file.write_text(text)
    if args.check and left:
        sys.exit(f"{left} machine path(s) left")


if __name__ == "__main__":
    main()
