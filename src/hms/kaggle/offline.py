"""What the Kaggle notebook runs (and the local `hms predict --ensemble`): every experiment of a
packaged ensemble predicted from its fold checkpoints, blended with the saved weights."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from hms.data import schema
from hms.inference.ensemble import apply_blend
from hms.inference.predict import predict_experiment
from hms.metric import validate_submission
from hms.utils import atomic_to_csv

PACKAGE_MARKER = "hms-package.json"  # identifies the weights dataset under the Kaggle input root


def find_dir(root: Path, predicate, max_depth: int = 4) -> Path | None:
    """First directory under root (breadth first) satisfying predicate: Kaggle mounts inputs at
    /kaggle/input/<slug>, /kaggle/input/competitions/<slug> or /kaggle/input/datasets/<owner>/<slug>."""
    frontier = [Path(root)]
    for _ in range(max_depth + 1):
        for d in frontier:
            if predicate(d):
                return d
        frontier = [c for d in frontier for c in sorted(d.iterdir()) if c.is_dir()] if frontier else []
    return None


def find_inputs(input_root: Path) -> tuple[Path, Path]:
    """(competition data dir, packaged weights dir) under the Kaggle input root."""
    comp = find_dir(input_root, lambda d: (d / schema.TEST_CSV).is_file() and (d / schema.TEST_EEG_DIR).is_dir())
    package = find_dir(input_root, lambda d: (d / PACKAGE_MARKER).is_file())
    if comp is None or package is None:
        raise FileNotFoundError(f"under {input_root}: competition data {'found' if comp else 'NOT found'}, "
                                f"weights dataset ({PACKAGE_MARKER}) {'found' if package else 'NOT found'}")
    return comp, package


def blend_experiments(package_dir: Path, data_dir: Path, work_dir: Path, device: str | None = None,
                      progress: bool = True) -> pd.DataFrame:
    """Weighted blend of the packaged experiments' test predictions, in test.csv order."""
    ensemble = json.loads((Path(package_dir) / "ensemble.json").read_text())
    preds = [predict_experiment(Path(package_dir) / name, data_dir, work_dir, device=device, progress=progress)
             for name in ensemble["experiments"]]
    sub = pd.DataFrame(apply_blend(np.stack([p[list(schema.VOTE_COLUMNS)].to_numpy() for p in preds]), ensemble),
                       columns=list(schema.VOTE_COLUMNS))
    sub.insert(0, "eeg_id", preds[0]["eeg_id"].to_numpy())
    validate_submission(sub)
    return sub


def run_kaggle_submission() -> Path:
    """Notebook entry point: inputs from $HMS_KAGGLE_INPUT, submission.csv into $HMS_KAGGLE_WORKING."""
    input_root = Path(os.environ.get("HMS_KAGGLE_INPUT", "/kaggle/input"))
    working = Path(os.environ.get("HMS_KAGGLE_WORKING", "/kaggle/working"))
    data_dir, package_dir = find_inputs(input_root)
    print(f"competition data: {data_dir}\nweights: {package_dir}")
    sub = blend_experiments(package_dir, data_dir, working / "hms_work")
    out = working / "submission.csv"
    atomic_to_csv(sub, out)
    print(f"wrote {out}: {len(sub)} rows")
    return out
