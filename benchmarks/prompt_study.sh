#!/usr/bin/env bash
# The offline prompt study (issue 10): prompt-based LoRA (backprop), prompt-based MeZO (LoRA), prompt-based
# MeZO (all weights) and MeZO without a prompt, on the packaged masked LM (bert-tiny-mlm) and real GLUE,
# k = 512 examples per class drawn as the MeZO paper's data script draws them. The runs behind
# docs/prompt-study-*/ and docs/results.md.
#
#   bash benchmarks/prompt_study.sh sweeps TASK OUT_DIR [ARM...]  # each arm's grid, seed 13, ranked on validation
#   bash benchmarks/prompt_study.sh runs TASK OUT_DIR              # each arm's best point, seeds 13, 21, 42, then the report
#   bash benchmarks/prompt_study.sh variants TASK OUT_DIR          # MeZO (LoRA) estimator variants from its best point, seed 13
#   bash benchmarks/prompt_study.sh long TASK OUT_DIR              # the MeZO arms 4x longer, seed 13: where they flatten
#
# ARM is one of lora, mezo-lora, mezo-full, mezo-full-no-prompt (all by default). Environment: ZOFT (the
# command, default .venv/bin/zoft or zoft), GLUE_DIR (../shared/glue_data), K (512), GRID (replaces the grid
# of the one ARM named), SWEEP_STEPS (MeZO points, 5000; LoRA points 1000), MEZO_LORA_STEPS and
# MEZO_FULL_STEPS (MeZO runs and variants, 5000 each; LoRA runs 1000), SEEDS (13 21 42). Every arm starts
# from its settings file in benchmarks/prompt_study/; `runs` and `variants` add the swept keys of the arm's
# sweep (OUT_DIR/sweep-TASK-ARM/best.yaml). Each mode's report (report.md and its plots) lands beside its runs:
# OUT_DIR/runs-TASK, variants-TASK, long-TASK. Seed 13 with the sweep's steps is the sweep's own run at its best
# point: copied, not run again. MeZO on all weights runs with cache_z (z kept within a step: bit for bit the
# same run as without, about a third faster here). Runs go one after another with the machine's threads;
# set OMP_NUM_THREADS=1 to run two invocations side by side, one a core.
set -euo pipefail

