#!/usr/bin/env bash
# Set up prunebert in ./.venv: the CPU build of PyTorch, then prunebert with its dev tools. Idempotent.
#
# torch is pinned to 2.13.0 and installed first, so prunebert's open `torch>=2.2` requirement is already
# met and pip never pulls the multi-GB CUDA build. Elsewhere, point pip at a CPU index if your default
# index serves CUDA wheels:  TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
# --no-cache-dir: the wheels come from a local index here, and a second copy in pip's cache once filled CI's disk
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-cache-dir)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${pip[@]}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.13.0"
fi
# export: onnx + onnxruntime (light, never pulls torch) for ONNX export and bench; the heavier OpenVINO/NNCF
# extra is opt-in: .venv/bin/pip install -e ".[openvino]" (its tests skip without it)
"${pip[@]}" -e ".[dev,export,docs]"
