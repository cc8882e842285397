"""How much of a trained DoRA adapter's ΔW is the magnitude's rescaling of W0's rows.

ΔW = c ⊙ (W0 + s B A) − W0 with c = m / ‖W0 + s B A‖_row, which splits as (c − 1) ⊙ W0 + c ⊙ s B A: a
row rescaling of the frozen weight (full rank wherever c ≠ 1) plus the rank-r direction update.

    python -m experiments.dora_magnitude --adapter runs/reproduce/dora --json results/reproduce/dora/magnitude.json
"""
import argparse
import json
import statistics
from pathlib import Path

from support import adapters
from support.cli import user_input
from support.safetensors_io import load_checkpoint_tensors, load_safetensors

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--adapter", required=True, help="a DoRA adapter folder from train.py")
parser.add_argument("--json", help="write the per-layer figures here")
args = parser.parse_args()

folder = Path(args.adapter)
with user_input(folder):  # a wrong folder, or a run that is not DoRA, is one error line
    config = json.loads((folder / "adapter_config.json").read_text())
    if not config.get("use_dora"):
        raise ValueError("not a DoRA adapter (adapter_config.json has no use_dora: true)")
    scaling = config["lora_alpha"] / config["r"]
    tensors = load_safetensors(folder / "adapter_model.safetensors")
    base = load_checkpoint_tensors(Path(config["base_model_name_or_path"]))
rows = []
for key in sorted(tensors):
    if not key.endswith(".lora_magnitude_vector"):
        continue
    layer = key.removeprefix("base_model.model.").removesuffix(".lora_magnitude_vector")
    W0 = base[layer + ".weight"].double()
    A = tensors[key.replace("lora_magnitude_vector", "lora_A.weight")].double()
    B = tensors[key.replace("lora_magnitude_vector", "lora_B.weight")].double()
    V = W0 + scaling * (B @ A)  # (out, in)
    c = tensors[key].double() / V.norm(dim=1)  # (out,): m over the row norm
    delta = c[:, None] * V - W0
    rows.append({"layer": layer,
                 "median_abs_c_minus_1": (c - 1).abs().median().item(),
                 "rescale_share": ((c - 1)[:, None] * W0).norm().item() / delta.norm().item()})
for key in ("median_abs_c_minus_1", "rescale_share"):
    values = [row[key] for row in rows]
    print(f"{key}: median {statistics.median(values):.4g}, min {min(values):.4g}, max {max(values):.4g} over {len(rows)} layers")
if args.json:
    adapters.write_json(Path(args.json), rows)
