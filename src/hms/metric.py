"""The competition metric, exactly as the official scorer computes it.

For each row: q = votes / sum(votes), p clipped to [1e-15, 1 - 1e-15] (only p),
loss = sum over classes with q > 0 of q * log(q / p); score = mean over rows.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from hms.data import schema

EPS = 1e-15


class ParticipantVisibleError(ValueError):
    """A submission the official scorer would reject (named as in Kaggle's metric)."""


def normalise_votes(votes: np.ndarray) -> np.ndarray:
    votes = np.asarray(votes, dtype=np.float64)
    return votes / votes.sum(axis=1, keepdims=True)


def kl_rows(target: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Row-wise KL(target || pred); target rows are normalised here, pred only clipped."""
    q = normalise_votes(target)
    p = np.clip(np.asarray(pred, dtype=np.float64), EPS, 1 - EPS)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(q > 0, q * np.log(q / p), 0.0)
    return terms.sum(axis=1)


def kl_score(target: np.ndarray, pred: np.ndarray) -> float:
    """Mean KL over rows: the leaderboard number for these arrays."""
    target, pred = np.asarray(target), np.asarray(pred)
    if target.shape != pred.shape or target.ndim != 2:
        raise ValueError(f"target {target.shape} and prediction {pred.shape} must be equal 2-D shapes")
    return float(kl_rows(target, pred).mean())


def validate_submission(sub: pd.DataFrame, columns=schema.VOTE_COLUMNS, atol: float = 1e-5) -> None:
    """The official scorer's checks: numeric, inside [0, 1], rows summing to 1."""
    missing = [c for c in columns if c not in sub.columns]
    if missing:
        raise ParticipantVisibleError(f"submission is missing columns {missing}")
    values = sub[list(columns)]
    if not all(pd.api.types.is_numeric_dtype(values[c]) for c in columns):
        raise ParticipantVisibleError("all submission values must be numeric")
    arr = values.to_numpy(dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ParticipantVisibleError("submission contains NaN or infinite values")
    if arr.min() < 0 or arr.max() > 1:
        raise ParticipantVisibleError("all submission values must be between 0 and 1")
    bad = np.flatnonzero(~np.isclose(arr.sum(axis=1), 1.0, atol=atol))
    if len(bad):
        raise ParticipantVisibleError(
            f"submission rows must sum to 1: {len(bad)} do not, first at row {int(bad[0])}"
        )


def _align(solution: pd.DataFrame, submission: pd.DataFrame, key: str) -> pd.DataFrame:
    """Pair rows by eeg_id, keeping duplicated ids in their order of appearance."""
    for name, df in (("solution", solution), ("submission", submission)):
        if key not in df.columns:
            raise ParticipantVisibleError(f"{name} has no {key} column")
    sol = solution.assign(_k=solution.groupby(key).cumcount())
    sub = submission.assign(_k=submission.groupby(key).cumcount())
    merged = sol.merge(sub, on=[key, "_k"], how="left", suffixes=("_true", "_pred"), indicator=True)
    missing = merged.loc[merged["_merge"] != "both", key]
    if len(missing):
        raise ParticipantVisibleError(
            f"submission lacks {len(missing)} rows of the solution, e.g. {key}={int(missing.iloc[0])}"
        )
    if len(sub) != len(sol):
        raise ParticipantVisibleError(f"submission has {len(sub)} rows, solution has {len(sol)}")
    return merged


def row_kl_frames(solution: pd.DataFrame, submission: pd.DataFrame, key: str = "eeg_id") -> np.ndarray:
    """Each solution row's KL, in the solution's row order (both frames with eeg_id + *_vote)."""
    validate_submission(submission)
    merged = _align(solution, submission, key)
    true = merged[[f"{c}_true" for c in schema.VOTE_COLUMNS]].to_numpy()
    pred = merged[[f"{c}_pred" for c in schema.VOTE_COLUMNS]].to_numpy()
    return kl_rows(true, pred)


def score_frames(solution: pd.DataFrame, submission: pd.DataFrame, key: str = "eeg_id") -> float:
    """Score a submission frame against a solution frame (both with eeg_id + *_vote)."""
    return float(row_kl_frames(solution, submission, key).mean())


def paired_bootstrap(rows_a: np.ndarray, rows_b: np.ndarray, draws: int = 10_000,
                     seed: int = 0) -> tuple[float, float, float]:
    """B's score relative to A's (score_b / score_a - 1) and its 95% interval, resampling the rows
    both were scored on together: one test set cannot rank two models closer than this."""
    rows_a, rows_b = np.asarray(rows_a, np.float64), np.asarray(rows_b, np.float64)
    if rows_a.shape != rows_b.shape or rows_a.ndim != 1 or not len(rows_a):
        raise ValueError(f"paired rows must be two equal, non-empty 1-D arrays: {rows_a.shape} and {rows_b.shape}")
    picks = np.random.default_rng(seed).integers(0, len(rows_a), size=(draws, len(rows_a)))
    change = rows_b[picks].mean(axis=1) / rows_a[picks].mean(axis=1) - 1
    low, high = np.percentile(change, [2.5, 97.5])
    return float(rows_b.mean() / rows_a.mean() - 1), float(low), float(high)
