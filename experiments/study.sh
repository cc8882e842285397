#!/usr/bin/env bash
# The PERA study on the real model (docs/study.md): what wakes h?
# Same protocol and budget as reproduce.sh (SmolLM2-135M-Instruct, rank 4, batch 16, seed 42, PERA's lr),
# compared with its LoRA run:
#   1. h's learning-rate ratio: code init, ratios 10, 100, 1000, SWEEP_STEPS steps each (lowest validation
#      loss wins; ratio 1 is reproduce.sh's own PERA run);
#   2. STEPS-step runs: PERA with the paper's init; the code init with the best ratio; the paper init with it;
#   3. each evaluated as reproduce.sh does (generation on LIMIT examples per task, rank report), plus the
#      validation loss on the answer label alone and log-likelihood accuracy on LOGLIK_LIMIT per task.
#
#   bash experiments/study.sh        # after `python prepare.py`; about 6 h on 2 CPU cores (see docs/study.md)
#
# Resumable: every finished part is skipped, an interrupted training run continues from its checkpoint.
# LORA: reproduce.sh's LoRA run folder (with its adapter); trained here, with the same arguments, if absent.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-checkpoints/SmolLM2-135M-Instruct}
DATA=${DATA:-data/commonsense}
OUT=${OUT:-results/study}
LORA=${LORA:-runs/reproduce/lora}
STEPS=${STEPS:-200}
SWEEP_STEPS=${SWEEP_STEPS:-40}
LIMIT=${LIMIT:-100}
LOGLIK_LIMIT=${LOGLIK_LIMIT:-500}
RATIOS=${RATIOS:-10 100 1000}
LR=${LR:-1e-3}            # PERA's and LoRA's learning rate in reproduce.sh (its sweep's best)
RANK=${RANK:-4}
# TRAIN_ARGS: extra train.py arguments, for a smoke test only (e.g. "--val-size 8 --batch-size 4")
COMMON=(--model "$MODEL" --data "$DATA" --rank $RANK --batch-size 16 --seed 42 --train-file none --lr $LR ${TRAIN_ARGS:-})

train() {  # out method steps eval-every extra-arguments...
    local out=$1 method=$2 steps=$3 every=$4
    shift 4
    [ -f "$out/metrics.json" ] && return 0
    [ -f "$out/checkpoint/state.pt" ] && set -- "$@" --resume  # an interrupted run continues exactly
    python train.py "${COMMON[@]}" --method $method --max-steps $steps --warmup-steps $((steps / 10)) \
        --eval-every $every --out "$out" "$@"
}

evaluate() {  # run folder: generation, rank report, label-only validation loss, log-likelihood accuracy
    local run=$1
    [ -f "$run/eval-generate/results.json" ] || python eval.py --adapter "$run" --data "$DATA" --limit $LIMIT
    [ -f "$run/rank_report.md" ] || { python eval.py --adapter "$run" --rank-report > "$run/rank_report.tmp" \
        && mv "$run/rank_report.tmp" "$run/rank_report.md"; }
    [ -f "$run/label_val_loss.json" ] || python -m experiments.study label-loss --adapter "$run" --data "$DATA" --model "$MODEL"
    [ -f "$run/eval-loglik/results.json" ] || python eval.py --adapter "$run" --data "$DATA" --mode loglik \
        --limit $LOGLIK_LIMIT
}

# 1. the ratio sweep
for ratio in $RATIOS; do
    train "$OUT/sweep/pera-code-h$ratio" pera $SWEEP_STEPS $SWEEP_STEPS --init code --h-lr-ratio $ratio
done
BEST=$(python -c "
import json, sys
loss = {r: json.load(open(f'$OUT/sweep/pera-code-h{r}/metrics.json'))['best_val_loss'] for r in sys.argv[1:]}
print(min(loss, key=loss.get))" $RATIOS)
echo "h-lr-ratio $BEST: the lowest validation loss after $SWEEP_STEPS steps among $RATIOS"

# 2. the runs, and LoRA if reproduce.sh's adapter is not at hand
if [ ! -f "$LORA/adapter_model.safetensors" ]; then
    LORA="$OUT/lora"
    train "$LORA" lora $STEPS $((STEPS / 4))
fi
train "$OUT/pera-paper" pera $STEPS $((STEPS / 4)) --init paper
train "$OUT/pera-code-h$BEST" pera $STEPS $((STEPS / 4)) --init code --h-lr-ratio $BEST
train "$OUT/pera-paper-h$BEST" pera $STEPS $((STEPS / 4)) --init paper --h-lr-ratio $BEST

# 3. evaluation, the table and the plots
for run in "$LORA" "$OUT/pera-paper" "$OUT/pera-code-h$BEST" "$OUT/pera-paper-h$BEST"; do
    evaluate "$run"
done
PERA_CODE=${PERA_CODE:-runs/reproduce/pera}  # reproduce.sh's PERA (code init, ratio 1), when at hand
RUNS=("$OUT/pera-paper" "$OUT/pera-code-h$BEST" "$OUT/pera-paper-h$BEST")
[ -f "$PERA_CODE/adapter_model.safetensors" ] && { evaluate "$PERA_CODE"; RUNS=("$PERA_CODE" "${RUNS[@]}"); }
python -m experiments.study table --lora "$LORA" "${RUNS[@]}" --json "$OUT/study.json" | tee "$OUT/study.md"
LOGS=("$LORA/log.jsonl")
for run in "${RUNS[@]}"; do LOGS+=("$run/log.jsonl"); done
python -m experiments.plot "${LOGS[@]}" --key loss --smooth 10 --title "Training loss, rank 4, SmolLM2-135M (mean of 10 steps)" \
    --out "$OUT/loss.svg"
python -m experiments.plot "${LOGS[@]:1}" --key poly_share_median --log-y \
    --title "Polynomial share ‖ΔW − sBA‖/‖sBA‖, median over the 150 layers" --out "$OUT/poly_share.svg"
python -m experiments.plot "${LOGS[@]:1}" --key h_max --log-y --title "max |h| over the 150 layers" --out "$OUT/h_max.svg"
python -m experiments.plot "$OUT"/sweep/*/log.jsonl --key poly_share_median --log-y \
    --title "PERA's polynomial share ‖ΔW − sBA‖/‖sBA‖ (median over 150 layers), $SWEEP_STEPS steps, h lr ×${RATIOS// / \/ ×}" \
    --out "$OUT/sweep/share.svg"
