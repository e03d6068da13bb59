"""Shared fixtures: small real parquet/CSV files written with pandas/pyarrow."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from hms.data import schema


TEST_SETTINGS = {
    # `hms run` without a GPU trains one run per core at once; tests that count what happens in
    # the calling process ask for the single-process job (tests/test_schedule.py runs the slots)
    "HMS_CPU_JOBS": "1",
    # the CPU reference (~8 s) would be most of each seconds-long `hms run` here: ~35 of them
    "HMS_REFERENCE_REPEATS": "0",
}


@pytest.fixture(autouse=True)
def _no_user_hms_settings(monkeypatch):
    """A shell's HMS_* settings (work dir, device, ...) must not redirect a test: an exported
    HMS_WORK_DIR once sent a test's fold into the calling script's work dir."""
    for name in [n for n in os.environ if n.startswith("HMS_")]:
        monkeypatch.delenv(name)
    for name, value in TEST_SETTINGS.items():
        monkeypatch.setenv(name, value)


def eeg_frame(seconds: float = 50, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = int(seconds * schema.SAMPLING_RATE)
    data = rng.normal(0, 20, size=(n, len(schema.EEG_CHANNELS))).astype(np.float32)
    return pd.DataFrame(data, columns=list(schema.EEG_CHANNELS))


def spectrogram_frame(seconds: float = 600, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = int(seconds // schema.SPEC_STEP_SECONDS)
    power = rng.lognormal(0, 1, size=(n, len(schema.SPEC_COLUMNS))).astype(np.float32)
    df = pd.DataFrame(power, columns=list(schema.SPEC_COLUMNS))
    df.insert(0, schema.SPEC_TIME_COLUMN, np.arange(1, 2 * n, 2, dtype=np.float32))
    return df


def train_frame(n_patients: int = 12, eegs_per_patient: int = 3, seed: int = 0) -> pd.DataFrame:
    """A train.csv-shaped frame: several sub-windows per eeg_id, random votes."""
    rng = np.random.default_rng(seed)
    rows = []
    label_id = 1000
    for p in range(n_patients):
        for e in range(eegs_per_patient):
            eeg_id = 10_000 + p * 100 + e
            votes = rng.multinomial(int(rng.integers(1, 20)), np.full(6, 1 / 6))
            if votes.sum() == 0:
                votes[5] = 1
            for sub in range(int(rng.integers(1, 4))):
                rows.append({
                    "eeg_id": eeg_id, "eeg_sub_id": sub, "eeg_label_offset_seconds": 2.0 * sub,
                    "spectrogram_id": 50_000 + p, "spectrogram_sub_id": sub,
                    "spectrogram_label_offset_seconds": 2.0 * sub, "label_id": label_id,
                    "patient_id": 500 + p,
                    "expert_consensus": schema.CONSENSUS_NAMES[int(np.argmax(votes))],
                    **dict(zip(schema.VOTE_COLUMNS, votes.tolist())),
                })
                label_id += 1
    return pd.DataFrame(rows, columns=list(schema.TRAIN_COLUMNS))


@pytest.fixture
def tmp_eeg(tmp_path):
    path = tmp_path / "1.parquet"
    eeg_frame().to_parquet(path, index=False)
    return path


def write_mini_dataset(root, n_patients: int = 8, eegs_per_patient: int = 2, n_test: int = 3, seed: int = 0):
    """A small dataset in Kaggle layout with random signals (no patterns): for pipeline
    mechanics (caches, loaders, outputs); learning tests use the real simulator."""
    from pathlib import Path

    root = Path(root)
    for d in (schema.TRAIN_EEG_DIR, schema.TRAIN_SPEC_DIR, schema.TEST_EEG_DIR, schema.TEST_SPEC_DIR):
        (root / d).mkdir(parents=True, exist_ok=True)
    train = train_frame(n_patients, eegs_per_patient, seed)
    for eeg_id, g in train.groupby("eeg_id"):
        eeg_frame(g.eeg_label_offset_seconds.max() + 50, seed=int(eeg_id)).to_parquet(
            root / schema.TRAIN_EEG_DIR / f"{eeg_id}.parquet", index=False)
    for spec_id, g in train.groupby("spectrogram_id"):
        spectrogram_frame(g.spectrogram_label_offset_seconds.max() + 600, seed=int(spec_id)).to_parquet(
            root / schema.TRAIN_SPEC_DIR / f"{spec_id}.parquet", index=False)
    train.to_csv(root / schema.TRAIN_CSV, index=False)
    test = pd.DataFrame({"spectrogram_id": 90_000 + np.arange(n_test), "eeg_id": 80_000 + np.arange(n_test),
                         "patient_id": 9_000 + np.arange(n_test)})
    for r in test.itertuples():
        eeg_frame(50, seed=r.eeg_id).to_parquet(root / schema.TEST_EEG_DIR / f"{r.eeg_id}.parquet", index=False)
        spectrogram_frame(600, seed=r.spectrogram_id).to_parquet(
            root / schema.TEST_SPEC_DIR / f"{r.spectrogram_id}.parquet", index=False)
    test.to_csv(root / schema.TEST_CSV, index=False)
    return root


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory):
    """A tiny dataset from the real simulator, shared by the training tests."""
    from hms.data.synthetic import generate

    root = tmp_path_factory.mktemp("tiny_synth")
    generate(root, n_eegs=40, n_test_eegs=6, seed=7, progress=False, workers=1)
    return root


TINY_TRAIN = [
    "folds.n_folds=2", "train.batch_size=16", "train.patience=5", "input.downsample=4",
    "train.stages=[{rows: all, epochs: 2, lr: 3.0e-3}, {rows: high, epochs: 1, lr: 1.0e-3}]",
    "model={kind: conv1d, mix_channels: 8, chain_channels: 4, stage_channels: [16, 32], kernel_sizes: [3, 7]}",
]


def tiny_config(data_dir, work_dir, *extra):
    from hms.config import load_config

    base = [o for o in TINY_TRAIN if not (o.startswith("model=") and any(e.startswith("model=") for e in extra))]
    return load_config([], [f"paths.data_dir={data_dir}", f"paths.work_dir={work_dir}", "name=tiny",
                            *base, *extra])


def execute_offline_notebook(notebook, data_dir, package_dir, tmp_path, monkeypatch) -> pd.DataFrame:
    """Execute the offline Kaggle notebook as Kaggle runs it: the competition data and the weights
    dataset mounted under an input root (the newer /kaggle/input/competitions/... and
    datasets/<owner>/<slug> layout), internet off; returns its submission.csv."""
    import shutil
    import sys
    from pathlib import Path

    import nbformat
    from nbclient import NotebookClient

    input_root = tmp_path / "input"
    (input_root / "competitions").mkdir(parents=True)
    (input_root / "competitions" / schema.KAGGLE_SLUG).symlink_to(data_dir, target_is_directory=True)
    shutil.copytree(package_dir, input_root / "datasets" / "tester" / "hms-weights")
    working = tmp_path / "working"
    working.mkdir()
    monkeypatch.setenv("HMS_KAGGLE_INPUT", str(input_root))
    monkeypatch.setenv("HMS_KAGGLE_WORKING", str(working))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    execute_offline_notebook.executed = nb  # its cells' outputs, for tests that read them
    return pd.read_csv(working / "submission.csv")
