import json

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


def _write_oofs(root, target, model_preds, folds, test_runs=("fold0", "fold1"), n_seeds=1):
    """Experiments as collect_experiment leaves them: oof.csv, summary.json's test runs, and the
    first test run's config.yaml (its n_seeds: the runs each OOF row averages)."""
    dirs = []
    for i, preds in enumerate(model_preds):
        df = pd.DataFrame({"eeg_id": np.arange(len(target)), "fold": folds, "total_votes": 12})
        df[list(schema.VOTE_COLUMNS)] = preds
        df[[f"{c}_target" for c in schema.CLASSES]] = target
        d = root / f"m{i}"
        (d / test_runs[0]).mkdir(parents=True)
        df.to_csv(d / "oof.csv", index=False)
        (d / "summary.json").write_text(json.dumps({"name": d.name, "complete": True, "runs": list(test_runs)}))
        (d / test_runs[0] / "config.yaml").write_text(f"train:\n  n_seeds: {n_seeds}\n")
        dirs.append(d)
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
    report = fit_ensemble(_write_oofs(tmp_path / "a", target, [overconfident, overconfident], folds, ("fold0",)),
                          min_votes=10)
    assert report["blend"] == "calibrated" and report["temperature"] > 1.5  # undoes the sharpening
    assert report["nested_oof_kl_high"]["calibrated"] < report["nested_oof_kl_high"]["simplex"]
    assert report["oof_kl_high"] <= report["oof_kl_high_nested"]  # in-sample flatters
    (tmp_path / "b").mkdir()
    honest = fit_ensemble(_write_oofs(tmp_path / "b", target, [target, target], folds, ("fold0",)), min_votes=10)
    assert honest["blend"] == "simplex" and honest["temperature"] == 1.0 and honest["bias"] is None
    preds = np.stack([target, overconfident])
    np.testing.assert_allclose(blend(preds, np.array([0.5, 0.5]), 1.0, None), blend(preds, np.array([0.5, 0.5])))


def test_the_calibration_is_fitted_only_for_the_predictor_the_oof_measures(tmp_path):
    """Two full fits per experiment submit a mean of 2 models; the OOF rows are 1 model each: the
    temperature that suits one model does not suit the mean, so the blend stays uncalibrated
    unless the OOF rows average as many runs (train.n_seeds) as the submission does."""
    from hms.inference.ensemble import describe, fit_ensemble

    rng = np.random.default_rng(1)
    target = rng.dirichlet(np.ones(6) * 0.7, 500)
    folds = np.arange(500) % 5
    overconfident = _softmax(2.5 * np.log(np.clip(target, 1e-6, 1)) + rng.normal(0, 0.3, target.shape))
    full = ("full0", "full1")
    (tmp_path / "a").mkdir()
    two_fits = _write_oofs(tmp_path / "a", target, [overconfident, overconfident], folds, full)
    report = fit_ensemble(two_fits, min_votes=10)
    assert report["blend"] == "simplex" and report["temperature"] == 1.0 and report["bias"] is None
    assert report["nested_oof_kl_high"]["calibrated"] < report["nested_oof_kl_high"]["simplex"]  # it would help the OOF
    assert report["submitted"] == {"m0": "mean of 2 full fits", "m1": "mean of 2 full fits"}
    assert "m0 submits the mean of 2 full fits, its OOF rows average 1 run" in report["calibration"]
    lines = describe(report)
    assert "OOF KL of the CV runs' simplex blend" in lines[0] and f"{report['oof_kl_high_nested']:.4f} by nested CV" in lines[0]
    assert "submitted: that blend of m0: mean of 2 full fits, m1: mean of 2 full fits; calibration off" in lines[1]
    nested = fit_ensemble(two_fits, min_votes=10, calibration="nested")  # ensemble.calibration's default
    assert nested["blend"] == "calibrated"
    assert "fitted on the CV runs' OOF and applied to the submitted predictor (m0 submits the mean of 2" \
        in nested["calibration"]  # the printed line says what the layer was fitted on and applied to
    (tmp_path / "b").mkdir()
    seeds = fit_ensemble(_write_oofs(tmp_path / "b", target, [overconfident, overconfident], folds, full, n_seeds=2),
                         min_votes=10)
    assert seeds["blend"] == "calibrated" and "nested CV gain" in seeds["calibration"]
    with pytest.raises(ValueError, match="calibration must be one of"):
        fit_ensemble(two_fits, min_votes=10, calibration="always")
    (two_fits[0] / "summary.json").unlink()
    with pytest.raises(FileNotFoundError, match="summary.json: no list of the runs"):
        fit_ensemble(two_fits, min_votes=10)


@pytest.mark.slow
def test_the_main_job_names_the_predictor_each_blend_score_measures(tiny_synth, tmp_path, capsys):
    """`hms run` on data with answers, ensemble.calibration=matched: the printed lines say the
    nested score is the CV runs' blend, what each experiment submits, why the calibration is off,
    and what the blend not chosen would score on the test."""
    from hms.jobs.run import run_all

    config = tmp_path / "trees.yaml"
    config.write_text("model: {kind: qeeg_trees, max_iter: 20, min_samples_leaf: 5}\n"
                      "train:\n  full_fits: 2\n  test_runs: full\n"
                      "  stages: [{rows: all, epochs: 1, lr: 0.0, low_vote_weight: 0.5}]\n")
    out = run_all([str(config)], [f"paths.data_dir={tiny_synth}", f"paths.work_dir={tmp_path / 'work'}",
                                  f"paths.submission_dir={tmp_path / 'sub'}", "folds.n_folds=2", "input.downsample=4",
                                  "ensemble.calibration=matched"])  # the config reaches the blend
    printed = capsys.readouterr().out
    report = out["ensemble"]
    assert report["submitted"] == {"trees": "mean of 2 full fits"} and report["blend"] == "simplex"
    assert "OOF KL of the CV runs' simplex blend" in printed
    assert ("submitted: that blend of trees: mean of 2 full fits; calibration off: the OOF measures another "
            "predictor than the submitted one (trees submits the mean of 2 full fits, its OOF rows average 1 run)") in printed
    ensemble_kl = out["rows"][-1]["test_kl"]
    assert f"test KL of the submitted simplex blend {ensemble_kl:.4f}; the calibrated one would score" in printed
    saved = json.loads((tmp_path / "sub" / "ensemble.json").read_text())
    assert saved["alternative"]["blend"] == "calibrated" and saved["alternative"]["temperature"] != 1.0
