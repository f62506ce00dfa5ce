#!/usr/bin/env bash
# GPU benchmarks on one CUDA device (written for one H100; about 3-5 minutes there):
#   embed: fp32 / bf16 autocast / channels_last / torch.compile images/s of the default backbone at
#          256x256 against measured fp32 and bf16 matmul FLOP/s, plus the data-loader check (can the
#          shard stream feed the GPU: stream images/s vs GPU embed images/s, and end-to-end embed_shards);
#   train: episodes/s of `fingerprint train`, fp32 vs bf16 vs bf16 + channels_last (one process).
# Writes benchmarks/results/gpu_embed.json and gpu_train.json (same format as the CPU results)
# and regenerates the table in benchmarks/README.md. Extra flags go to run.py (e.g. --quick, --seed 1).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
"$PY" - <<'PYCHECK'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("benchmarks/gpu.sh: error: no CUDA device is visible to torch")
print(f"gpu.sh: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
PYCHECK
exec "$PY" benchmarks/run.py --device cuda --only embed,train --compile "$@"
