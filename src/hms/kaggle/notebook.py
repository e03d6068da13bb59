"""The offline Kaggle inference notebook (nbformat) and its kernel-metadata.json."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from hms.config import ConfigError
from hms.data import schema
from hms.kaggle.offline import PACKAGE_MARKER
from hms.utils import atomic_write_json, atomic_write_text

NOTEBOOK_NAME = "hms-inference.ipynb"

INSTALL = f'''import importlib.util, os, subprocess, sys
from pathlib import Path

INPUT = Path(os.environ.get("HMS_KAGGLE_INPUT", "/kaggle/input"))
WORKING = Path(os.environ.get("HMS_KAGGLE_WORKING", "/kaggle/working"))
# the weights dataset is wherever its marker file is (old and new Kaggle mount layouts differ)
package = next(p.parent for depth in range(1, 5) for p in sorted(INPUT.glob("*/" * depth + "{PACKAGE_MARKER}")))
wheels = package / "wheels"
# install only what this image lacks (never replace packages the image already has)
needed = {{"hms": "hms_brain", "omegaconf": "omegaconf"}}
missing = [str(w) for module, prefix in needed.items() if importlib.util.find_spec(module) is None
           for w in sorted(wheels.glob(prefix + "-*.whl"))]
if missing:
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "-q", *missing], check=True)
print("offline install from", wheels, ":", [Path(m).name for m in missing] or "nothing needed")'''

PREDICT = '''from hms.kaggle.offline import run_kaggle_submission

submission_path = run_kaggle_submission()'''

SHOW = '''import pandas as pd

pd.read_csv(submission_path).head()'''


def build_notebook(weights_id: str) -> nbformat.NotebookNode:
    nb = new_notebook(cells=[
        new_markdown_cell(f"# HMS offline inference\nWeights and code: `{weights_id}` (made by `hms kaggle package`). "
                          "Runs the same `predict_experiment` code as `hms predict`, blends with the saved OOF "
                          "weights and writes `submission.csv`. Internet off."),
        new_code_cell(INSTALL), new_code_cell(PREDICT), new_code_cell(SHOW)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


# kernel-metadata.json's machine_shape (the kaggle CLI's `kernels push --accelerator` overrides it;
# kaggle/api/kaggle_api_extended.py: request.machine_shape = acc if acc else meta "machine_shape").
# With enable_gpu alone Kaggle may hand out a P100 (sm_60), which the image's CUDA 12.8 torch has no
# kernels for: every CUDA op fails. Other shapes are the server's to accept (no list ships with the CLI).
DEFAULT_MACHINE_SHAPE = "NvidiaTeslaT4"
NO_ACCELERATOR = "none"  # a CPU kernel: enable_gpu false, no machine_shape
UNUSABLE_SHAPES = {"nvidiateslap100": "a P100 (sm_60): Kaggle's torch build has no CUDA kernels for it"}


def check_machine_shape(machine_shape: str) -> str:
    reason = UNUSABLE_SHAPES.get(machine_shape.strip().lower())
    if reason:
        raise ConfigError(f"machine shape {machine_shape!r} is {reason}; use {DEFAULT_MACHINE_SHAPE} "
                         f"(the default) or {NO_ACCELERATOR!r} for a CPU kernel")
    return machine_shape.strip()


def kernel_metadata(owner: str, weights_id: str, slug: str = "hms-inference",
                    machine_shape: str = DEFAULT_MACHINE_SHAPE) -> dict:
    """The kernel's metadata for `kaggle kernels push`: a GPU of machine_shape, or the CPU with
    NO_ACCELERATOR."""
    gpu = check_machine_shape(machine_shape) != NO_ACCELERATOR
    return {
        "id": f"{owner}/{slug}", "title": "HMS inference", "code_file": NOTEBOOK_NAME,
        "language": "python", "kernel_type": "notebook", "is_private": True,
        "enable_gpu": gpu, "enable_tpu": False, **({"machine_shape": machine_shape.strip()} if gpu else {}),
        "enable_internet": False,  # kaggle 2.x treats a missing value as true: always write it
        "dataset_sources": [weights_id], "competition_sources": [schema.KAGGLE_SLUG], "kernel_sources": [],
    }


def write_notebook(out: Path, package_dir: Path, owner: str | None = None,
                   machine_shape: str = DEFAULT_MACHINE_SHAPE) -> Path:
    """The notebook + kernel-metadata.json for the weights dataset described in package_dir."""
    meta = json.loads((Path(package_dir) / "dataset-metadata.json").read_text())
    weights_id = meta["id"]
    kernel = kernel_metadata(owner or weights_id.split("/")[0], weights_id, machine_shape=machine_shape)
    out = Path(out)
    atomic_write_text(out / NOTEBOOK_NAME, nbformat.writes(build_notebook(weights_id)))
    atomic_write_json(out / "kernel-metadata.json", kernel)
    return out / NOTEBOOK_NAME
