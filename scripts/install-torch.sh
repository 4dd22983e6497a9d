#!/usr/bin/env bash
# Install PyTorch into the environment of the given pip, choosing the right build:
#   - already importable: keep it (a CUDA or ROCm build the user installed stays);
#   - an NVIDIA GPU is visible: PyPI's default Linux wheel, which bundles CUDA;
#   - otherwise: the CPU-only wheel (PyTorch's CPU index when reachable, else whatever the
#     configured indexes offer, e.g. a local CPU wheel on offline build machines).
# TORCH_SPEC overrides the version (default torch==2.13.0).
set -euo pipefail
PIP=${1:-pip}
PY=$(dirname "$PIP")/python
SPEC=${TORCH_SPEC:-torch==2.13.0}
CPU_INDEX=https://download.pytorch.org/whl/cpu

if "$PY" -c "import torch" 2>/dev/null; then
  echo "torch $("$PY" -c 'import torch; print(torch.__version__)') already installed"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "NVIDIA GPU found: installing $SPEC with CUDA from PyPI"
  "$PIP" install -q "$SPEC"
elif "$PY" -c "import urllib.request as u; u.urlopen('$CPU_INDEX/torch/', timeout=5)" 2>/dev/null; then
  echo "no GPU: installing CPU-only $SPEC from $CPU_INDEX"
  "$PIP" install -q "$SPEC" --index-url "$CPU_INDEX" --extra-index-url https://pypi.org/simple
else
  echo "no GPU and $CPU_INDEX unreachable: installing $SPEC from the configured indexes"
  "$PIP" install -q "$SPEC"
fi
