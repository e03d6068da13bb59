"""`hms kaggle package/upload/notebook/push`: weights + code as a Kaggle dataset, and the
offline inference notebook for the code competition."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

from hms.config import ConfigError
from hms.data import schema
from hms.models.fingerprint import check_same_runs
from hms.models.runs import run_dirs
from hms.kaggle.client import KaggleError, run_kaggle
from hms.kaggle.notebook import NO_ACCELERATOR, check_machine_shape
from hms.kaggle.offline import PACKAGE_MARKER
from hms.utils import atomic_dir, atomic_write_json

PROJECT_ROOT = Path(__file__).resolve().parents[3]
# Pure-Python runtime dependencies the Kaggle image may lack; repacked from this environment
# so packaging needs no network.
EXTRA_WHEELS = ("omegaconf",)
DEFAULT_SLUG = "hms-weights"


def kaggle_username(explicit: str | None = None) -> str:
    if explicit:
        return explicit
    if os.environ.get("KAGGLE_USERNAME"):
        return os.environ["KAGGLE_USERNAME"]
    config = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle")) / "kaggle.json"
    if config.is_file():
        return json.loads(config.read_text())["username"]
    raise KaggleError("no Kaggle user name: pass --user, set KAGGLE_USERNAME or add ~/.kaggle/kaggle.json")


def repack_installed(dist_name: str, out_dir: Path) -> Path:
    """A wheel rebuilt from an installed pure-Python distribution's files (RECORD lists them)."""
    dist = metadata.distribution(dist_name)
    name = dist.metadata["Name"].replace("-", "_")
    wheel = Path(out_dir) / f"{name}-{dist.version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in dist.files or []:
            src = Path(dist.locate_file(f))
            if src.is_file() and "__pycache__" not in f.parts and not str(f).startswith(".."):
                zf.write(src, str(f))
    return wheel


def build_hms_wheel(out_dir: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out_dir), str(PROJECT_ROOT)], check=True)
    return next(Path(out_dir).glob("hms_brain-*.whl"))


def copy_experiment(exp_dir: Path, dest: Path) -> None:
    """Each run's config and plain state_dict (no resume states, logs or predictions)."""
    dirs = run_dirs(exp_dir)
    check_same_runs(exp_dir, dirs)
    for fold in dirs:
        (dest / fold.name).mkdir(parents=True, exist_ok=True)
        for name in ("best.pt", "config.yaml"):
            shutil.copy2(fold / name, dest / fold.name / name)
    if (exp_dir / "summary.json").is_file():
        shutil.copy2(exp_dir / "summary.json", dest / "summary.json")


def package(out: Path, work_dir: Path, submission_dir: Path, user: str | None = None,
            slug: str = DEFAULT_SLUG, notebook_estimate=None, notebook_limit: float | None = None) -> dict:
    """Write the weights dataset folder; returns its description (with size in bytes). Built
    beside `out` and swapped in at the end: a failure leaves an earlier package as it was.
    notebook_estimate(experiments) -> (minutes, the choice that cuts most): a dataset whose
    notebook estimate is over notebook_limit minutes is refused before anything is written."""
    ensemble_path = Path(submission_dir) / "ensemble.json"
    if not ensemble_path.is_file():
        raise FileNotFoundError(f"{ensemble_path} not found: run the main job or `hms ensemble` first")
    ensemble = json.loads(ensemble_path.read_text())
    if notebook_estimate is not None and notebook_limit is not None:
        minutes, cut = notebook_estimate(ensemble["experiments"])
        if minutes > notebook_limit:
            raise ConfigError(f"the Kaggle notebook's estimate for {ensemble['experiments']} is ~{minutes:.0f} min, over "
                              f"the limit {notebook_limit:g} min (--notebook-minutes): not packaged. The choice that "
                              f"cuts it most: {cut}")
    owner = kaggle_username(user)
    with atomic_dir(out) as building:
        (building / "wheels").mkdir()
        for name in ensemble["experiments"]:
            copy_experiment(Path(work_dir) / name, building / name)
        shutil.copy2(ensemble_path, building / "ensemble.json")
        build_hms_wheel(building / "wheels")
        for dist in EXTRA_WHEELS:
            repack_installed(dist, building / "wheels")
        atomic_write_json(building / "dataset-metadata.json", {
            "title": "HMS weights and code", "id": f"{owner}/{slug}", "licenses": [{"name": "CC0-1.0"}]})
        size = sum(f.stat().st_size for f in building.rglob("*") if f.is_file())
        info = {"experiments": ensemble["experiments"], "id": f"{owner}/{slug}", "bytes": size}
        atomic_write_json(building / PACKAGE_MARKER, info)
    return info


def upload(dataset_dir: Path, message: str = "new weights") -> str:
    """`kaggle datasets create` the first time, `version` after; zip mode keeps subfolders;
    private unless made public on Kaggle."""
    meta = json.loads((Path(dataset_dir) / "dataset-metadata.json").read_text())
    if run_kaggle(["datasets", "status", meta["id"]], check=False).returncode == 0:  # it exists
        run_kaggle(["datasets", "version", "-p", str(dataset_dir), "-m", message, "--dir-mode", "zip"])
        return "version"
    run_kaggle(["datasets", "create", "-p", str(dataset_dir), "--dir-mode", "zip"])
    return "create"


def push(notebook_dir: Path, accelerator: str | None = None) -> None:
    """`kaggle kernels push`, with --accelerator (default: kernel-metadata.json's machine_shape):
    the kaggle CLI sends the flag when given, else the field; passing the field as the flag too
    makes the request explicit in the command (and in the test's record of it)."""
    meta = json.loads((Path(notebook_dir) / "kernel-metadata.json").read_text())
    accelerator = check_machine_shape(accelerator) if accelerator else meta.get("machine_shape")
    if accelerator == NO_ACCELERATOR:
        raise ConfigError(f"--accelerator {NO_ACCELERATOR}: write a CPU kernel with "
                         f"`hms kaggle notebook --accelerator {NO_ACCELERATOR}` instead")
    run_kaggle(["kernels", "push", "-p", str(notebook_dir), *(["--accelerator", accelerator] if accelerator else [])])
