#!/usr/bin/env bash
# What each perturbation distribution does to accuracy: prompt-based MeZO on all weights of the offline masked LM
# (the prompt study's MeZO (all) arm, benchmarks/prompt_study/mezo-full.yaml, at its chosen lr 1e-5, SST-2
# k = 512, seed 42), one run per distribution, the same seed, data and budget, then one report over them.
#
#   PYTHONPATH=src LOCK=/tmp/zoft-cpu.lock bash benchmarks/perturbations_accuracy.sh OUT_DIR [NAME...]
#
# NAME: gaussian, lowrank, sparse (default: all three). STEPS (default 1500), GLUE_DIR (../shared/glue_data),
# ZOFT (the zoft command, default .venv/bin/zoft or zoft). LOCK: a file each run takes with flock, one run at a
# time (a run is about 2.5 minutes on a 2-core CPU). Runs already completed in OUT_DIR are kept.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: perturbations_accuracy.sh OUT_DIR [NAME...]}
shift
names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=(gaussian lowrank sparse)
ZOFT=${ZOFT:-}
if [[ -z $ZOFT ]]; then
    ZOFT=zoft
    [[ -x .venv/bin/zoft ]] && ZOFT=.venv/bin/zoft
fi
lock=()
[[ -n ${LOCK:-} ]] && lock=(flock "$LOCK")

folders=()
for name in "${names[@]}"; do
    folder=$out/$name
    folders+=("$folder")
    [[ -f $folder/summary.json ]] && grep -q '"status": "completed"' "$folder/summary.json" && continue
    "${lock[@]}" "$ZOFT" train --preset "$here/prompt_study/mezo-full.yaml" --task sst2 --model bert-tiny-mlm \
        --data-dir "${GLUE_DIR:-../shared/glue_data}" --k-shot 512 --seed 42 --lr 1e-5 --steps "${STEPS:-1500}" \
        --cache-z true --perturbation "$name" --out "$folder" --overwrite --quiet
done
"${lock[@]}" "$ZOFT" report "${folders[@]}" --out "$out" \
    --title "SST-2, bert-tiny-mlm, k = 512, prompt MeZO (all): the perturbation distributions"
