#!/usr/bin/env bash
# Train ×2, ×3 and ×4 side by side on one GPU, each two ways, within a wall-time budget (seconds):
#   warm:    from the shipped model (model_store/espcn-x{r}.json), cosine 3e-4 → 1e-6;
#   scratch: from a fresh initialisation, cosine 1e-3 → 1e-6.
# Both: batches of 128 patches (BATCH), warm's rate WARM_LR, the VARIANTS to run, 2000 steps per epoch, the number of epochs fitted to the budget.
#
#   scripts/gpu_train.sh DATA OUT BUDGET_S      (DATA holds t91/, bsd200/ and set5/)
#
# Each run writes OUT/{warm,scratch}-x{r}/ (resumable checkpoint, and the published model in store/)
# and OUT/{warm,scratch}-x{r}.log. Compare the candidates side by side afterwards, on photos they never saw:
#   python -m app.cli.evaluate PHOTOS --scale 3 --model OUT/*-x3/store/espcn-x3.json
set -uo pipefail
data=$1 out=$2 budget=$3
device=${DEVICE:-cuda} steps=${STEPS:-2000} python=${PYTHON:-python3}  # DEVICE=cpu STEPS=5: a smoke run
variants=${VARIANTS:-warm scratch} batch=${BATCH:-128} warm_lr=${WARM_LR:-3e-4}
mkdir -p "$out"
for r in 2 3 4; do
    for variant in $variants; do
        if [[ $variant == warm ]]; then
            extra=(--init "model_store/espcn-x$r.json" --lr "$warm_lr")
        else
            extra=(--lr 1e-3)
        fi
        "$python" -m app.cli.train --scale "$r" --train "$data/t91" "$data/bsd200" --val "$data/set5" \
            --device "$device" --epochs 1000 --steps-per-epoch "$steps" --batch-size "$batch" --lr-min 1e-6 \
            --time-budget "$budget" "${extra[@]}" \
            --checkpoint "$out/$variant-x$r/state" --out "$out/$variant-x$r/store" \
            > "$out/$variant-x$r.log" 2>&1 &
    done
done
wait
