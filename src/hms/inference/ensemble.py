"""Blend experiments with weights on the simplex fit to minimise OOF KL on the high-vote
rows, and write the submission in test.csv order."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from hms.data import labels, schema
from hms.metric import kl_score, validate_submission
from hms.utils import atomic_to_csv, atomic_write_json

TARGET_COLUMNS = [f"{c}_target" for c in schema.CLASSES]
KEY = ["eeg_id", *TARGET_COLUMNS]


def load_oofs(exp_dirs: list[Path]) -> tuple[pd.DataFrame, np.ndarray]:
    """Aligned OOF rows (keys + fold + votes) and predictions (n_models, n_rows, 6)."""
    frames = []
    for d in exp_dirs:
        path = Path(d) / "oof.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the experiment has no OOF predictions yet (train every fold first)")
        frames.append(pd.read_csv(path).sort_values(KEY, kind="stable").reset_index(drop=True))
    base = frames[0]
    for d, f in zip(exp_dirs[1:], frames[1:]):
        # ids compared exactly (np.allclose called eeg_ids near 1e9 that differ by 1000 equal)
        same_ids = len(f) == len(base) and np.array_equal(f["eeg_id"].to_numpy(np.int64), base["eeg_id"].to_numpy(np.int64))
        if not same_ids or not np.allclose(f[TARGET_COLUMNS].to_numpy(), base[TARGET_COLUMNS].to_numpy()):
            raise ValueError(f"{d}/oof.csv covers other rows than {exp_dirs[0]}/oof.csv (different folds or data?)")
    preds = np.stack([f[list(schema.VOTE_COLUMNS)].to_numpy() for f in frames])
    return base[[*KEY, "fold", labels.TOTAL_VOTES]], preds


def blend(preds: np.ndarray, weights: np.ndarray) -> np.ndarray:
    out = np.tensordot(weights, preds, axes=1)
    return out / out.sum(axis=-1, keepdims=True)


def fit_weights(preds: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Simplex weights (softmax-parametrised) minimising KL of the linear blend."""
    n = preds.shape[0]
    if n == 1:
        return np.ones(1)

    def loss(z):
        w = np.exp(z - z.max())
        return kl_score(target, blend(preds, w / w.sum()))

    res = minimize(loss, np.zeros(n), method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-7, "maxiter": 2000})
    w = np.exp(res.x - res.x.max())
    return w / w.sum()


def fit_ensemble(exp_dirs: list[Path], min_votes: int, min_gain: float = 1e-3) -> dict:
    """Fit weights on the high-vote OOF rows; report per-fold refits for stability and fall
    back to equal weights when the fitted ones gain less than min_gain KL."""
    keys, preds = load_oofs(exp_dirs)
    target = keys[TARGET_COLUMNS].to_numpy()
    high = keys[labels.TOTAL_VOTES].to_numpy() >= min_votes
    rows = high if high.any() else np.ones(len(keys), bool)
    fitted = fit_weights(preds[:, rows], target[rows])
    equal = np.full(len(exp_dirs), 1 / len(exp_dirs))
    kl_fit = kl_score(target[rows], blend(preds[:, rows], fitted))
    kl_equal = kl_score(target[rows], blend(preds[:, rows], equal))
    use_fitted = kl_equal - kl_fit >= min_gain
    weights = fitted if use_fitted else equal
    per_fold = {int(k): fit_weights(preds[:, rows & (keys.fold.to_numpy() == k)],
                                    target[rows & (keys.fold.to_numpy() == k)]).round(4).tolist()
                for k in sorted(keys.fold.unique()) if (rows & (keys.fold.to_numpy() == k)).any()}
    oof = blend(preds, weights)
    return {
        "experiments": [Path(d).name for d in exp_dirs],
        "weights": weights.tolist(), "fitted_weights": fitted.tolist(), "used": "fitted" if use_fitted else "equal",
        "per_fold_weights": per_fold,
        "weight_std_over_folds": np.std(list(per_fold.values()), axis=0).round(4).tolist(),
        "models_oof_kl_high": [kl_score(target[rows], p[rows]) for p in preds],
        "models_oof_kl": [kl_score(target, p) for p in preds],
        "oof_kl_high": kl_score(target[rows], oof[rows]), "oof_kl": kl_score(target, oof),
        "equal_weights_oof_kl_high": kl_equal,
    }


def blend_test(exp_dirs: list[Path], weights: list[float], test: pd.DataFrame) -> pd.DataFrame:
    """The submission: one row per test.csv row, in its order."""
    preds = []
    for d in exp_dirs:
        t = pd.read_csv(Path(d) / "test_pred.csv")
        if not np.array_equal(t["eeg_id"].to_numpy(), test["eeg_id"].to_numpy()):
            raise ValueError(f"{d}/test_pred.csv rows do not follow test.csv (stale predictions?)")
        preds.append(t[list(schema.VOTE_COLUMNS)].to_numpy())
    sub = pd.DataFrame(blend(np.stack(preds), np.asarray(weights)), columns=list(schema.VOTE_COLUMNS))
    sub.insert(0, "eeg_id", test["eeg_id"].to_numpy())
    validate_submission(sub)
    return sub


def write_submission(exp_dirs: list[Path], test: pd.DataFrame, out_dir: Path, min_votes: int) -> dict:
    report = fit_ensemble(exp_dirs, min_votes)
    sub = blend_test(exp_dirs, report["weights"], test)
    atomic_to_csv(sub, Path(out_dir) / "submission.csv")
    atomic_write_json(Path(out_dir) / "ensemble.json", report)
    return report
