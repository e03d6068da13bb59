"""The two README commands share one environment: after `bash scripts/test.sh` installed the
dev extras, `bash scripts/train_all_folds.sh` (setup.sh without extras) installs nothing."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_runtime_setup_after_the_test_setup_installs_nothing():
    env = {**os.environ, "VIRTUAL_ENV": sys.prefix,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("CONDA_PREFIX", None)
    out = subprocess.run(["bash", "-c", f"source {ROOT}/scripts/setup.sh && echo HMS_PY=$HMS_PY"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "[setup] environment up to date" in out.stdout and "installing" not in out.stdout
    assert f"HMS_PY={Path(sys.executable).parent}" in out.stdout  # the active env, not a new .venv
