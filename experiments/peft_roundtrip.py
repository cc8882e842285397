"""Does Hugging Face PEFT load what train.py writes, and give our model? (a development check, not a test)

    PEFT_PYTHON -m experiments.peft_roundtrip --python python --json results/peft-roundtrip.json

Needs `transformers` and `peft` (not project dependencies). For each method PEFT knows (LoRA,
HiRA, DoRA): train.py runs a few steps on the real stories260K model with the project's own Python, then
PeftModel.from_pretrained loads the adapter folder onto transformers' LlamaForCausalLM, and its logits are
compared with those of model.py + adapters.load_adapter on the same ids.
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from model import Transformer
from support import adapters

ROOT = Path(__file__).resolve().parents[1]

MODEL = ROOT / "tests" / "fixtures" / "models" / "stories260K"
DATA = ROOT / "tests" / "fixtures" / "commonsense"  # the first records of the real sets


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--python", default=sys.executable, help="the project's Python, for train.py")
    p.add_argument("--methods", default="lora,hira,dora")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args()
    ids = torch.tensor(json.loads((MODEL / "input_ids.json").read_text()))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        for task in ("boolq", "ARC-Easy"):  # a small slice of the real training sets
            (data / task).mkdir(parents=True)
            records = json.loads((DATA / task / "train.json").read_text())[:40]
            (data / task / "train.json").write_text(json.dumps(records))
        for method in args.methods.split(","):
            out = Path(tmp) / method
            subprocess.run([args.python, str(ROOT / "train.py"), "--model", str(MODEL), "--data", str(data),
                            "--method", method, "--rank", "4", "--alpha", "8", "--max-steps", "6", "--batch-size", "8",
                            "--val-size", "8", "--warmup-steps", "1", "--eval-every", "6", "--lr", "2e-2",
                            "--device", "cpu", "--out", str(out)], check=True, cwd=ROOT, capture_output=True)
            ours = Transformer.from_pretrained(MODEL)
            adapters.load_adapter(ours, out)
            theirs = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(MODEL), out)
            base = AutoModelForCausalLM.from_pretrained(MODEL)
            with torch.no_grad():
                a, b, c = ours.eval()(ids), theirs.eval()(ids).logits, base.eval()(ids).logits
            row = {"method": method, "max_abs_logit_difference": (a - b).abs().max().item(),
                   "max_abs_logit": b.abs().max().item(), "adapter_effect": (b - c).abs().max().item()}
            rows.append(row)
            print(f"{method}: max |ours − PEFT| = {row['max_abs_logit_difference']:.2e} (logits up to "
                  f"{row['max_abs_logit']:.1f}; the adapter moves them by up to {row['adapter_effect']:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
