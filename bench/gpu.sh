#!/usr/bin/env bash
# GPU check (issue: official compatibility §6). One prepared script for a lent GPU machine:
#   1. convert the tiny official fixture and run the parity check on CUDA in fp32 (TF32 off) and in bf16;
#   2. time prefill + 32 decode tokens of a random moai-7b built directly on the GPU in bf16, against the same
#      model with mixers and compressor removed.
# Results: bench/results/gpu.json. Usage: bench/gpu.sh [FIXTURE_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
FIXTURE=${1:-${MOAI_SHARED_FIXTURES:-../shared/fixtures}/official_tiny}
exec "$PY" bench/gpu.py --fixture "$FIXTURE" --out bench/results/gpu.json
