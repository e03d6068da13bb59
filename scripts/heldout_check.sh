#!/usr/bin/env bash
# The main job's experiments on an independent simulated dataset with a larger test set. The
# embedded set's 200 test EEGs cannot rank two models closer than ~5% (paired bootstrap); 1,000
# resolve ~1.5%. Nothing here was tuned on these sets: use them to check a choice made on OOF.
# The last [hms] lines give the test KL of the submitted blend and of the blend not chosen
# (with the calibration layer and without): the check on fitting it to the OOF's predictor.
#   bash scripts/heldout_check.sh                               # the demo, seed 1, 1,000 test EEGs
#   TAG=base bash scripts/heldout_check.sh context.enabled=false   # the same without the branch
#   SEED=2 N_TEST=2000 bash scripts/heldout_check.sh configs/demo/conv1d.yaml
# Data: input/synth_s$SEED/ (generated once); runs: working/heldout_s$SEED/$TAG/ (resumable).
# About 15 minutes on 2 CPU cores for the two demo experiments, plus 2 for the data.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$HMS_ROOT"
SEED=${SEED:-1}
N_TEST=${N_TEST:-1000}
TAG=${TAG:-run}
DATA=input/synth_s$SEED
W=working/heldout_s$SEED/$TAG
[ -f "$DATA/train.csv" ] || hms synth --out "$DATA" --n-eegs 800 --n-test-eegs "$N_TEST" --seed "$SEED" --quiet
# hms run takes the demo configs when given none
HMS_DATA_DIR="$DATA" HMS_WORK_DIR="$W" HMS_SUBMISSION_DIR="$W/submissions" hms run "$@"
