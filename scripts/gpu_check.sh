#!/usr/bin/env bash
# The GPU path end to end, in about 6 minutes on one H100/H200, on the embedded dataset (made
# here when input/ holds no data; nothing is downloaded, every model starts from random weights):
#   1. tests/test_gpu.py: every shipped config's AMP steps (a fitted-once one: its tree fit on
#      CUDA against the CPU's), GPU mels vs librosa, a fold on CUDA
#   2. hms bench spectrogram / train / infer: throughput, one JSON line each (bench train: the
#      configs/exp/ configs trained by steps; a fitted-once one has no steps to time)
#   3. a short run of the starter-recipe EfficientNet-B0 mosaic (5 folds x 2 epochs), ensembled
#   4. the demo main job on the GPU, timed
#   recipe (only when named: `bash scripts/gpu_check.sh recipe tests`, the lent device's one call):
#      `hms bench train` for each configs/recipe/ member trained by steps, random weights, at its
#      configured effective batch and settings (auto precision: bf16 on an H100/H200; channels-last
#      where the family allows; micro-batch), RECIPE_STEPS steps timed RECIPE_REPEATS times against
#      the bare model, plus its forward alone at the evaluation batch (inference), its peak memory
#      (torch.cuda.max_memory_allocated) beside the CPU estimate; then each 2D member with
#      channels-last the other way and with fp16 + GradScaler (named <exp>-channels_last_off/_on,
#      <exp>-fp16). Results go to $HMS_WORK_DIR/bench/train.jsonl (what `hms plan` and
#      `train.micro_batch: auto` read) and bench.jsonl. Budget: under 8 minutes on one H100/H200:
#      ~1 min for the embedded dataset and its caches, then 5 members + 8 variants at ~(2 + 2 x
#      RECIPE_REPEATS) x RECIPE_STEPS = 36 steps each, ~20-35 s each with start-up and cuDNN tuning;
#      a variant that would start after RECIPE_BUDGET_S (330 s) is skipped, saying so.
# Everything lands in $GPU_CHECK_DIR (default working/gpu_check): check.log, bench.jsonl and the
# work dir of steps 3-4. HMS_PY set beforehand (an image with torch preinstalled) skips the setup.
#   bash scripts/gpu_check.sh            # all steps
#   bash scripts/gpu_check.sh tests bench  # some (tests | bench | effnet | demo | recipe)
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -z "${HMS_PY:-}" ]; then
  source "$HERE/setup.sh" dev
fi
cd "$HERE/.."
OUT_DIR=${GPU_CHECK_DIR:-working/gpu_check}
mkdir -p "$OUT_DIR"
export HMS_WORK_DIR="$OUT_DIR/work" HMS_SUBMISSION_DIR="$OUT_DIR/submissions" PYTHONUNBUFFERED=1
LOG="$OUT_DIR/check.log"
BENCH="$OUT_DIR/bench.jsonl"
hms() { "$HMS_PY" -m hms "$@"; }
step() { echo "== [gpu_check] $* ($(date +%T))" | tee -a "$LOG"; }
wanted() { [ ${#STEPS[@]} -eq 0 ] && return 0; local s; for s in "${STEPS[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
STEPS=("$@")
status=0
RECIPE_STEPS=${RECIPE_STEPS:-6} RECIPE_REPEATS=${RECIPE_REPEATS:-2} RECIPE_BUDGET_S=${RECIPE_BUDGET_S:-330}
named() { local s; for s in "${STEPS[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }

step "device"
{ nvidia-smi -L; "$HMS_PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"; } 2>&1 | tee -a "$LOG"
"$HMS_PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "no CUDA device visible" >&2; exit 1; }

if [ ${#STEPS[@]} -gt 0 ] && named recipe; then
  step "caches for the embedded dataset"
  hms prepare configs/demo/conv1d.yaml 2>&1 | tail -n 3 | tee -a "$LOG" || status=1
  step "recipe: bench train per member (${RECIPE_STEPS} steps x ${RECIPE_REPEATS} repeats, budget ${RECIPE_BUDGET_S} s)"
  "$HMS_PY" -c "import glob; from hms.jobs.bench import bench_recipe; bench_recipe(sorted(glob.glob('configs/recipe/*.yaml')), $RECIPE_STEPS, $RECIPE_REPEATS, $RECIPE_BUDGET_S)" \
    2>&1 | tee -a "$LOG" | grep '^{' >> "$BENCH" || status=1
  step "recipe: the plan's memory lines with the measured peaks"
  hms plan configs/recipe/*.yaml 2>&1 | grep "memory" | tee -a "$LOG" || status=1
fi

if wanted tests; then
  step "tests/test_gpu.py"
  "$HMS_PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee -a "$LOG" || status=1
fi

if wanted bench; then
  step "caches for the embedded dataset"
  hms prepare configs/demo/conv1d.yaml 2>&1 | tail -n 3 | tee -a "$LOG" || status=1
  step "bench spectrogram (the starter's 128-mel recipe, batch 256)"
  hms bench spectrogram --batch 256 2>&1 | tee -a "$LOG" | grep '^{' >> "$BENCH" || status=1
  stepped=$("$HMS_PY" -c "import glob, sys; from hms.jobs.bench import split_by_training; print(*split_by_training(sorted(glob.glob('configs/exp/*.yaml')))[0])") || status=1
  for cfg in $stepped; do
    step "bench train $cfg"
    random_weights=(); grep -q "pretrained: true" "$cfg" && random_weights=(model.pretrained=false)
    hms bench train "$cfg" "${random_weights[@]}" --steps 10 2>&1 | tee -a "$LOG" | grep '^{' >> "$BENCH" || status=1
  done
fi

if wanted effnet; then
  step "effnet_b0_mosaic: 5 folds x (1 + 1) epochs, then predict and ensemble"
  start=$SECONDS
  hms run configs/exp/effnet_b0_mosaic.yaml model.pretrained=false \
    "train.stages=[{rows: all, epochs: 1, lr: 1.0e-3, low_vote_weight: 0.3}, {rows: high, epochs: 1, lr: 3.0e-4}]" \
    2>&1 | tr '\r' '\n' | grep -v "it/s\]$" | tee -a "$LOG" || status=1
  echo "{\"bench\": \"effnet_b0_mosaic_run\", \"seconds\": $((SECONDS - start))}" | tee -a "$LOG" >> "$BENCH"
  step "bench infer effnet_b0_mosaic"
  hms bench infer --exp effnet_b0_mosaic 2>&1 | tee -a "$LOG" | grep '^{' >> "$BENCH" || status=1
fi

if wanted demo; then
  step "the demo main job on the GPU"
  start=$SECONDS
  hms run configs/demo/*.yaml 2>&1 | tr '\r' '\n' | grep -v "it/s\]$" | tee -a "$LOG" || status=1
  echo "{\"bench\": \"demo_main_job\", \"seconds\": $((SECONDS - start))}" | tee -a "$LOG" >> "$BENCH"
fi
step "done (status $status); results in $BENCH"
exit $status
