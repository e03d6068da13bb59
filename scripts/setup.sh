#!/usr/bin/env bash
# Create or refresh the Python environment. Idempotent: a few seconds when nothing changed.
#   bash scripts/setup.sh        runtime requirements
#   bash scripts/setup.sh dev    + test requirements
# Uses an already active virtualenv/conda env; otherwise creates .venv in the repo.
# Other scripts `source` this file and then call "$HMS_PY".
set -euo pipefail
HMS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
hms_extras="${1:-}"

if [ -n "${VIRTUAL_ENV:-}" ] || [ -n "${CONDA_PREFIX:-}" ]; then
  HMS_PY="$(command -v python)"
else
  if [ ! -x "$HMS_ROOT/.venv/bin/python" ]; then
    echo "[setup] creating $HMS_ROOT/.venv"
    python3 -m venv "$HMS_ROOT/.venv"
  fi
  HMS_PY="$HMS_ROOT/.venv/bin/python"
fi
export HMS_PY

hms_reqs=("$HMS_ROOT/requirements.txt")
[ "$hms_extras" = "dev" ] && hms_reqs+=("$HMS_ROOT/requirements-dev.txt")
hms_prefix="$("$HMS_PY" -c 'import sys; print(sys.prefix)')"
hms_stamp="$hms_prefix/.hms-setup-${hms_extras:-runtime}"
hms_hash_of() { cat "$@" "$HMS_ROOT/pyproject.toml" | sha256sum | cut -c1-16; }
hms_hash="$(hms_hash_of "${hms_reqs[@]}")"

if [ -f "$hms_stamp" ] && [ "$(cat "$hms_stamp")" = "$hms_hash" ] \
   && "$HMS_PY" -c "import hms" 2>/dev/null; then
  echo "[setup] environment up to date ($hms_prefix)"
else
  echo "[setup] installing requirements into $hms_prefix (first time: a few minutes, several GB for torch)"
  "$HMS_PY" -m pip install --disable-pip-version-check -q --upgrade pip
  "$HMS_PY" -m pip install --disable-pip-version-check -q "${hms_reqs[@]/#/-r}"
  "$HMS_PY" -m pip install --disable-pip-version-check -q --no-deps -e "$HMS_ROOT"
  echo "$hms_hash" > "$hms_stamp"
  # the dev extras include the runtime requirements: the main job need not install them again
  [ "$hms_extras" = "dev" ] && hms_hash_of "$HMS_ROOT/requirements.txt" > "$hms_prefix/.hms-setup-runtime"
  echo "[setup] done"
fi
export PATH="$(dirname "$HMS_PY"):$PATH"
