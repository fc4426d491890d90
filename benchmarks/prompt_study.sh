#!/usr/bin/env bash
# The offline prompt study (issue 10): prompt-based LoRA (backprop), prompt-based MeZO (LoRA), prompt-based
# MeZO (all weights) and MeZO without a prompt, on the packaged masked LM (bert-tiny-mlm) and real GLUE,
# k = 512 examples per class drawn as the MeZO paper's data script draws them. The runs behind
# docs/prompt-study-*/ and docs/results.md.
#
#   bash benchmarks/prompt_study.sh sweeps TASK OUT_DIR   # each arm's grid, seed 13, ranked on validation
#   bash benchmarks/prompt_study.sh runs TASK OUT_DIR     # each arm's best point, seeds 13, 21, 42, then the report
#
# Environment: ZOFT (the command, default .venv/bin/zoft or zoft), GLUE_DIR (../shared/glue_data), K (512),
# SWEEP_STEPS (MeZO points, 5000; LoRA points 1000), STEPS (MeZO runs, 20000; LoRA runs 1000), SEEDS
# (13 21 42). Every arm starts from its settings file in benchmarks/prompt_study/; `runs` adds the swept
# keys of the arm's sweep (OUT_DIR/sweep-TASK-ARM/best.yaml). Runs go one after another with the machine's
# threads; set OMP_NUM_THREADS=1 to run two invocations side by side (the sweeps' timings are not reported).
set -euo pipefail

usage="usage: bash benchmarks/prompt_study.sh sweeps|runs TASK OUT_DIR"
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
declare -A grid=(
    [lora]="lr=3e-4,1e-3,3e-3"
    [mezo-lora]="lr=5e-4,1e-3,3e-3 eps=1e-3,1e-2"
    [mezo-full]="lr=3e-6,1e-5,3e-5"
    [mezo-full-no-prompt]="lr=1e-6,1e-5,1e-4"
)

steps_of() {  # ARM STEPS_FOR_MEZO -> the arm's steps
    if [[ $1 == lora ]]; then echo 1000; else echo "$2"; fi
}

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
                $ZOFT train --preset "$here/$arm.yaml" --config "$best" "${common[@]}" --seed "$seed" \
                    --steps "$(steps_of "$arm" "${STEPS:-20000}")" --out "$folder" --overwrite
            done
        done
        $ZOFT report "${folders[@]}" --out "$out/report-$task" \
            --title "${task^^}, bert-tiny-mlm, k = ${K:-512}: prompt LoRA vs prompt MeZO vs MeZO without a prompt"
        ;;
    *)
        echo "$usage" >&2
        exit 2
        ;;
esac
