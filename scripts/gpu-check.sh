#!/usr/bin/env bash
# The GPU checks of the throughput issue, in one call on a device machine (NVIDIA GPU, no network).
#
# Prepare here (once per session):   make gpu-wheels        # xgboost + msgspec wheels into .gpu-wheels/
# Run there (device tool):           run(command="bash scripts/gpu-check.sh", carry=[".gpu-wheels"], timeout_s=420)
#
# The device image has Python 3.12 with numpy, cupy, prometheus-client and pytest but no xgboost or
# msgspec; the wheels travel in .gpu-wheels (about 58 MB: under the 64 MiB carry limit). It writes
# into $OUT: gpu-results.json (`python -m benchmarks.gpu_bench`: CPU vs GPU per batch size and the crossover),
# gpu-tests.log (`pytest -m gpu`) and machine.txt. Copy gpu-results.json to docs/gpu/ and set
# PODLATENCY_GPU_MIN_ROWS (settings.py, values.yaml, README) from its crossover_rows.
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
timeout 300 "$PYTHON" -m benchmarks.gpu_bench --out "$OUT" || status=$?
timeout 120 "$PYTHON" -m pytest -m gpu -p no:cacheprovider -o addopts="" --timeout 100 -q tests/unit/test_predictor.py \
  2>&1 | tee "$OUT/gpu-tests.log" || status=$?
exit "$status"
