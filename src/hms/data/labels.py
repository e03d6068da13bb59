"""Votes -> soft targets, vote counts, the high-vote subset, per-eeg_id dedup, sample weights."""
from __future__ import annotations

import numpy as np
import pandas as pd

from hms.data import schema

TOTAL_VOTES = "total_votes"


def add_targets(df: pd.DataFrame) -> pd.DataFrame:
    """Adds total_votes and one probability column per class (the *_vote names, normalised)."""
    votes = df[list(schema.VOTE_COLUMNS)].to_numpy(dtype=np.float64)
    total = votes.sum(axis=1)
    out = df.copy()
    out[TOTAL_VOTES] = total
    out[list(schema.VOTE_COLUMNS)] = votes / total[:, None]
    return out


def target_array(df: pd.DataFrame) -> np.ndarray:
    """(n, 6) float32 probabilities from the *_vote columns (normalised again, for safety)."""
    votes = df[list(schema.VOTE_COLUMNS)].to_numpy(dtype=np.float64)
    return (votes / votes.sum(axis=1, keepdims=True)).astype(np.float32)


def high_vote_mask(df: pd.DataFrame, min_votes: int) -> np.ndarray:
    return df[TOTAL_VOTES].to_numpy() >= min_votes


def dedup_per_eeg(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (eeg_id, vote vector), as top teams validated: sub-windows of one eeg_id
    carrying the same votes are near-duplicates and would otherwise be over-counted. The
    kept row is the middle sub-window of each group (its offsets are used for inputs)."""
    key = ["eeg_id", *schema.VOTE_COLUMNS]
    ordered = df.sort_values(["eeg_id", "eeg_sub_id"], kind="stable")
    middle = ordered.groupby(key, sort=False).cumcount() == ordered.groupby(key, sort=False)[
        "eeg_sub_id"
    ].transform(lambda s: len(s) // 2)
    return ordered[middle.to_numpy()].reset_index(drop=True)


def sample_weights(df: pd.DataFrame, min_votes: int, low_vote_weight: float) -> np.ndarray:
    """1 for high-vote rows; low_vote_weight for rows under min_votes (stage-1 down-weighting)."""
    return np.where(high_vote_mask(df, min_votes), 1.0, low_vote_weight).astype(np.float32)


def prior(df: pd.DataFrame, min_votes: int) -> np.ndarray:
    """Mean target of the high-vote items (one per eeg_id and vote vector, as validated and
    scored; rows would let long EEGs with many sub-windows dominate), or of all items when
    none has min_votes: the constant baseline."""
    items = dedup_per_eeg(df) if "eeg_sub_id" in df else df
    mask = high_vote_mask(items, min_votes)
    rows = items[mask] if mask.any() else items
    p = target_array(rows).astype(np.float64).mean(axis=0)
    return p / p.sum()


def mix_pseudo_targets(rows: pd.DataFrame, oofs: list[pd.DataFrame], weight: float,
                       min_votes: int) -> pd.DataFrame:
    """rows (vote columns normalised, as load_train gives them) with each row under min_votes
    relabelled (1 - weight) * votes + weight * the mean prediction of the frames (columns
    eeg_id, <class>_target, <class>_vote: an oof.csv, or a model's predictions for these rows).
    Rows are matched on eeg_id and their vote vector."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"labels.pseudo.weight must be within [0, 1], got {weight}")
    votes = list(schema.VOTE_COLUMNS)
    targets = [f"{c}_target" for c in schema.CLASSES]
    mean = oofs[0][["eeg_id", *targets]].copy()
    mean[votes] = np.mean([o.set_index(["eeg_id", *targets]).loc[pd.MultiIndex.from_frame(mean)][votes].to_numpy()
                           for o in oofs], axis=0)
    key = ["eeg_id", *(f"_{c}" for c in schema.CLASSES)]

    def keyed(frame, columns):  # vote vectors compared to 4 decimals: CSV and float32 round trips
        return frame.assign(**{k: frame[c].to_numpy(np.float64).round(4) for k, c in zip(key[1:], columns)})

    low = ~high_vote_mask(rows, min_votes)
    found = keyed(rows[low], votes).merge(keyed(mean, targets)[[*key, *votes]], on=key, how="left",
                                          suffixes=("", "_oof"), validate="many_to_one")
    missing = found[f"{votes[0]}_oof"].isna()
    if missing.any():
        raise ValueError(f"pseudo-labels: {int(missing.sum())} low-vote rows (eeg_id {int(found.eeg_id[missing].iloc[0])} "
                         "first) have no teacher prediction; the teacher used other data or folds")
    out = rows.copy()
    mixed = (1 - weight) * found[votes].to_numpy() + weight * found[[f"{v}_oof" for v in votes]].to_numpy()
    out.loc[low, votes] = mixed / mixed.sum(axis=1, keepdims=True)
    return out


def class_mix(df: pd.DataFrame) -> dict[str, float]:
    """Share of rows per expert_consensus class, in class order."""
    counts = df["expert_consensus"].value_counts(normalize=True)
    return {name: round(float(counts.get(name, 0.0)), 4) for name in schema.CONSENSUS_NAMES}
