# Sourced by gpu-check.sh and mac-check.sh: the part of picking an interpreter both checks share.
# Sets DRY (1 with --dry-run) and PY. With TWINLORA_PYTHON or --dry-run nothing is installed and
# NEED_INSTALL=0; otherwise it creates the venv named by $1, upgrades pip, pins torch and sets
# NEED_INSTALL=1 so the caller adds its platform's packages (with -c "$VENV/constraints.txt").
TORCH_PIN="torch==2.13.0"   # the same version as setup.sh on every platform
DRY=0
for a in "$@"; do [ "$a" = "--dry-run" ] && DRY=1; done
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
NEED_INSTALL=0
if [ -n "${TWINLORA_PYTHON:-}" ]; then
  PY="$TWINLORA_PYTHON"
elif [ "$DRY" = 1 ]; then
  PY=.venv/bin/python           # the CPU environment scripts/setup.sh made
  [ -x "$PY" ] || { echo "error: .venv missing — fix: bash scripts/setup.sh first (or set TWINLORA_PYTHON)" >&2; exit 2; }
else
  NEED_INSTALL=1
fi

make_check_venv() {  # $1: venv folder, $2: log tag; sets VENV and PY, installs pip + pinned torch
  VENV=$1
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  PY="$VENV/bin/python"
  echo "[$2] installing into $VENV..."
  "$PY" -m pip install -q --upgrade pip
  echo "$TORCH_PIN" > "$VENV/constraints.txt"   # nothing installed after this may move torch
  "$PY" -m pip install -q "$TORCH_PIN"
}
