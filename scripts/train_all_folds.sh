#!/usr/bin/env bash
# The main job. With no arguments on a fresh machine: set up the environment, generate the
# embedded dataset (when no Kaggle data is in input/), prepare caches, train every fold of
# every demo experiment, ensemble, and write submissions/submission.csv.
#   bash scripts/train_all_folds.sh                                   # demo experiments
#   bash scripts/train_all_folds.sh configs/exp/a.yaml configs/exp/b.yaml train.batch_size=64
#   bash scripts/train_all_folds.sh configs/exp/a.yaml --gpus 2        # two of the visible GPUs
#   bash scripts/train_all_folds.sh --hours 6                          # the recipe's most valuable part that fits 6 h
# With a CUDA device and the real data the no-argument job trains the recipe to a 10-hour budget
# (--hours H to change it, --hours all or --yes for all of it); on simulated data, the demo.
# HMS_DATA_DIR / HMS_WORK_DIR / HMS_SUBMISSION_DIR / HMS_DEVICE redirect data and outputs.
# With several GPUs visible (CUDA_VISIBLE_DEVICES, else all), `hms run` trains one run per GPU
# at a time, each run's output in working/<exp>/<run>/train.log; a failed run stops the job.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$HMS_ROOT"
exec hms run "$@"
