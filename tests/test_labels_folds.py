import numpy as np
import pandas as pd
import pytest

from conftest import train_frame
from hms.data import folds, labels, schema


def test_targets_are_normalised_votes_with_counts():
    df = labels.add_targets(train_frame())
    probs = df[list(schema.VOTE_COLUMNS)].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0)
    raw = train_frame()[list(schema.VOTE_COLUMNS)].to_numpy()
    np.testing.assert_allclose(df[labels.TOTAL_VOTES], raw.sum(1))


def test_dedup_keeps_one_row_per_eeg_and_vote_vector():
    df = train_frame()
    out = labels.dedup_per_eeg(df)
    assert out["eeg_id"].is_unique  # the fixture gives each eeg_id one vote vector
    assert set(out["eeg_id"]) == set(df["eeg_id"])


def test_sample_weights_downweight_low_vote_rows():
    df = labels.add_targets(train_frame())
    w = labels.sample_weights(df, min_votes=10, low_vote_weight=0.25)
    assert set(np.unique(w)) <= {0.25, 1.0}
    np.testing.assert_array_equal(w == 1.0, df[labels.TOTAL_VOTES].to_numpy() >= 10)


def test_folds_never_share_a_patient_and_cover_every_eeg(tmp_path):
    train = train_frame(n_patients=30)
    f = folds.make_folds(train, n_folds=5, seed=0)
    assert f.groupby("patient_id")["fold"].nunique().max() == 1
    assert sorted(f["eeg_id"]) == sorted(train["eeg_id"].unique())
    assert set(f["fold"]) == set(range(5))


def test_folds_are_saved_and_reused(tmp_path):
    train = train_frame(n_patients=20)
    path = tmp_path / "folds.csv"
    first = folds.load_or_make_folds(train, path, 4, seed=0)
    again = folds.load_or_make_folds(train, path, 4, seed=123)  # another seed must not reshuffle
    pd.testing.assert_frame_equal(first.reset_index(drop=True), again.reset_index(drop=True))


def test_too_few_patients_is_a_clear_error():
    with pytest.raises(ValueError, match="3 patients cannot fill 5 folds"):
        folds.make_folds(train_frame(n_patients=3), n_folds=5, seed=0)


def test_config_overrides_and_env(monkeypatch, tmp_path):
    from hms.config import ConfigError, load_config

    monkeypatch.setenv("HMS_WORK_DIR", str(tmp_path))
    cfg = load_config([], ["folds.n_folds=3", "signal.bandpass=[1,30]"])
    assert cfg.folds.n_folds == 3 and list(cfg.signal.bandpass) == [1, 30]
    assert cfg.paths.work_dir == str(tmp_path)
    with pytest.raises(ConfigError, match="key=value"):
        load_config([], ["folds.n_folds"])
    with pytest.raises(ConfigError, match="not found"):
        load_config([tmp_path / "nope.yaml"])
