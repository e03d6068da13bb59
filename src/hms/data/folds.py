"""Patient-grouped, class-stratified K folds, saved once and shared by every experiment."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from hms.data.io import HMSDataError
from hms.utils import atomic_to_csv, atomic_write_json

FOLD_COLUMNS = ("eeg_id", "patient_id", "fold")


def make_folds(train: pd.DataFrame, n_folds: int, seed: int) -> pd.DataFrame:
    """One row per eeg_id with its fold. Groups are patients (no patient in two folds);
    strata are each eeg_id's majority consensus class, balanced as far as grouping allows."""
    patients = train.groupby("eeg_id")["patient_id"].nunique()  # on the rows, before aggregating
    if patients.max() > 1:
        raise HMSDataError(f"train.csv: eeg_id {int(patients.idxmax())} belongs to {int(patients.max())} "
                           "patient_ids; patient-grouped folds need one")
    per_eeg = (
        train.groupby("eeg_id", sort=True)
        .agg(patient_id=("patient_id", "first"), label=("expert_consensus", lambda s: s.mode().iloc[0]))
        .reset_index()
    )
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
    """Reuse folds.csv when it covers exactly this train set and was made with this n_folds and
    seed (both kept in a `.json` beside it); else rebuild it, keeping the old one aside."""
    path = Path(path)
    made_with = {"n_folds": int(n_folds), "seed": int(seed)}
    params = path.with_suffix(".json")
    if path.is_file():
        folds = pd.read_csv(path)
        same_ids = set(folds["eeg_id"]) == set(train["eeg_id"].unique())
        same_params = params.is_file() and json.loads(params.read_text()) == made_with
        if same_ids and same_params and folds["fold"].nunique() == n_folds:
            return folds
        stale = path.with_suffix(".stale.csv")
        path.replace(stale)  # keep the old assignment for reference rather than losing it
        print(f"[hms] folds: {path} was made for other eeg_ids, n_folds or seed; rebuilt (old one: {stale})")
    folds = make_folds(train, n_folds, seed)
    atomic_to_csv(folds, path)
    atomic_write_json(params, made_with)
    return folds


def attach_folds(train: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    out = train.merge(folds[["eeg_id", "fold"]], on="eeg_id", how="left")
    if out["fold"].isna().any():
        missing = out.loc[out["fold"].isna(), "eeg_id"].iloc[0]
        raise HMSDataError(f"folds: eeg_id {missing} has no fold")
    out["fold"] = out["fold"].astype(int)
    return out
