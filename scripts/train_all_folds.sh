#!/usr/bin/env bash
# The main job. With no arguments on a fresh machine: set up the environment, generate the
# embedded dataset (when no Kaggle data is in input/), prepare caches, train every fold of
# every demo experiment, ensemble, and write submissions/submission.csv.
#   bash scripts/train_all_folds.sh                                   # demo experiments
#   bash scripts/train_all_folds.sh configs/exp/a.yaml configs/exp/b.yaml train.batch_size=64
# HMS_DATA_DIR / HMS_WORK_DIR / HMS_SUBMISSION_DIR / HMS_DEVICE redirect data and outputs.
# With several GPUs visible, folds run in parallel, one process per GPU.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$HMS_ROOT"

configs=(); overrides=()
for arg in "$@"; do
  if [[ "$arg" == *=* ]]; then overrides+=("$arg"); else configs+=("$arg"); fi
done
[ ${#configs[@]} -gt 0 ] || configs=(configs/demo/*.yaml)

n_gpus=0
if command -v nvidia-smi >/dev/null 2>&1; then
  n_gpus=$(nvidia-smi -L 2>/dev/null | wc -l || echo 0)
fi
if [ "$n_gpus" -gt 1 ]; then
  hms prepare "${configs[0]}" "${overrides[@]}"
  for cfg in "${configs[@]}"; do
    n_folds=$("$HMS_PY" -c "import sys; from hms.config import load_config; print(load_config([sys.argv[1]], sys.argv[2:]).folds.n_folds)" "$cfg" "${overrides[@]}")
    for ((fold = 0; fold < n_folds; fold++)); do
      gpu=$((fold % n_gpus))
      CUDA_VISIBLE_DEVICES=$gpu hms train "$cfg" "${overrides[@]}" --fold "$fold" > "$(mktemp -t "hms-fold$fold.XXXX.log")" 2>&1 &
      if (( (fold + 1) % n_gpus == 0 )); then wait; fi
    done
    wait
  done
fi
# Trains whatever is not finished yet (everything, on one device), then ensembles.
exec hms run "${configs[@]}" "${overrides[@]}"
