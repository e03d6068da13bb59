#!/usr/bin/env bash
# Issue 12's table: one line per ensemble technique, each switched on alone over a pinned
# reference recipe (the demo conv1d as it was before: mixup, 11 + 1 epochs, no full fits, no
# spectrogram branch), on the embedded dataset. Every line trains in its own work dir under
# $OUT (default working/techniques/), sharing the main job's caches and folds; lines marked
# "ref" start from a copy of the reference's finished runs. About 90 minutes on 2 CPU cores for all lines.
#   bash scripts/technique_table.sh              # every line
#   bash scripts/technique_table.sh ref full     # some (the reference first: others copy it)
# Each line prints `hms run`'s model and ensemble rows; lines with full fits print them for
# the test mean of every run, of the CV runs alone and of the full fits alone (train.test_runs).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$HMS_ROOT"
W=${HMS_WORK_DIR:-working}
OUT=${OUT:-$W/techniques}
[ -f "$W/folds.csv" ] && [ -d "$W/cache" ] || { echo "run the main job first (bash scripts/train_all_folds.sh): caches and folds" >&2; exit 1; }
REF="configs/demo/conv1d.yaml train.full_fits=0 train.test_runs=all augment.mixup_alpha=0.4 context.enabled=false"
REF_STAGES="{rows: all, epochs: 11, lr: 3.0e-3, low_vote_weight: 0.5}, {rows: high, epochs: 1, lr: 3.0e-4}"

# name | start from the reference's runs (ref/no) | reuse the main job's folds (yes/no) | hms run arguments
TECHNIQUES=(
  "ref|no|yes|$REF 'train.stages=[$REF_STAGES]'"
  "full|ref|yes|$REF 'train.stages=[$REF_STAGES]' train.full_fits=2"
  "seeds|ref|yes|$REF 'train.stages=[$REF_STAGES]' train.n_seeds=2"
  "pseudo|ref|yes|$REF 'train.stages=[$REF_STAGES]' name=conv1d_pseudo labels.pseudo.from=[conv1d]"
  "decay|no|yes|$REF 'train.stages=[{rows: all, epochs: 11, lr: 3.0e-3, low_vote_weight: [0.8, 0.2]}, {rows: high, epochs: 1, lr: 3.0e-4}]'"
  "bandpass|no|yes|$REF 'train.stages=[$REF_STAGES]' augment.bandpass_p=0.5"
  "multilabel|no|no|$REF 'train.stages=[$REF_STAGES]' folds.method=multilabel"
  "ema|no|yes|$REF 'train.stages=[$REF_STAGES]' train.ema=0.98"
  "epochs16|no|yes|$REF 'train.stages=[{rows: all, epochs: 15, lr: 3.0e-3, low_vote_weight: 0.5}, {rows: high, epochs: 1, lr: 3.0e-4}]'"
  "nomixup|no|yes|$REF 'train.stages=[$REF_STAGES]' name=conv1d_nomix augment.mixup_alpha=0 train.full_fits=2"
  "crop20|no|yes|$REF 'train.stages=[$REF_STAGES]' name=conv1d_c20 input.signal_seconds=20 train.full_fits=2"
  # combinations on the way to the demo's recipe
  "nomix_s2|no|yes|$REF name=conv1d_nomix_s2 augment.mixup_alpha=0 train.full_fits=2 'train.stages=[{rows: all, epochs: 11, lr: 3.0e-3, low_vote_weight: 0.5}, {rows: high, epochs: 3, lr: 3.0e-4}]'"
  "midline|no|yes|$REF name=conv1d_mid augment.mixup_alpha=0 'signal.extras=[midline]' train.full_fits=2 'train.stages=[{rows: all, epochs: 11, lr: 3.0e-3, low_vote_weight: 0.5}, {rows: high, epochs: 3, lr: 3.0e-4}]'"
)

rows() { grep -a -A3 "^ *model  *oof_kl" "$1" | grep -av "^--" | tail -n +2; }
SELECTED=("$@")
wanted() { [ ${#SELECTED[@]} -eq 0 ] && return 0; local w; for w in "${SELECTED[@]}"; do [ "$w" = "$1" ] && return 0; done; return 1; }
for line in "${TECHNIQUES[@]}"; do
  IFS='|' read -r name from folds args <<< "$line"
  wanted "$name" || continue
  dir="$OUT/$name"
  rm -rf "$dir"; mkdir -p "$dir/sub"
  ln -s "$(cd "$W" && pwd)/cache" "$dir/cache"
  cp "$W/validate.json" "$dir/"
  [ "$folds" = yes ] && cp "$W/folds.csv" "$W/folds.json" "$dir/"
  if [ "$from" = ref ]; then
    [ -f "$OUT/ref/conv1d/summary.json" ] || { echo "[techniques] $name needs the ref line first" >&2; exit 1; }
    cp -r "$OUT/ref/conv1d" "$dir/conv1d"
  fi
  echo "[techniques] $name: hms run $args"
  run() { eval "HMS_WORK_DIR='$dir' HMS_SUBMISSION_DIR='$dir/sub' hms run $args $*"; }
  run > "$dir/run.log" 2>&1
  rows "$dir/run.log"
  if [[ "$args" == *full_fits=2* ]]; then  # the same runs, other test means: nothing retrains
    for view in cv full; do
      echo "[techniques] $name, test mean of the $view runs:"
      run "train.test_runs=$view" > "$dir/run-$view.log" 2>&1
      rows "$dir/run-$view.log"
    done
  fi
done
