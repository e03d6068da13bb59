"""Patient-grouped, class-stratified K folds, saved once and shared by every experiment."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from hms.data.io import HMSDataError
from hms.utils import atomic_to_csv

FOLD_COLUMNS = ("eeg_id", "patient_id", "fold")


def make_folds(train: pd.DataFrame, n_folds: int, seed: int) -> pd.DataFrame:
    """One row per eeg_id with its fold. Groups are patients (no patient in two folds);
    strata are each eeg_id's majority consensus class, balanced as far as grouping allows."""
    per_eeg = (
        train.groupby("eeg_id", sort=True)
        .agg(patient_id=("patient_id", "first"), label=("expert_consensus", lambda s: s.mode().iloc[0]))
        .reset_index()
    )
    if per_eeg.groupby("eeg_id")["patient_id"].nunique().max() > 1:
        raise HMSDataError("train.csv: an eeg_id belongs to more than one patient_id")
    n_patients = per_eeg["patient_id"].nunique()
    if n_patients < n_folds:
        raise HMSDataError(f"train.csv: {n_patients} patients cannot fill {n_folds} folds")
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold = np.full(len(per_eeg), -1, dtype=np.int64)
    for k, (_, val_idx) in enumerate(splitter.split(per_eeg, per_eeg["label"], per_eeg["patient_id"])):
        fold[val_idx] = k
    per_eeg["fold"] = fold
    return per_eeg[list(FOLD_COLUMNS)]


def load_or_make_folds(train: pd.DataFrame, path: Path, n_folds: int, seed: int) -> pd.DataFrame:
    """Reuse folds.csv when it covers exactly this train set with n_folds; else (re)build it."""
    path = Path(path)
    if path.is_file():
        folds = pd.read_csv(path)
        same_ids = set(folds["eeg_id"]) == set(train["eeg_id"].unique())
        if same_ids and folds["fold"].nunique() == n_folds:
            return folds
        stale = path.with_suffix(".stale.csv")
        path.replace(stale)  # keep the old assignment for reference rather than losing it
    folds = make_folds(train, n_folds, seed)
    atomic_to_csv(folds, path)
    return folds


def attach_folds(train: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    out = train.merge(folds[["eeg_id", "fold"]], on="eeg_id", how="left")
    if out["fold"].isna().any():
        missing = out.loc[out["fold"].isna(), "eeg_id"].iloc[0]
        raise HMSDataError(f"folds: eeg_id {missing} has no fold")
    out["fold"] = out["fold"].astype(int)
    return out
