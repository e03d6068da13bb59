#!/usr/bin/env bash
# One line per ensemble technique, each switched on alone over the demo conv1d (issue 12's
# table). Needs the main job's conv1d finished in working/ (the baseline, and the teacher of the
# pseudo-label line); every technique trains in its own work dir under $OUT (default
# working/techniques/), sharing the caches and folds. About 45 minutes on 2 CPU cores.
#   bash scripts/technique_table.sh            # all lines
#   bash scripts/technique_table.sh seeds full # some
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$HMS_ROOT"
W=${HMS_WORK_DIR:-working}
OUT=${OUT:-$W/techniques}
[ -f "$W/conv1d/summary.json" ] || { echo "train the demo conv1d first (bash scripts/train_all_folds.sh)" >&2; exit 1; }
CONV1D=configs/demo/conv1d.yaml

# name | copy the finished baseline conv1d in (yes/no) | copy folds (yes/no) | hms run arguments (shell words)
TECHNIQUES=(
  "full|yes|yes|$CONV1D train.full_fits=2"
  "seeds|yes|yes|$CONV1D train.n_seeds=2"
  "pseudo|yes|yes|$CONV1D name=conv1d_pseudo labels.pseudo.from=[conv1d]"
  "decay|no|yes|$CONV1D 'train.stages=[{rows: all, epochs: 11, lr: 3.0e-3, low_vote_weight: [0.8, 0.2]}, {rows: high, epochs: 1, lr: 3.0e-4}]'"
  "bandpass|no|yes|$CONV1D augment.bandpass_p=0.5"
  "multilabel|no|no|$CONV1D folds.method=multilabel"
  "epochs16|no|yes|$CONV1D 'train.stages=[{rows: all, epochs: 15, lr: 3.0e-3, low_vote_weight: 0.5}, {rows: high, epochs: 1, lr: 3.0e-4}]'"
)

wanted() { [ $# -eq 0 ] && return 0; local n=$1; shift; for w in "${SELECTED[@]}"; do [ "$w" = "$n" ] && return 0; done; return 1; }
SELECTED=("$@")
for line in "${TECHNIQUES[@]}"; do
  IFS='|' read -r name baseline folds args <<< "$line"
  if [ ${#SELECTED[@]} -gt 0 ] && ! wanted "$name" "${SELECTED[@]}"; then continue; fi
  dir="$OUT/$name"
  rm -rf "$dir"; mkdir -p "$dir/sub"
  ln -s "$(cd "$W" && pwd)/cache" "$dir/cache"
  cp "$W/validate.json" "$dir/"
  [ "$folds" = yes ] && cp "$W/folds.csv" "$W/folds.json" "$dir/"
  [ "$baseline" = yes ] && cp -r "$W/conv1d" "$dir/conv1d"
  echo "[techniques] $name: hms run $args"
  eval "HMS_WORK_DIR='$dir' HMS_SUBMISSION_DIR='$dir/sub' hms run $args" > "$dir/run.log" 2>&1
  echo "[techniques] $name:"
  grep -a -A3 "^ *model  *oof_kl" "$dir/run.log" | grep -av "^--" | tail -n +2
done
