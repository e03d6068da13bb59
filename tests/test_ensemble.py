import numpy as np
import pandas as pd
import pytest

from hms.data import schema
from hms.inference.ensemble import load_oofs


def _oof(eeg_ids):
    n = len(eeg_ids)
    rng = np.random.default_rng(0)
    target = rng.dirichlet(np.ones(6), n)
    df = pd.DataFrame({"eeg_id": eeg_ids, "fold": 0, "total_votes": 12})
    df[list(schema.VOTE_COLUMNS)] = rng.dirichlet(np.ones(6), n)
    df[[f"{c}_target" for c in schema.CLASSES]] = target
    return df


def test_oof_rows_align_on_exact_ids_near_1e9(tmp_path):
    ids = 1_000_000_000 + np.arange(5) * 10
    for name, frame in (("a", _oof(ids)), ("b", _oof(ids)), ("c", _oof(ids + 1000))):
        (tmp_path / name).mkdir()
        frame.to_csv(tmp_path / name / "oof.csv", index=False)
    keys, preds = load_oofs([tmp_path / "a", tmp_path / "b"])
    assert preds.shape == (2, 5, 6)
    with pytest.raises(ValueError, match="covers other rows"):  # np.allclose called these equal
        load_oofs([tmp_path / "a", tmp_path / "c"])


def _write_oofs(root, target, model_preds, folds):
    dirs = []
    for i, preds in enumerate(model_preds):
        df = pd.DataFrame({"eeg_id": np.arange(len(target)), "fold": folds, "total_votes": 12})
        df[list(schema.VOTE_COLUMNS)] = preds
        df[[f"{c}_target" for c in schema.CLASSES]] = target
        (root / f"m{i}").mkdir()
        df.to_csv(root / f"m{i}" / "oof.csv", index=False)
        dirs.append(root / f"m{i}")
    return dirs


def _softmax(z):
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def test_nested_oof_never_sees_the_scored_folds_targets():
    from hms.inference.ensemble import nested_oof

    rng = np.random.default_rng(0)
    target = rng.dirichlet(np.ones(6), 300)
    preds = np.stack([_softmax(2 * np.log(target) + rng.normal(0, 0.5, target.shape)) for _ in range(2)])
    folds, rows = np.arange(300) % 5, np.ones(300, bool)
    base = nested_oof(preds, target, folds, rows, "calibrated")
    shuffled = target.copy()
    shuffled[folds == 2] = rng.dirichlet(np.ones(6), int((folds == 2).sum()))  # other answers for fold 2
    again = nested_oof(preds, shuffled, folds, rows, "calibrated")
    np.testing.assert_array_equal(base[folds == 2], again[folds == 2])
    assert not np.allclose(base[folds != 2], again[folds != 2])


def test_calibration_layer_is_used_only_when_nested_cv_says_it_helps(tmp_path):
    from hms.inference.ensemble import blend, fit_ensemble

    rng = np.random.default_rng(1)
    target = rng.dirichlet(np.ones(6) * 0.7, 500)
    folds = np.arange(500) % 5
    overconfident = _softmax(2.5 * np.log(np.clip(target, 1e-6, 1)) + rng.normal(0, 0.3, target.shape))
    (tmp_path / "a").mkdir()
    report = fit_ensemble(_write_oofs(tmp_path / "a", target, [overconfident, overconfident], folds), min_votes=10)
    assert report["blend"] == "calibrated" and report["temperature"] > 1.5  # undoes the sharpening
    assert report["nested_oof_kl_high"]["calibrated"] < report["nested_oof_kl_high"]["simplex"]
    assert report["oof_kl_high"] <= report["oof_kl_high_nested"]  # in-sample flatters
    (tmp_path / "b").mkdir()
    honest = fit_ensemble(_write_oofs(tmp_path / "b", target, [target, target], folds), min_votes=10)
    assert honest["blend"] == "simplex" and honest["temperature"] == 1.0 and honest["bias"] is None
    preds = np.stack([target, overconfident])
    np.testing.assert_allclose(blend(preds, np.array([0.5, 0.5]), 1.0, None), blend(preds, np.array([0.5, 0.5])))
