#!/usr/bin/env bash
# MeZO+LoRA on MRPC from the linear-probe head (issue 5): the runs behind docs/settings-mrpc-mezo-lora and
# docs/seeds-mrpc-mezo-lora, then `zoft report` over them.
#
#   bash benchmarks/mrpc_mezo_lora_settings.sh settings OUT_DIR   # 16 settings, seed 42
#   bash benchmarks/mrpc_mezo_lora_settings.sh seeds OUT_DIR      # 2 settings x seeds 13, 21, 42, 87, 100
#
# Environment: ZOFT (the command, default .venv/bin/zoft or zoft), MODEL (minilm), GLUE_DIR
# (../shared/glue_data), DEVICE (auto), JOBS (runs at once, default 1: on a CPU never more, timings and
# speed would interfere; 16 fit on one H200), STEPS and EVAL_EVERY (settings: 6000 / 500, seeds: 2500 /
# 250), MINUTES (cap on each run's training time; default none), EXTRA (more `zoft train` options).
# "frozenhead" and "fh" settings freeze the head the linear probe fitted (head_grad=exact with a negligible
# head_lr), so that MeZO moves only the LoRA adapters.
set -euo pipefail

usage="usage: bash benchmarks/mrpc_mezo_lora_settings.sh settings|seeds OUT_DIR"
mode=${1:?$usage}
out=${2:?$usage}
if [[ -z ${ZOFT:-} ]]; then
    ZOFT=zoft
    [[ -x .venv/bin/zoft ]] && ZOFT=.venv/bin/zoft
fi
jobs_at_once=${JOBS:-1}
((jobs_at_once > 1)) && export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

case $mode in
    settings)
        steps=${STEPS:-6000} every=${EVAL_EVERY:-500}
        settings=(
            "a-lr1e-4 --lr 1e-4"
            "a-lr3e-4 --lr 3e-4"
            "a-lr1e-3 --lr 1e-3"
            "a-lr3e-4-s13 --lr 3e-4 --seed 13"
            "x-lr3e-4 --lr 3e-4 --head-grad exact --head-lr 1e-4"
            "x-lr1e-3 --lr 1e-3 --head-grad exact --head-lr 1e-4"
            "x-lr1e-4-h1e-3 --lr 1e-4 --head-grad exact --head-lr 1e-3"
            "frozenhead-lr3e-4 --lr 3e-4 --head-grad exact --head-lr 1e-12"
            "frozenhead-lr1e-3 --lr 1e-3 --head-grad exact --head-lr 1e-12"
            "r1v-lr1e-3 --lora-r 1 --target-modules value --lr 1e-3"
            "r1v-lr3e-3 --lora-r 1 --target-modules value --lr 3e-3"
            "dense-lr3e-4 --target-modules dense --lr 3e-4"
            "b64-lr1e-3 --batch-size 64 --lr 1e-3 --steps $((steps * 3 / 10))"
            "mom-lr1e-4 --momentum 0.9 --lr 1e-4"
            "n4-lr1e-3 --n-perturbations 4 --lr 1e-3 --steps $((steps / 4))"
            "eps1e-2-lr3e-4 --eps 1e-2 --lr 3e-4"
        )
        ;;
    seeds)
        steps=${STEPS:-2500} every=${EVAL_EVERY:-250}
        settings=()
        for seed in 13 21 42 87 100; do
            settings+=("fh-lr1e-3-s$seed --lr 1e-3 --head-grad exact --head-lr 1e-12 --seed $seed"
                       "a-lr3e-4-s$seed --lr 3e-4 --seed $seed")
        done
        ;;
    *)
        echo "$usage" >&2
        exit 2
        ;;
esac

base=(--task mrpc --model "${MODEL:-minilm}" --data-dir "${GLUE_DIR:-../shared/glue_data}" --device "${DEVICE:-auto}"
      --method mezo --params lora --pooling mean --pair-encoding separate --head-init linear-probe --eps 1e-3
      --steps "$steps" --eval-every "$every" --checkpoint-every 0 --quiet)
[[ -n ${MINUTES:-} ]] && base+=(--max-minutes "$MINUTES")
mkdir -p "$out/runs" "$out/logs"
for setting in "${settings[@]}"; do
    read -r name options <<<"$setting"
    while (($(jobs -rp | wc -l) >= jobs_at_once)); do wait -n || true; done
    echo "started $name"
    # shellcheck disable=SC2086  # options and EXTRA are lists of words
    $ZOFT train "${base[@]}" --out "$out/runs/$name" $options ${EXTRA:-} >"$out/logs/$name.log" 2>&1 &
done
wait || true

failed=0
for setting in "${settings[@]}"; do
    read -r name _ <<<"$setting"
    if [[ ! -f $out/runs/$name/summary.json ]]; then
        echo "run $name wrote no summary; its log: $out/logs/$name.log" >&2
        failed=1
    fi
done
$ZOFT report "$out"/runs/* --out "$out/report" --title "MeZO+LoRA on MRPC from the linear-probe head: $mode"
exit $failed
