"""Patient-grouped, class-stratified K folds, saved once and shared by every experiment
(folds.* settings hold for the whole work dir: compare fold schemes in separate HMS_WORK_DIRs)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from hms.data import schema
from hms.data.io import HMSDataError
from hms.utils import atomic_to_csv, atomic_write_json, file_lock

FOLD_COLUMNS = ("eeg_id", "patient_id", "fold")
METHODS = ("group", "multilabel")


def eeg_vote_mass(train: pd.DataFrame) -> pd.DataFrame:
    """One row per eeg_id: patient_id, majority consensus `label`, and its vote shares (the mean
    of its rows' normalised votes: one unit of mass per eeg_id, however many sub-windows)."""
    patients = train.groupby("eeg_id")["patient_id"].nunique()  # on the rows, before aggregating
    if patients.max() > 1:
        raise HMSDataError(f"train.csv: eeg_id {int(patients.idxmax())} belongs to {int(patients.max())} "
                           "patient_ids; patient-grouped folds need one")
    votes = train[list(schema.VOTE_COLUMNS)].to_numpy(np.float64)
    shares = pd.DataFrame(votes / votes.sum(axis=1, keepdims=True), columns=list(schema.VOTE_COLUMNS))
    shares["eeg_id"] = train["eeg_id"].to_numpy()
    per_eeg = (
        train.groupby("eeg_id", sort=True)
        .agg(patient_id=("patient_id", "first"), label=("expert_consensus", lambda s: s.mode().iloc[0]))
        .join(shares.groupby("eeg_id").mean())
        .reset_index()
    )
    return per_eeg


def group_fold_of(per_eeg: pd.DataFrame, n_folds: int, seed: int) -> np.ndarray:
    """StratifiedGroupKFold: strata are each eeg_id's majority class, groups its patient.
    sklearn's warning about a class with fewer members than folds is silenced here:
    make_folds says it once, in words, when a fold really lacks a class."""
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold = np.full(len(per_eeg), -1, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for k, (_, val_idx) in enumerate(splitter.split(per_eeg, per_eeg["label"], per_eeg["patient_id"])):
            fold[val_idx] = k
    return fold


def missing_classes(per_eeg: pd.DataFrame) -> str | None:
    """One line naming the majority classes that some folds have no eeg_id of, or None when
    every fold has every class the data has."""
    counts = pd.crosstab(per_eeg["label"], per_eeg["fold"])
    short = counts[(counts == 0).any(axis=1)]
    if short.empty:
        return None
    described = ", ".join(f"{label} ({int(row.sum())} eeg_id{'s' * (int(row.sum()) != 1)}, in {int((row > 0).sum())} "
                          f"of {counts.shape[1]} folds)" for label, row in short.iterrows())
    return (f"[hms] folds: some folds have no eeg_id whose experts' majority is {described}; "
            "their validation scores say little about those classes")


def multilabel_fold_of(per_eeg: pd.DataFrame, n_folds: int, seed: int) -> np.ndarray:
    """iterstrat's MultilabelStratifiedKFold over patients, each labelled by its vote mass per
    class (summed over its eeg_ids): grouped by construction, every eeg_id takes its patient's fold."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    mass = per_eeg.groupby("patient_id", sort=True)[list(schema.VOTE_COLUMNS)].sum()
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    patient_fold = pd.Series(-1, index=mass.index, dtype=np.int64)
    for k, (_, val_idx) in enumerate(splitter.split(mass.to_numpy(), mass.to_numpy())):
        patient_fold.iloc[val_idx] = k
    return patient_fold.loc[per_eeg["patient_id"]].to_numpy()


def make_folds(train: pd.DataFrame, n_folds: int, seed: int, method: str = "group") -> pd.DataFrame:
    """One row per eeg_id with its fold. Groups are patients (no patient in two folds); the
    class mix is balanced as far as grouping allows (see METHODS)."""
    if method not in METHODS:
        raise ValueError(f"folds.method must be one of {list(METHODS)}, got {method!r}")
    per_eeg = eeg_vote_mass(train)
    n_patients = per_eeg["patient_id"].nunique()
    if n_patients < n_folds:
        raise HMSDataError(f"train.csv: {n_patients} patients cannot fill {n_folds} folds")
    per_eeg["fold"] = (group_fold_of if method == "group" else multilabel_fold_of)(per_eeg, n_folds, seed)
    note = missing_classes(per_eeg)
    if note:
        print(note, flush=True)
    return per_eeg[list(FOLD_COLUMNS)]


def class_mix_spread(train: pd.DataFrame, folds: pd.DataFrame) -> dict:
    """How evenly folds share the classes: per fold, each class's share of the vote mass (one
    unit per eeg_id); the standard deviation of those shares over folds, per class and mean."""
    per_eeg = eeg_vote_mass(train).merge(folds[["eeg_id", "fold"]], on="eeg_id")
    mix = per_eeg.groupby("fold")[list(schema.VOTE_COLUMNS)].sum()
    mix = mix.div(mix.sum(axis=1), axis=0)
    std = mix.std(axis=0, ddof=0)
    return {"per_class_std": {c: round(float(v), 4) for c, v in zip(schema.CLASSES, std)},
            "mean_std": round(float(std.mean()), 4),
            "eegs_per_fold": per_eeg.groupby("fold").size().tolist()}


def load_or_make_folds(train: pd.DataFrame, path: Path, n_folds: int, seed: int,
                       method: str = "group") -> pd.DataFrame:
    """Reuse folds.csv when it covers exactly this train set and was made with this n_folds,
    seed and method (kept in a `.json` beside it); else rebuild it, keeping the old one aside.
    Under a file lock: of concurrent processes (hms run's jobs, a Slurm array's tasks) one
    builds it and the others wait and reuse it, so folds.csv and its .json always match."""
    path = Path(path)
    with file_lock(path, what="the folds"):
        return _load_or_make_folds(train, path, n_folds, seed, method)


def _load_or_make_folds(train: pd.DataFrame, path: Path, n_folds: int, seed: int, method: str) -> pd.DataFrame:
    made_with = {"n_folds": int(n_folds), "seed": int(seed)}
    if method != "group":  # folds.json files written before methods existed stay valid
        made_with["method"] = method
    params = path.with_suffix(".json")
    if path.is_file():
        folds = _read_folds(path)
        same_ids = folds is not None and set(folds["eeg_id"]) == set(train["eeg_id"].unique())
        same_params = params.is_file() and _read_params(params) == made_with
        if same_ids and same_params and folds["fold"].nunique() == n_folds:
            return folds
        stale = path.with_suffix(".stale.csv")
        path.replace(stale)  # keep the old assignment for reference rather than losing it
        why = "is damaged (unreadable or rows without a fold)" if folds is None else \
            "was made for other eeg_ids, n_folds, seed or method"
        print(f"[hms] folds: {path} {why}; rebuilt (old one: {stale})")
    folds = make_folds(train, n_folds, seed, method)
    atomic_to_csv(folds, path)
    atomic_write_json(params, made_with)
    return folds


def _read_folds(path: Path) -> pd.DataFrame | None:
    """folds.csv, or None when it is truncated or corrupted (the same seed rebuilds the same folds)."""
    try:
        folds = pd.read_csv(path)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError):
        return None
    if not {"eeg_id", "fold"} <= set(folds.columns) or folds[["eeg_id", "fold"]].isna().any().any():
        return None
    return folds


def _read_params(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def attach_folds(train: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    out = train.merge(folds[["eeg_id", "fold"]], on="eeg_id", how="left")
    if out["fold"].isna().any():
        missing = out.loc[out["fold"].isna(), "eeg_id"].iloc[0]
        raise HMSDataError(f"folds: eeg_id {missing} has no fold")
    out["fold"] = out["fold"].astype(int)
    return out
