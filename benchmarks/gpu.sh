#!/usr/bin/env bash
# The GPU benchmark of issue 13, one prepared script for a lent H200 (about 8 minutes of device time at most):
# RoBERTa-large-shaped and 1B-decoder-shaped models built from their configs with RANDOM weights (no weights
# can reach that machine), batch 4 and 16, length 128: seconds per step and peak allocated memory of
# inference, LoRA backprop, MeZO (LoRA) and MeZO (all), fp32 and bf16 autocast, next to the floor that the
# forward's FLOP count and the measured matmul rate give. See benchmarks/gpu_shapes.py for the details.
#
#   run (device tool): bash benchmarks/gpu.sh            # results in $OUT/gpu/results.{md,json}, log beside
#   here, on the CPU:  flock /tmp/zoft-cpu.lock bash benchmarks/gpu.sh --tiny   # tiny shapes: tests the path
#
# Environment: PYTHON (default .venv/bin/python, else python3), OUT (default runs/gpu-out), MINUTES (the
# wall-clock cap, 7: a cut-off run still leaves its per-cell JSON lines in the log).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-}
if [[ -z $python ]]; then
    python=python3
    [[ -x .venv/bin/python ]] && python=.venv/bin/python
fi
out=${OUT:-runs/gpu-out}/gpu
mkdir -p "$out"
"$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' | tee "$out/log.txt"
PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} timeout "$((${MINUTES:-7} * 60))" \
    "$python" benchmarks/gpu_shapes.py --out "$out" "$@" 2>&1 | tee -a "$out/log.txt"
