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


def class_mix(df: pd.DataFrame) -> dict[str, float]:
    """Share of rows per expert_consensus class, in class order."""
    counts = df["expert_consensus"].value_counts(normalize=True)
    return {name: round(float(counts.get(name, 0.0)), 4) for name in schema.CONSENSUS_NAMES}
