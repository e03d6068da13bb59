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


def test_folds_are_saved_and_reused_until_the_seed_changes(tmp_path, capsys):
    train = train_frame(n_patients=20)
    path = tmp_path / "folds.csv"
    first = folds.load_or_make_folds(train, path, 4, seed=0)
    again = folds.load_or_make_folds(train, path, 4, seed=0)
    pd.testing.assert_frame_equal(first.reset_index(drop=True), again.reset_index(drop=True))
    other = folds.load_or_make_folds(train, path, 4, seed=123)  # a new folds.seed must take effect
    assert "rebuilt" in capsys.readouterr().out and path.with_suffix(".stale.csv").is_file()
    pd.testing.assert_frame_equal(other.reset_index(drop=True), folds.make_folds(train, 4, 123))
    assert not first.set_index("eeg_id").fold.sort_index().equals(other.set_index("eeg_id").fold.sort_index())


def test_an_eeg_id_with_two_patients_is_caught_on_the_raw_rows():
    train = train_frame(n_patients=10)
    eeg = train.eeg_id.value_counts().index[0]  # an eeg_id with several sub-window rows
    train.loc[train.index[train.eeg_id == eeg][-1], "patient_id"] = 99_999
    with pytest.raises(ValueError, match=f"eeg_id {eeg} belongs to 2 patient_ids"):
        folds.make_folds(train, n_folds=5, seed=0)


def test_prior_is_a_mean_over_items_not_rows():
    """A long EEG with many sub-windows must count once, as it does in validation and scoring."""
    rows = [{"eeg_id": 1, "eeg_sub_id": k, "seizure_vote": 12, "other_vote": 0} for k in range(9)]
    rows += [{"eeg_id": 2, "eeg_sub_id": 0, "seizure_vote": 0, "other_vote": 12}]
    df = pd.DataFrame(rows).assign(**{c: 0 for c in schema.VOTE_COLUMNS[1:5]})
    p = labels.prior(labels.add_targets(df), min_votes=10)
    np.testing.assert_allclose(p[[0, 5]], [0.5, 0.5])  # rows would say 0.9 / 0.1


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
