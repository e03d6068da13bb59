"""Blend experiments with weights on the simplex fit to minimise OOF KL on the high-vote
rows, and write the submission in test.csv order.

The OOF measures each experiment's CV runs (a row: the mean of its fold's n_seeds runs); the
submission blends each experiment's test mean (summary.json's runs: full fits with
train.test_runs: full). Weights carry over between the two; a temperature does not, since a mean
of several models is softer than one model, so the calibration layer is fitted only where each
experiment's test mean averages as many runs as its OOF rows (`predictor_mismatch`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from hms.data import labels, schema
from hms.metric import kl_score, validate_submission
from hms.models.fingerprint import check_same_runs
from hms.models.workdir import DamagedFile
from hms.utils import atomic_to_csv, atomic_write_json

TARGET_COLUMNS = [f"{c}_target" for c in schema.CLASSES]
KEY = ["eeg_id", *TARGET_COLUMNS]


def read_oof(path: Path) -> pd.DataFrame:
    """An experiment's oof.csv, checked against the row count its summary.json recorded: a
    truncated file would otherwise fit the blend on fewer rows without a word."""
    way_on = f"it is rebuilt from the runs' val_pred.csv by `hms train CONFIG` (finished runs are skipped)"
    try:
        oof = pd.read_csv(path)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DamagedFile(f"{path} is damaged ({str(exc).splitlines()[0]}): {way_on}") from None
    summary = path.with_name("summary.json")
    expected = json.loads(summary.read_text()).get("n_oof") if summary.is_file() else None
    missing = [c for c in (*KEY, "fold", labels.TOTAL_VOTES, *schema.VOTE_COLUMNS) if c not in oof.columns]
    if missing or (expected is not None and len(oof) != expected) or oof[list(schema.VOTE_COLUMNS)].isna().any().any():
        raise DamagedFile(f"{path} is damaged ({len(oof):,} rows, {expected} in summary.json; missing columns "
                          f"{missing or 'none'}): {way_on}")
    return oof


def load_oofs(exp_dirs: list[Path]) -> tuple[pd.DataFrame, np.ndarray]:
    """Aligned OOF rows (keys + fold + votes) and predictions (n_models, n_rows, 6)."""
    frames = []
    for d in exp_dirs:
        path = Path(d) / "oof.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the experiment has no OOF predictions yet (train every fold first)")
        frames.append(read_oof(path).sort_values(KEY, kind="stable").reset_index(drop=True))
    base = frames[0]
    for d, f in zip(exp_dirs[1:], frames[1:]):
        # ids compared exactly (np.allclose called eeg_ids near 1e9 that differ by 1000 equal)
        same_ids = len(f) == len(base) and np.array_equal(f["eeg_id"].to_numpy(np.int64), base["eeg_id"].to_numpy(np.int64))
        if not same_ids or not np.allclose(f[TARGET_COLUMNS].to_numpy(), base[TARGET_COLUMNS].to_numpy()):
            raise ValueError(f"{d}/oof.csv covers other rows than {exp_dirs[0]}/oof.csv (different folds or data?)")
    preds = np.stack([f[list(schema.VOTE_COLUMNS)].to_numpy() for f in frames])
    return base[[*KEY, "fold", labels.TOTAL_VOTES]], preds


def blend(preds: np.ndarray, weights: np.ndarray, temperature: float = 1.0, bias=None) -> np.ndarray:
    """The weighted mean of the models' probabilities; with a temperature or a per-class bias,
    softmax(log(mean) / temperature + bias), a calibration layer on top (3rd place's idea)."""
    out = np.tensordot(weights, preds, axes=1)
    out = out / out.sum(axis=-1, keepdims=True)
    if temperature == 1.0 and bias is None:
        return out
    z = np.log(np.clip(out, 1e-15, 1.0)) / temperature + (0.0 if bias is None else np.asarray(bias))
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def fit_calibration(probs: np.ndarray, target: np.ndarray) -> tuple[float, list[float]]:
    """(temperature, per-class bias) minimising the KL of softmax(log(probs) / T + b); the bias
    is centred (a softmax ignores a shift)."""
    def loss(x):
        return kl_score(target, blend(probs[None], np.ones(1), float(np.exp(x[0])), x[1:]))

    res = minimize(loss, np.zeros(1 + probs.shape[1]), method="L-BFGS-B")
    bias = res.x[1:] - res.x[1:].mean()
    return float(np.exp(res.x[0])), bias.tolist()


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


BLENDS = ("simplex", "calibrated")  # weights only | weights, then temperature and per-class bias


def fit_blend(preds: np.ndarray, target: np.ndarray, kind: str, min_gain: float = 1e-3) -> dict:
    """Blend parameters fitted on these rows: simplex weights (equal ones unless fitting gains
    min_gain KL), then for 'calibrated' a temperature and a per-class bias on top."""
    fitted = fit_weights(preds, target)
    equal = np.full(len(preds), 1 / len(preds))
    use_fitted = kl_score(target, blend(preds, equal)) - kl_score(target, blend(preds, fitted)) >= min_gain
    weights = fitted if use_fitted else equal
    params = {"weights": weights.tolist(), "fitted_weights": fitted.tolist(),
              "used": "fitted" if use_fitted else "equal", "temperature": 1.0, "bias": None}
    if kind == "calibrated":
        params["temperature"], params["bias"] = fit_calibration(blend(preds, weights), target)
    return params


def apply_blend(preds: np.ndarray, params: dict) -> np.ndarray:
    """preds (n_models, n, 6) blended with fit_blend's (or an ensemble.json's) parameters."""
    return blend(preds, np.asarray(params["weights"]), params.get("temperature", 1.0), params.get("bias"))


def nested_oof(preds: np.ndarray, target: np.ndarray, folds: np.ndarray, rows: np.ndarray, kind: str,
               min_gain: float = 1e-3) -> np.ndarray:
    """Each fold's rows blended with parameters fitted on the other folds' `rows` only: an
    honest estimate of the blend, whose in-sample OOF score flatters it."""
    out = np.empty(preds.shape[1:])
    for k in np.unique(folds):
        fit_rows = rows & (folds != k)
        params = fit_blend(preds[:, fit_rows], target[fit_rows], kind, min_gain)
        out[folds == k] = apply_blend(preds[:, folds == k], params)
    return out


def describe_members(exp_dirs: list[Path]) -> list[dict]:
    """Per experiment, what its predictions average: {"name", "oof_runs": runs per OOF row
    (train.n_seeds), "test_runs": the runs behind test_pred.csv (summary.json)}."""
    from hms.config import load_run_config

    members = []
    for d in map(Path, exp_dirs):
        summary = d / "summary.json"
        runs = json.loads(summary.read_text()).get("runs") if summary.is_file() else None
        if not runs:
            raise FileNotFoundError(f"{summary}: no list of the runs behind test_pred.csv (train every run first)")
        check_same_runs(d, [d / r for r in runs])
        cfg = load_run_config(d / runs[0])
        members.append({"name": d.name, "oof_runs": int(cfg.train.get("n_seeds", 1)), "test_runs": list(runs)})
    return members


def submitted_predictor(member: dict) -> str:
    """What an experiment submits, in words: 'mean of 2 full fits', '1 full fit', 'mean of 5 CV runs'."""
    n, full = len(member["test_runs"]), sum(r.startswith("full") for r in member["test_runs"])
    kind = "full fit" if full == n else "CV run" if full == 0 else "run (CV and full)"
    return f"{n} {kind}" if n == 1 else f"mean of {n} {kind}s"


def predictor_mismatch(members: list[dict]) -> str | None:
    """Why a calibration fitted on the OOF would not fit the submitted predictor, or None: a mean
    of k models is softer than a mean of j != k, so a temperature fitted on one misjudges the other."""
    off = [m for m in members if len(m["test_runs"]) != m["oof_runs"]]
    if not off:
        return None
    return "; ".join(f"{m['name']} submits the {submitted_predictor(m)}, its OOF rows average "
                     f"{m['oof_runs']} run{'s' * (m['oof_runs'] > 1)}" for m in off)


CALIBRATION = ("matched", "nested", "off")  # nested CV decides where the predictors match | always | never


def calibration_choice(nested: dict, min_gain: float, mismatch: str | None, calibration: str) -> tuple[bool, str]:
    """(whether the blend gets its calibration layer, why, in words)."""
    if calibration == "off":
        return False, "calibration off (asked)"
    if calibration == "matched" and mismatch:
        return False, f"calibration off: the OOF measures another predictor than the submitted one ({mismatch})"
    if not nested:
        return False, "calibration off: one fold, no nested CV to judge it"
    gain = nested["simplex"] - nested["calibrated"]
    why = f"calibration {'on' if gain >= min_gain else 'off'}: nested CV gain {gain:.4f} KL " \
          f"({'at least' if gain >= min_gain else 'under'} {min_gain})"
    if mismatch and gain >= min_gain:  # say which predictor the layer was fitted on and which it is applied to
        why += f", fitted on the CV runs' OOF and applied to the submitted predictor ({mismatch})"
    return gain >= min_gain, why


def fit_ensemble(exp_dirs: list[Path], min_votes: int, min_gain: float = 1e-3, calibration: str = "matched") -> dict:
    """Fit the blend on the high-vote OOF rows: simplex weights, plus a calibration layer when
    nested CV (fit on the other folds, score each fold) says it gains min_gain KL and, with
    calibration 'matched', every experiment submits the same kind of predictor its OOF measures.
    The chosen blend's nested score is reported beside the in-sample one; per-fold refits show
    stability."""
    if calibration not in CALIBRATION:
        raise ValueError(f"calibration must be one of {CALIBRATION}, got {calibration!r}")
    members = describe_members(exp_dirs)
    keys, preds = load_oofs(exp_dirs)
    target = keys[TARGET_COLUMNS].to_numpy()
    high = keys[labels.TOTAL_VOTES].to_numpy() >= min_votes
    rows = high if high.any() else np.ones(len(keys), bool)
    folds = keys.fold.to_numpy()
    nested = ({kind: kl_score(target[rows], nested_oof(preds, target, folds, rows, kind, min_gain)[rows])
               for kind in BLENDS} if len(np.unique(folds)) > 1 else {})
    calibrate, why = calibration_choice(nested, min_gain, predictor_mismatch(members), calibration)
    kind = "calibrated" if calibrate else "simplex"
    params = fit_blend(preds[:, rows], target[rows], kind, min_gain)
    kl_equal = kl_score(target[rows], blend(preds[:, rows], np.full(len(exp_dirs), 1 / len(exp_dirs))))
    per_fold = {int(k): fit_weights(preds[:, rows & (keys.fold.to_numpy() == k)],
                                    target[rows & (keys.fold.to_numpy() == k)]).round(4).tolist()
                for k in sorted(keys.fold.unique()) if (rows & (keys.fold.to_numpy() == k)).any()}
    other = fit_blend(preds[:, rows], target[rows], "simplex" if calibrate else "calibrated", min_gain)
    oof = apply_blend(preds, params)
    return {
        "experiments": [Path(d).name for d in exp_dirs],
        **{k: params[k] for k in ("weights", "fitted_weights", "used", "temperature", "bias")}, "blend": kind,
        "calibration": why, "submitted": {m["name"]: submitted_predictor(m) for m in members},
        # the blend not chosen, fitted on the same rows: on data with answers its test KL checks the choice
        "alternative": {"blend": "simplex" if calibrate else "calibrated",
                        **{k: other[k] for k in ("weights", "temperature", "bias")}},
        "nested_oof_kl_high": nested, "oof_kl_high_nested": nested.get(kind, float("nan")),
        "per_fold_weights": per_fold,
        "weight_std_over_folds": np.std(list(per_fold.values()), axis=0).round(4).tolist(),
        "models_oof_kl_high": [kl_score(target[rows], p[rows]) for p in preds],
        "models_oof_kl": [kl_score(target, p) for p in preds],
        "oof_kl_high": kl_score(target[rows], oof[rows]), "oof_kl": kl_score(target, oof),
        "equal_weights_oof_kl_high": kl_equal,
    }


def describe(report: dict) -> list[str]:
    """The blend's printed lines, each score named by the predictor it measures."""
    nested = {k: round(v, 4) for k, v in report["nested_oof_kl_high"].items()}
    weights = dict(zip(report["experiments"], [round(w, 3) for w in report["weights"]]))
    submitted = ", ".join(f"{name}: {what}" for name, what in report["submitted"].items())
    return [f"ensemble high-vote OOF KL of the CV runs' {report['blend']} blend: {report['oof_kl_high']:.4f} "
            f"in-sample, {report['oof_kl_high_nested']:.4f} by nested CV (nested: {nested})",
            f"ensemble weights {weights} ({report['used']}); submitted: that blend of {submitted}; "
            f"{report['calibration']}"]


def blend_test(exp_dirs: list[Path], params: dict, test: pd.DataFrame) -> pd.DataFrame:
    """The submission: one row per test.csv row, in its order."""
    preds = []
    for d in exp_dirs:
        t = pd.read_csv(Path(d) / "test_pred.csv")
        if not np.array_equal(t["eeg_id"].to_numpy(), test["eeg_id"].to_numpy()):
            raise ValueError(f"{d}/test_pred.csv rows do not follow test.csv (stale predictions?)")
        preds.append(t[list(schema.VOTE_COLUMNS)].to_numpy())
    sub = pd.DataFrame(apply_blend(np.stack(preds), params), columns=list(schema.VOTE_COLUMNS))
    sub.insert(0, "eeg_id", test["eeg_id"].to_numpy())
    validate_submission(sub)
    return sub


def write_submission(exp_dirs: list[Path], test: pd.DataFrame, out_dir: Path, min_votes: int,
                     calibration: str = "matched") -> dict:
    """calibration: ensemble.calibration (nested | matched | off; see fit_ensemble)."""
    report = fit_ensemble(exp_dirs, min_votes, calibration=calibration)
    sub = blend_test(exp_dirs, report, test)
    atomic_to_csv(sub, Path(out_dir) / "submission.csv")
    atomic_write_json(Path(out_dir) / "ensemble.json", report)
    return report
