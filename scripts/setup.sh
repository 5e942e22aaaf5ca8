#!/usr/bin/env bash
# Sets up llmclf on a fresh machine: a virtualenv in .venv with the CPU build of torch first
# (so pip never pulls a multi-GB CUDA build), then llmclf with every extra.
# llama-cpp-python compiles from source the first time (about 6 minutes on 2 cores);
# pip's wheel cache makes later runs fast. Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip wheel
.venv/bin/python -m pip install --quiet "torch==2.13.0"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}
.venv/bin/python -m pip install --quiet -e ".[dev]"
echo "llmclf is set up in .venv (activate with: source .venv/bin/activate)"
