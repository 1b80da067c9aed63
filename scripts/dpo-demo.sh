#!/usr/bin/env bash
# The DPO demo of docs/dpo.md on the legi data, both backends, CPU-sized (SmolLM2-135M-Instruct):
#   SFT (torch) → pairs (chosen = reference, rejected = the SFT model's greedy answer)
#   → DPO from the SFT adapter on torch and on MLX → held-out reward accuracy before/after
#   → the share of held-out greedy answers in the learned form (the references' heading
#     "Article <num> du Code …", metric answer_form) for the SFT and the DPO adapters, each backend.
# Usage: scripts/dpo-demo.sh [OUT] (default runs/dpo-demo). A step whose output exists is skipped,
# so an interrupted demo continues; nothing outside OUT is written.
# Sizes (env): PAIRS=16 pairs per split, DPO_STEPS=10, DPO_LR=5e-4, EVAL_TOKENS=32 (the heading fits).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/dpo-demo}
PAIRS=${PAIRS:-16} DPO_STEPS=${DPO_STEPS:-10} DPO_LR=${DPO_LR:-5e-4} EVAL_TOKENS=${EVAL_TOKENS:-32}
PY=${PYTHON:-python}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
run() { echo "+ $*" >&2; "$PY" cli.py "$@"; }

[ -f "$OUT/legi/manifest.json" ] || run prepare legi data/legi/LEGITEXT000031366350_crpa_sample.json --out "$OUT/legi"
[ -f "$OUT/sft/summary.json" ] || run train --config configs/legi-demo.yaml --backend torch --output "$OUT/sft" \
    --data "$OUT/legi/train.jsonl" --valid "$OUT/legi/valid.jsonl"
[ -f "$OUT/pairs/manifest.json" ] || run prepare pairs "$OUT/legi/train.jsonl" "$OUT/legi/valid.jsonl" \
    --out "$OUT/pairs" --option adapter="$OUT/sft/adapter" --option max_new_tokens=96 --option limit="$PAIRS"
for b in torch mlx; do
  [ -f "$OUT/dpo-$b/summary.json" ] || run train --config configs/legi-demo.yaml --backend "$b" --output "$OUT/dpo-$b" \
      --data "$OUT/pairs/train.jsonl" --valid "$OUT/pairs/valid.jsonl" --init-adapter "$OUT/sft/adapter" \
      --set training.objective=dpo --set training.lr="$DPO_LR" --steps "$DPO_STEPS"
  for a in sft "dpo-$b"; do
    [ -f "$OUT/eval-$a-on-$b/metrics.json" ] || run eval --data "$OUT/legi/valid.jsonl" --adapter "$OUT/$a/adapter" \
        --backend "$b" --metrics answer_form --max-new-tokens "$EVAL_TOKENS" --output "$OUT/eval-$a-on-$b"
  done
done
"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
from jobs.parity import loss_curve_gap
from common.evaluation.registry import score_all
out = Path(sys.argv[1])
read = lambda p: json.loads((out / p).read_text())
print("| | torch | mlx |\n|---|---|---|")
s = {b: read(f"dpo-{b}/summary.json") for b in ("torch", "mlx")}
acc = lambda m: m.get("val_rewards/accuracies", m.get("rewards/accuracies"))
print("| held-out reward accuracy, before → after | " + " | ".join(
    f"{acc(s[b]['val_metrics_before']):.3f} → {acc(s[b]['val_metrics']):.3f}" for b in s) + " |")
form = {f: score_all([json.loads(x) for x in (out / f / "predictions.jsonl").read_text().splitlines() if x.strip()],
                     ["answer_form"]) for b in s for f in (f"eval-sft-on-{b}", f"eval-dpo-{b}-on-{b}")}
for key, what in (("form_rate", "held-out answers in the learned form (heading + the reference's connector)"),
                  ("form_heading_rate", "held-out answers opening with the heading alone"),
                  ("form_repeat_rate", "held-out answers citing their heading's article again (SFT's habit)")):
    print(f"| {what}, SFT → DPO | " + " | ".join(
        f"{form[f'eval-sft-on-{b}'][key]:.2f} → {form[f'eval-dpo-{b}-on-{b}'][key]:.2f}" for b in s) + " |")
logs = [[json.loads(x) for x in (out / f"dpo-{b}/log.jsonl").read_text().splitlines() if x.strip()] for b in s]
gap = loss_curve_gap(*logs)
print(f"| per-step gap mlx vs torch over {gap['steps']} steps | — | loss {gap['max_abs_loss_gap']:.1e}, "
      + ", ".join(f"{k.split('/', 1)[1]} {v:.1e}" for k, v in gap.items() if k.startswith("max_abs_gap/rewards")) + " |")
EOF
