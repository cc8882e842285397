#!/usr/bin/env bash
# The GPU table of docs/bench.md in one command, sized for a short lease (about 6 minutes on an H200):
# every method at the Llama-3.2-1B shape (r 4 and 16) and the Llama-3-8B shape (r 16), eager steps, peak
# memory and merged inference; then each method compiled at the 1B shape, r 16. Whole models, random weights,
# bf16 base under autocast, batch 16 x 256 tokens (16 with a loss per row), no dropout.
#     bash experiments/gpu.sh [OUT_DIR]        # default results/; writes bench-gpu-*.json there
# The planner's peaks for the same runs: python -m experiments.bench --plan-against OUT_DIR/bench-gpu-llama-3.2-1b.json,OUT_DIR/bench-gpu-llama-3-8b.json
set -euo pipefail
out=${1:-results}
mkdir -p "$out"
common=(--device cuda --batch-size 16 --seq-len 256 --warmup 2)
methods=none,lora,hira,hilora,pera,dora,loran
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/bench-gpu-card.txt"
python -c "import torch; print('torch', torch.__version__)" | tee -a "$out/bench-gpu-card.txt"
time python -m experiments.bench "${common[@]}" --shape llama-3.2-1b --methods $methods --ranks 4,16 --rounds 6 \
    --infer-rounds 5 --json "$out/bench-gpu-llama-3.2-1b.json"
time python -m experiments.bench "${common[@]}" --shape llama-3-8b --methods $methods --ranks 16 --rounds 3 \
    --infer-rounds 3 --json "$out/bench-gpu-llama-3-8b.json"
time python -m experiments.bench "${common[@]}" --shape llama-3.2-1b --methods none,lora,hira,pera,dora,loran --ranks 16 \
    --rounds 4 --infer-rounds 1 --compile --json "$out/bench-gpu-compile-llama-3.2-1b.json"