usage="usage: bash benchmarks/prompt_study.sh sweeps|runs|variants|long TASK OUT_DIR [ARM...]"
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
all_arms=(lora mezo-lora mezo-full mezo-full-no-prompt)
arms=("${@:4}")
[[ ${#arms[@]} -gt 0 ]] || arms=("${all_arms[@]}")
# Without a prompt the grid reaches 1e-3: below 1e-4 the random classifier head never left one class in 5000 steps.
declare -A grid=(
    [lora]="lr=3e-4,1e-3,3e-3"
    [mezo-lora]="lr=5e-4,1e-3,3e-3 eps=1e-3,1e-2"
    [mezo-full]="lr=3e-6,1e-5,3e-5"
    [mezo-full-no-prompt]="lr=1e-6,1e-5,1e-4,3e-4,1e-3"
)
if [[ -n ${GRID:-} ]]; then
    [[ ${#arms[@]} -eq 1 ]] || { echo "GRID replaces the grid of one arm: name it after OUT_DIR" >&2; exit 2; }
    grid[${arms[0]}]=$GRID
fi

steps_of() {  # ARM STEPS_FOR_MEZO -> the arm's steps in a sweep
    if [[ $1 == lora ]]; then echo 1000; else echo "$2"; fi
}
declare -A run_options=(
    [lora]="--steps 1000"
    [mezo-lora]="--steps ${MEZO_LORA_STEPS:-5000}"
    [mezo-full]="--steps ${MEZO_FULL_STEPS:-5000} --cache-z true"
    [mezo-full-no-prompt]="--steps ${MEZO_FULL_STEPS:-5000} --cache-z true"
)
sweep_run_of() {  # SWEEP_FOLDER -> the run folder of its best point (named in best.yaml's first line)
    sed -n '1s/.* at \(.*\)$/\1/p' "$1/best.yaml" | sed "s|^|$1/runs/|"
}
planned_steps() {  # RUN_FOLDER -> the steps it planned
    sed -n 's/.*"planned_steps": \([0-9]*\).*/\1/p' "$1/summary.json"
}
steps_option() {  # OPTIONS -> the value of --steps in them
    sed -n 's/.*--steps \([0-9]*\).*/\1/p' <<<"$1"
}
# MeZO (LoRA) from its best point: a decaying lr, momentum (ZO-SGD-MMT, lr / (1 - momentum) the same), and at
# the forward passes (n-SPSA) or examples (batch 64) of the plain run; the masked-LM head trained too.
variants=(
    "linear-decay --schedule linear"
    "momentum --momentum 0.9 --lr 1e-4"
    "nspsa4 --n-perturbations 4 --steps $((${MEZO_LORA_STEPS:-5000} / 4))"
    "batch64 --batch-size 64 --steps $((${MEZO_LORA_STEPS:-5000} / 4))"
    "lm-head --train-lm-head true"
)
# The prompt-based MeZO arms at 20,000 steps from their best points; MeZO (LoRA) also at the sweep's slower lr,
# which was still rising at the sweep's end.
# `long TASK OUT_DIR NAME...` runs the ones named.
long_runs=(
    "mezo-lora-20k mezo-lora --steps 20000"
    "mezo-lora-lr5e-4-20k mezo-lora --steps 20000 --lr 5e-4"
    "mezo-full-20k mezo-full --steps 20000 --cache-z true"
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
            swept=$(sweep_run_of "$out/sweep-$task-$arm")
            for seed in ${SEEDS:-13 21 42}; do
                folder=$out/runs-$task/$arm-s$seed
                folders+=("$folder")
                [[ -f $folder/summary.json ]] && continue
                if [[ $seed == 13 && $(planned_steps "$swept") == "$(steps_option "${run_options[$arm]}")" ]]; then
                    mkdir -p "$(dirname "$folder")" && cp -r "$swept" "$folder" && continue
                fi
                # The arm's settings, then the sweep's choice (best.yaml holds the swept keys), then this run's.
                # shellcheck disable=SC2086  # the options are a list of words
                $ZOFT train --preset "$here/$arm.yaml" --config "$best" "${common[@]}" --seed "$seed" \
                    ${run_options[$arm]} --out "$folder" --overwrite
            done
        done
        $ZOFT report "${folders[@]}" --out "$out/runs-$task" \
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
        $ZOFT report "${folders[@]}" --out "$out/variants-$task" \
            --title "${task^^}, bert-tiny-mlm, k = ${K:-512}, seed 13: MeZO (LoRA) variants"
        ;;
    long)
        folders=()
        for long_run in "${long_runs[@]}"; do
            read -r name arm options <<<"$long_run"
            [[ $# -le 3 || " ${*:4} " == *" $name "* ]] || continue
            best=$out/sweep-$task-$arm/best.yaml
            [[ -f $best ]] || { echo "no $best: run the sweeps first" >&2; exit 2; }
            folder=$out/long-$task/$name
            folders+=("$folder")
            [[ -f $folder/summary.json ]] && continue
            # shellcheck disable=SC2086  # the options are a list of words
            $ZOFT train --preset "$here/$arm.yaml" --config "$best" "${common[@]}" --seed 13 $options \
                --out "$folder" --overwrite
        done
        $ZOFT report "${folders[@]}" --out "$out/long-$task" \
            --title "${task^^}, bert-tiny-mlm, k = ${K:-512}, seed 13: the MeZO arms at 20,000 steps"
        ;;
    *)
        echo "$usage" >&2
        exit 2
        ;;
esac
