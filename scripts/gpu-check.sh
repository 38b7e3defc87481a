#!/usr/bin/env bash
# `make gpu-check` for a GPU machine without network access: the CPU/GPU crossover
# (`python -m measure.gpu_bench`) and the GPU tests (`pytest -m gpu`), from wheels fetched beforehand.
#
# Prepare where there is network:   make gpu-wheels        # xgboost, msgspec, treelite, tl2cgen wheels
# Run on the GPU machine:           bash scripts/gpu-check.sh   (with .gpu-wheels copied beside it)
#
# It expects Python 3.12 with numpy, cupy, prometheus-client and pytest, and gcc, and writes into $OUT:
# gpu-results.json (the crossover: set PODLATENCY_GPU_MIN_ROWS from crossover_rows), gpu-tests.log and
# machine.txt.
set -euo pipefail
OUT=${OUT:-$(mktemp -d)}
PYTHON=${PYTHON:-python3}
deps=$(mktemp -d)
"$PYTHON" -m pip install --quiet --no-index --no-deps --target "$deps" .gpu-wheels/*.whl
export PYTHONPATH="$deps:$PWD/service:$PWD"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  "$PYTHON" -c "import sys, xgboost; print(sys.version.split()[0], 'xgboost', xgboost.__version__, xgboost.build_info().get('USE_CUDA'))" || true
} | tee "$OUT/machine.txt"
status=0
timeout 300 "$PYTHON" -m measure.gpu_bench --out "$OUT" || status=$?
timeout 120 "$PYTHON" -m pytest -m gpu -p no:cacheprovider -o addopts="" --timeout 100 -q tests/unit/test_predictor.py \
  2>&1 | tee "$OUT/gpu-tests.log" || status=$?
exit "$status"
