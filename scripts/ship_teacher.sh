#!/usr/bin/env bash
# Copy a trained shapes teacher + judge (from `aria-hpc teacher configs/shapes_teacher.yaml`) into
# the package, with the resolved recipe (and that of the run it continued, if any) and the quality
# report that go with them.
# Usage: scripts/ship_teacher.sh [RUN_DIR]   (default runs/shapes_teacher)
set -euo pipefail
RUN=${1:-runs/shapes_teacher}
DEST="$(cd "$(dirname "$0")/.." && pwd)/aria_hpc/worlds/assets/shapes16"
for f in teacher/unet/config.json teacher/scheduler/scheduler_config.json teacher/aria_teacher.json \
         judge/judge.json judge/judge.safetensors config.yaml teacher_eval.json; do
  [ -f "$RUN/$f" ] || { echo "ship_teacher: $RUN/$f is missing: run aria-hpc teacher first" >&2; exit 2; }
done
rm -rf "$DEST"
mkdir -p "$DEST"
cp -r "$RUN/teacher" "$RUN/judge" "$DEST/"
cp "$RUN/config.yaml" "$DEST/recipe.yaml"
cp "$RUN/teacher_eval.json" "$DEST/teacher_eval.json"
# A continued recipe (teacher_recipe.init_from; teacher.init_from in runs written before that section
# existed) ships the resolved config of the run it continued, too.
INIT=$(awk '/^teacher(_recipe)?:/ {t=1; next} /^[^ ]/ {t=0} t && /^  init_from:/ {print $2; exit}' "$RUN/config.yaml")
if [ -n "$INIT" ] && [ "$INIT" != "null" ]; then
  cp "$(dirname "$INIT")/config.yaml" "$DEST/recipe_stage1.yaml"
fi
du -sh "$DEST"
