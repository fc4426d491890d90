#!/usr/bin/env bash
# The offline prompt study (issue 10): prompt-based LoRA (backprop), prompt-based MeZO (LoRA), prompt-based
# MeZO (all weights) and MeZO without a prompt, on the packaged masked LM (bert-tiny-mlm) and real GLUE,
# k = 512 examples per class drawn as the MeZO paper's data script draws them. The runs behind
# docs/prompt-study-*/ and docs/results.md.
#
#   bash benchmarks/prompt_study.sh sweeps TASK OUT_DIR    # each arm's grid, seed 13, ranked on validation
#   bash benchmarks/prompt_study.sh runs TASK OUT_DIR      # each arm's best point, seeds 13, 21, 42, then the report
#   bash benchmarks/prompt_study.sh variants TASK OUT_DIR  # MeZO (LoRA) estimator variants from its best point, seed 13
#
# Environment: ZOFT (the command, default .venv/bin/zoft or zoft), GLUE_DIR (../shared/glue_data), K (512),
# SWEEP_STEPS (MeZO points, 5000; LoRA points 1000), MEZO_LORA_STEPS (runs and variants, 20000),
# MEZO_FULL_STEPS (the two arms on all weights, 10000; LoRA runs 1000), SEEDS (13 21 42). Every arm starts
# from its settings file in benchmarks/prompt_study/; `runs` and `variants` add the swept keys of the arm's
# sweep (OUT_DIR/sweep-TASK-ARM/best.yaml). MeZO on all weights runs with cache_z (z kept within a step:
# bit for bit the same run as without, about a third faster here). Runs go one after another with the
# machine's threads; set OMP_NUM_THREADS=1 to run two invocations side by side, one a core.
set -euo pipefail

usage="usage: bash benchmarks/prompt_study.sh sweeps|runs|variants TASK OUT_DIR"
mode=${1:?$usage}
task=${2:?$usage}
out=${3:?$usage}
if [[ -z ${ZOFT:-} ]]; then
    ZOFT=zoft
    [[ -x .venv/bin/zoft ]] && ZOFT=.venv/bin/zoft
fi
here=$(dirname "$0")/prompt_study
common=(--task "$task" --model bert-tiny-mlm --data-dir "${GLUE_DIR:-../shared/glue_data}" --k-shot "${K:-512}"
        --quiet)
arms=(lora mezo-lora mezo-full mezo-full-no-prompt)
# Without a prompt the grid reaches 1e-3: below 1e-4 the random classifier head never left one class in 5000 steps.
declare -A grid=(
    [lora]="lr=3e-4,1e-3,3e-3"
    [mezo-lora]="lr=5e-4,1e-3,3e-3 eps=1e-3,1e-2"
    [mezo-full]="lr=3e-6,1e-5,3e-5"
    [mezo-full-no-prompt]="lr=1e-6,1e-5,1e-4,3e-4,1e-3"
)

steps_of() {  # ARM STEPS_FOR_MEZO -> the arm's steps in a sweep
    if [[ $1 == lora ]]; then echo 1000; else echo "$2"; fi
}
declare -A run_options=(
    [lora]="--steps 1000"
    [mezo-lora]="--steps ${MEZO_LORA_STEPS:-20000}"
    [mezo-full]="--steps ${MEZO_FULL_STEPS:-10000} --cache-z true"
    [mezo-full-no-prompt]="--steps ${MEZO_FULL_STEPS:-10000} --cache-z true"
)
# MeZO (LoRA) from its best point: a decaying lr, momentum (ZO-SGD-MMT, lr / (1 - momentum) the same), and at
# the forward passes (n-SPSA) or examples (batch 64) of the plain run; the masked-LM head trained too.
variants=(
    "linear-decay --schedule linear"
    "momentum --momentum 0.9 --lr 1e-4"
    "nspsa4 --n-perturbations 4 --steps $((${MEZO_LORA_STEPS:-20000} / 4))"
    "batch64 --batch-size 64 --steps $((${MEZO_LORA_STEPS:-20000} / 4))"
    "lm-head --train-lm-head true"
)

case $mode in
    sweeps)
        for arm in "${arms[@]}"; do
            folder=$out/sweep-$task-$arm
            # shellcheck disable=SC2086  # the grid is a list of KEY=VALUES words
            $ZOFT sweep --preset "$here/$arm.yaml" "${common[@]}" --seed 13 \
                --steps "$(steps_of "$arm" "${SWEEP_STEPS:-5000}")" --out "$folder" --grid ${grid[$arm]}
        done
        ;;
    runs)
        folders=()
        for arm in "${arms[@]}"; do
            best=$out/sweep-$task-$arm/best.yaml
            [[ -f $best ]] || { echo "no $best: run the sweeps first" >&2; exit 2; }
            for seed in ${SEEDS:-13 21 42}; do
                folder=$out/runs-$task/$arm-s$seed
                folders+=("$folder")
                [[ -f $folder/summary.json ]] && continue
                # The arm's settings, then the sweep's choice (best.yaml holds the swept keys), then this run's.
                # shellcheck disable=SC2086  # the options are a list of words
                $ZOFT train --preset "$here/$arm.yaml" --config "$best" "${common[@]}" --seed "$seed" \
                    ${run_options[$arm]} --out "$folder" --overwrite
            done
        done
        $ZOFT report "${folders[@]}" --out "$out/report-$task" \
            --title "${task^^}, bert-tiny-mlm, k = ${K:-512}: prompt LoRA vs prompt MeZO vs MeZO without a prompt"
        ;;
    variants)
        best=$out/sweep-$task-mezo-lora/best.yaml
        [[ -f $best ]] || { echo "no $best: run the sweeps first" >&2; exit 2; }
        folders=("$out/runs-$task/mezo-lora-s13")  # the plain run they are measured against
        for variant in "${variants[@]}"; do
            read -r name options <<<"$variant"
            folder=$out/variants-$task/$name
            folders+=("$folder")
            [[ -f $folder/summary.json ]] && continue
            # shellcheck disable=SC2086  # the options are a list of words
            $ZOFT train --preset "$here/mezo-lora.yaml" --config "$best" "${common[@]}" --seed 13 \
                ${run_options[mezo-lora]} $options --out "$folder" --overwrite
        done
        $ZOFT report "${folders[@]}" --out "$out/report-$task-variants" \
            --title "${task^^}, bert-tiny-mlm, k = ${K:-512}, seed 13: MeZO (LoRA) variants"
        ;;
    *)
        echo "$usage" >&2
        exit 2
        ;;
esac
