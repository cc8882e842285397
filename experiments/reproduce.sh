#!/usr/bin/env bash
# The small-scale reproduction in docs/results.md: zero-shot, LoRA, HiRA, PERA, PERA's
# square-only and cross-only ablations, DoRA, LoRAN and HiLoRA (rank 4 split as r1 + r2 = 2 + 2 and 3 + 1),
# all at rank 4 on SmolLM2-135M-Instruct with one budget.
#
#   bash experiments/reproduce.sh            # after `python prepare.py` (and --data-from where GitHub is unreachable)
#
# Every method gets the same steps, batch, targets and seed. Each method's learning rate is tuned once,
# on the validation loss of a short run (SWEEP_STEPS) over three values that start at the SPEC's own
# (1e-4 LoRA/PERA, 1e-3 HiRA) or the method's paper's (1e-4 DoRA; LoRAN, which gives none, LoRA's); the
# ablations use PERA's. Each HiLoRA split has its own sweep over HiRA's values, which hold both of its parts' best
# (LoRA's 1e-3 and HiRA's 3e-2 in results/reproduce/sweep). Each method keeps train.py's default dropout (its paper's).
# Nothing is tuned on test data. About 5.5 hours on 2 CPU cores (DoRA, LoRAN and each HiLoRA split add ~45 min
# each); set STEPS, SWEEP_STEPS, LIMIT to change the budget.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-checkpoints/SmolLM2-135M-Instruct}
DATA=${DATA:-data/commonsense}
OUT=${OUT:-runs/reproduce}
STEPS=${STEPS:-200}
SWEEP_STEPS=${SWEEP_STEPS:-40}
LIMIT=${LIMIT:-100}
RANK=4
# --train-file none: the per-task training sets the results were made with, even where commonsense_170k is present
COMMON=(--model "$MODEL" --data "$DATA" --rank $RANK --batch-size 16 --seed 42 --train-file none)

declare -A LRS=([lora]="1e-4 1e-3 3e-3" [pera]="1e-4 1e-3 3e-3" [hira]="1e-3 1e-2 3e-2" [dora]="1e-4 1e-3 3e-3"
               [loran]="1e-4 1e-3 3e-3" [hilora-2+2]="1e-3 1e-2 3e-2" [hilora-3+1]="1e-3 1e-2 3e-2")
# what a name trains, where it is not the method of that name: HiLoRA's --rank is r1, --lora-rank r2
declare -A METHOD=([hilora-2+2]="--method hilora --rank 2 --lora-rank 2" [hilora-3+1]="--method hilora --rank 3 --lora-rank 1")
declare -A BEST
for name in lora pera hira dora loran hilora-2+2 hilora-3+1; do
    for lr in ${LRS[$name]}; do
        run="$OUT/sweep/$name-lr$lr"
        [ -f "$run/metrics.json" ] || python train.py "${COMMON[@]}" ${METHOD[$name]:---method $name} --lr $lr \
            --max-steps $SWEEP_STEPS --warmup-steps $((SWEEP_STEPS / 10)) --eval-every $SWEEP_STEPS --out "$run"
    done
    BEST[$name]=$(python -c "
import json, sys
runs = {lr: json.load(open(f'$OUT/sweep/$name-lr{lr}/metrics.json'))['best_val_loss'] for lr in sys.argv[1:]}
print(min(runs, key=runs.get))" ${LRS[$name]})
    echo "$name: learning rate ${BEST[$name]} (lowest validation loss after $SWEEP_STEPS steps)"
done

# Each method is trained, then evaluated on the test sets and its ΔW ranks reported, so an interrupted
# reproduction keeps every finished row; rerunning the script skips what is done and continues the rest.
[ -f "$OUT/zero-shot/eval-generate/results.json" ] || \
    python eval.py --model "$MODEL" --data "$DATA" --limit $LIMIT --out "$OUT/zero-shot/eval-generate"
run() {  # name method extra-arguments...; the learning rate swept for name, or else for method (the ablations)
    local name=$1 method=$2
    shift 2
    if [ ! -f "$OUT/$name/metrics.json" ]; then
        # a run that was interrupted continues from its last checkpoint
        [ -f "$OUT/$name/checkpoint/state.pt" ] && set -- "$@" --resume
        python train.py "${COMMON[@]}" --method $method --lr ${BEST[$name]:-${BEST[$method]}} \
            --max-steps $STEPS --warmup-steps $((STEPS / 10)) --eval-every $((STEPS / 4)) --out "$OUT/$name" "$@"
    fi
    [ -f "$OUT/$name/eval-generate/results.json" ] || python eval.py --adapter "$OUT/$name" --data "$DATA" --limit $LIMIT
    [ -f "$OUT/$name/rank_report.md" ] || { python eval.py --adapter "$OUT/$name" --rank-report > "$OUT/$name/rank_report.tmp" \
        && mv "$OUT/$name/rank_report.tmp" "$OUT/$name/rank_report.md"; }
}
run lora lora
run hira hira
run pera pera
run pera-square pera --terms square
run pera-cross pera --terms cross
run dora dora
run loran loran
run hilora-2+2 hilora --rank 2 --lora-rank 2
run hilora-3+1 hilora --rank 3 --lora-rank 1

python eval.py --table "$OUT"/{zero-shot,lora,hira,pera,pera-square,pera-cross,dora,loran,hilora-2+2,hilora-3+1}/eval-generate/results.json
