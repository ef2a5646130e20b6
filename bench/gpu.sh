#!/usr/bin/env bash
# GPU check (issue: official compatibility §6). One prepared script for a lent GPU machine:
#   1. convert the tiny official fixture and run the parity check on CUDA in fp32 (TF32 off) and in bf16;
#   2. time prefill + 32 decode tokens of a random moai-7b built directly on the GPU in bf16, against the same
#      model with mixers and compressor removed;
#   3. (training issue §3) the training loop under accelerate with each shipped engine config: DDP, FSDP,
#      DeepSpeed ZeRO-2/3 (skipped, and said so, when deepspeed is not installed), against one plain process;
#   4. (serving issue) bench/serve.py with the bundled model on the GPU: micro-batching against max batch 1.
# Results: bench/results/gpu.json, gpu_train.json, serve-cuda.json. Usage: bench/gpu.sh [FIXTURE_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
FIXTURE=${1:-tests/fixtures/official_tiny}
"$PY" bench/gpu.py --fixture "$FIXTURE" --out bench/results/gpu.json
"$PY" bench/gpu_train.py --out bench/results/gpu_train.json
"$PY" bench/serve.py --device cuda --out bench/results/serve-cuda.json
