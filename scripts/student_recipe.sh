#!/usr/bin/env bash
# The student-recipe measurements behind configs/demo.yaml's student (README "A student that learns"):
# one rc student per row on the pair-holdout world (configs/demo.yaml), seed 0, the demo's bank, then
# `aria-hpc eval`; one line per row with the judge accuracy and held-out output MSE per split group.
#   scripts/student_recipe.sh [OUT] [ROW ...]     # OUT defaults to runs/student_recipe; rows by name
# Rows run one after another, each on one core (OMP_NUM_THREADS=1); about 6 minutes per 1,200 steps.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-runs/student_recipe}"); shift || true
BIN=${VENV:-.venv}/bin
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
COMMON=(embed.dir="$OUT/embeddings" regions.path="$OUT/embeddings/regions.h5" bank.dir="$OUT/bank"
        train.policy=rc seed=0)

declare -A ROWS=(
  [half_width_constant]="student.preset=half_width train.lr_schedule=constant"
  [half_width_cosine]="student.preset=half_width train.lr_schedule=cosine"
  [bk_tiny_cosine]="student.preset=bk_tiny train.lr_schedule=cosine"
  [bk_tiny_cosine_lr2e-3]="student.preset=bk_tiny train.lr_schedule=cosine train.lr=2e-3"
  [bk_tiny_cosine_fresh]="student.preset=bk_tiny train.lr_schedule=cosine bank.mode=hybrid bank.max_reuse=1 bank.writeback=false"
  [bk_tiny_cosine_2400]="student.preset=bk_tiny train.lr_schedule=cosine train.steps=2400"
  [no_inner_attn_init]="student.preset=no_inner_attn train.steps=1 train.lr=1e-12 train.ema_decay=0.0"
  [no_inner_attn_constant]="student.preset=no_inner_attn train.lr_schedule=constant"
  [no_inner_attn_cosine_600]="student.preset=no_inner_attn train.lr_schedule=cosine train.steps=600"
  [no_inner_attn_cosine_900]="student.preset=no_inner_attn train.lr_schedule=cosine train.steps=900"
  [no_inner_attn_cosine]="student.preset=no_inner_attn train.lr_schedule=cosine"
)
ORDER=(half_width_constant half_width_cosine bk_tiny_cosine bk_tiny_cosine_lr2e-3 bk_tiny_cosine_fresh
       bk_tiny_cosine_2400 no_inner_attn_init no_inner_attn_constant no_inner_attn_cosine_600
       no_inner_attn_cosine_900 no_inner_attn_cosine)
[ $# -gt 0 ] && ORDER=("$@")

"$BIN/aria-hpc" embed configs/demo.yaml "${COMMON[@]}" >/dev/null
"$BIN/aria-hpc" regions configs/demo.yaml "${COMMON[@]}" >/dev/null
"$BIN/aria-hpc" bank configs/demo.yaml "${COMMON[@]}" >/dev/null
for row in "${ORDER[@]}"; do
  [ -n "${ROWS[$row]+x}" ] || { echo "unknown row '$row' (rows: ${!ROWS[*]})" >&2; exit 2; }
  run="$OUT/runs/$row"
  t0=$(date +%s)
  # shellcheck disable=SC2086  # the row's overrides are words
  "$BIN/aria-hpc" train configs/demo.yaml "${COMMON[@]}" run.dir="$run" ${ROWS[$row]} > "$run.train.log" 2>&1 \
    || { echo "$row: train failed, see $run.train.log" >&2; exit 1; }
  t1=$(date +%s)
  "$BIN/aria-hpc" eval "$run" > "$run.eval.log" 2>&1 || { echo "$row: eval failed, see $run.eval.log" >&2; exit 1; }
  "$BIN/python" - "$run/eval.json" "$row" "$((t1 - t0))" <<'PY'
import json, sys
groups = json.load(open(sys.argv[1]))["groups"]
print(f"{sys.argv[2]:<26} train {sys.argv[3]:>4}s  " + "  ".join(
    f"{g}: acc {groups[g]['student_accuracy']['mean']:.3f} mse {groups[g]['mse']['mean']:.4f}"
    for g in ("seen", "under", "unseen")), flush=True)
PY
done
