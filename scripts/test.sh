#!/usr/bin/env bash
# Set up the environment (with test extras) and run the whole test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k metric -x`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh" dev
cd "$HMS_ROOT"
exec "$HMS_PY" -m pytest -q "$@"
