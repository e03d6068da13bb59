"""The embedded simulator: Kaggle layout, dtypes, windows, answers, determinism, labels."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from hms.data import schema
from hms.data import synthetic as synth

N_EEGS, N_TEST, SEED = 12, 4, 7
REAL = json.loads((Path(__file__).parent / "fixtures" / "real_files.json").read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ds"
    summary = synth.generate(out, n_eegs=N_EEGS, n_test_eegs=N_TEST, seed=SEED, progress=False, workers=1)
    return out, summary


@pytest.fixture(scope="module")
def tables(data):
    out, _ = data
    return (pd.read_csv(out / schema.TRAIN_CSV), pd.read_csv(out / schema.TEST_CSV),
            pd.read_csv(out / schema.SAMPLE_SUBMISSION_CSV))


def _eeg(out, split, eeg_id):
    d = schema.TRAIN_EEG_DIR if split == "train" else schema.TEST_EEG_DIR
    return pd.read_parquet(out / d / f"{eeg_id}.parquet")


def _spec(out, split, spec_id):
    d = schema.TRAIN_SPEC_DIR if split == "train" else schema.TEST_SPEC_DIR
    return pd.read_parquet(out / d / f"{spec_id}.parquet")


def test_csv_columns_and_counts(data, tables):
    out, summary = data
    train, test, sub = tables
    assert tuple(train.columns) == schema.TRAIN_COLUMNS
    assert tuple(test.columns) == schema.TEST_COLUMNS
    assert tuple(sub.columns) == schema.SUBMISSION_COLUMNS
    assert train["eeg_id"].nunique() == N_EEGS and len(test) == N_TEST == test["eeg_id"].nunique()
    assert summary["train_rows"] == len(train) and summary["test_eegs"] == N_TEST
    assert (sub["eeg_id"].to_numpy() == test["eeg_id"].to_numpy()).all()
    assert np.allclose(sub[list(schema.VOTE_COLUMNS)].to_numpy(), 1 / 6)
    for col in schema.INT_COLUMNS + schema.VOTE_COLUMNS:
        assert pd.api.types.is_integer_dtype(train[col]), col
    for col in schema.FLOAT_COLUMNS:
        assert pd.api.types.is_float_dtype(train[col]), col


def test_every_file_present_and_nothing_else(data, tables):
    out, _ = data
    train, test, _ = tables
    expect = {
        schema.TRAIN_EEG_DIR: set(train["eeg_id"]), schema.TRAIN_SPEC_DIR: set(train["spectrogram_id"]),
        schema.TEST_EEG_DIR: set(test["eeg_id"]), schema.TEST_SPEC_DIR: set(test["spectrogram_id"]),
    }
    for d, ids in expect.items():
        names = {p.name for p in (out / d).iterdir()}  # also catches leftover temp files
        assert names == {f"{i}.parquet" for i in ids}, d


def test_eeg_parquet_format(data, tables):
    out, _ = data
    train, test, _ = tables
    for split, ids in (("train", train["eeg_id"].unique()[:4]), ("test", test["eeg_id"])):
        for eeg_id in ids:
            path = out / (schema.TRAIN_EEG_DIR if split == "train" else schema.TEST_EEG_DIR) / f"{eeg_id}.parquet"
            arrow = pq.read_schema(path)
            assert arrow.names == REAL["eeg_columns"]  # no index column
            assert all(str(t) == "float" for t in arrow.types)  # float32
            df = _eeg(out, split, eeg_id)
            assert len(df) % 200 == 0 and len(df) >= REAL["eeg_rows_test"]
            if split == "test":
                assert len(df) == REAL["eeg_rows_test"]
            values = df.to_numpy(np.float64)
            finite = values[np.isfinite(values)]
            assert np.allclose(finite * 100, np.round(finite * 100), atol=1e-2)  # multiples of 0.01 uV


def test_spectrogram_parquet_format(data, tables):
    out, _ = data
    train, test, _ = tables
    for split, ids in (("train", train["spectrogram_id"].unique()[:3]), ("test", test["spectrogram_id"])):
        for spec_id in ids:
            path = out / (schema.TRAIN_SPEC_DIR if split == "train" else schema.TEST_SPEC_DIR) / f"{spec_id}.parquet"
            arrow = pq.read_schema(path)
            assert arrow.names == ["time", *REAL["spectrogram_columns"]]
            assert str(arrow.field("time").type) == REAL["spectrogram_time_dtype"][split]
            assert all(str(t) == "float" for t in arrow.types[1:])
            df = _spec(out, split, spec_id)
            assert np.array_equal(df["time"].to_numpy(), np.arange(1, 2 * len(df), 2))
            if split == "test":
                assert len(df) == REAL["spectrogram_rows_test"]
                assert df["time"].iloc[[0, -1]].tolist() == REAL["spectrogram_time_first_last_test"]
            power = df[REAL["spectrogram_columns"]].to_numpy(np.float64)
            finite = power[np.isfinite(power)]
            assert np.allclose(finite * 100, np.round(finite * 100), atol=1e-2)  # multiples of 0.01
            # raw power in uV^2/Hz: the starter's log-clip range exp(-4)..exp(8) must be relevant
            med = np.nanmedian(np.log(power[power > 0]))
            assert -4 < med < 8


def test_train_spectrograms_have_whole_nan_rows_only(data, tables):
    """As in the real train spectrogram: runs of rows NaN in every column, no partly-NaN row."""
    out, _ = data
    train, _, _ = tables
    whole_nan_runs = 0
    for spec_id in train["spectrogram_id"].unique():
        nan = _spec(out, "train", spec_id)[REAL["spectrogram_columns"]].isna().to_numpy()
        assert (nan.all(1) == nan.any(1)).all(), spec_id
        whole_nan_runs += int(nan.all(1).any())
    assert whole_nan_runs >= 1


def test_ids_and_shared_spectrograms_as_in_real_train_csv(tables):
    train, _, _ = tables
    assert train["label_id"].max() > 2**31  # int64, as the real label_ids
    shared = train.groupby("spectrogram_id").eeg_id.nunique()
    spec_id = shared[shared > 1].index[0]  # one spectrogram serving several eeg_ids, like 1219001
    rows = train[train.spectrogram_id == spec_id]
    assert rows.spectrogram_sub_id.tolist() == list(range(len(rows)))  # continues across its EEGs
    assert rows.spectrogram_label_offset_seconds.is_monotonic_increasing
    assert (rows.groupby("eeg_id").eeg_sub_id.min() == 0).all()  # each EEG's own ids restart


def test_every_window_inside_its_files_and_centres_shared(data, tables):
    out, _ = data
    train, _, _ = tables
    for eeg_id, rows in train.groupby("eeg_id"):
        n_sec = len(_eeg(out, "train", eeg_id)) / schema.SAMPLING_RATE
        spec = _spec(out, "train", rows["spectrogram_id"].iloc[0])
        spec_end = spec["time"].iloc[-1] + 1  # last frame covers up to here
        assert (rows["eeg_label_offset_seconds"] >= 0).all()
        assert (rows["eeg_label_offset_seconds"] + schema.EEG_WINDOW_SECONDS <= n_sec).all()
        assert (rows["spectrogram_label_offset_seconds"] >= 0).all()
        assert (rows["spectrogram_label_offset_seconds"] + schema.SPEC_WINDOW_SECONDS <= spec_end).all()
        # one EEG file sits at one place in its recording: the two offsets move together
        shift = rows["spectrogram_label_offset_seconds"] - rows["eeg_label_offset_seconds"]
        assert shift.nunique() == 1
        assert list(rows["eeg_sub_id"]) == list(range(len(rows)))
    for _, rows in train.groupby("spectrogram_id"):
        assert sorted(rows["spectrogram_sub_id"]) == list(range(len(rows)))


def test_ids_distinct_and_patients_disjoint(tables):
    train, test, _ = tables
    assert train["label_id"].is_unique
    assert not set(train["eeg_id"]) & set(test["eeg_id"])
    assert not set(train["patient_id"]) & set(test["patient_id"])
    assert train["eeg_id"].max() < 2**32 and train["patient_id"].max() < 65_536
    # several sub-windows per eeg_id and shared spectrograms, as on Kaggle
    assert train.groupby("eeg_id").size().max() > 1
    assert train["spectrogram_id"].nunique() < train["eeg_id"].nunique()


def test_votes_consistent_with_consensus(tables):
    train, _, _ = tables
    votes = train[list(schema.VOTE_COLUMNS)].to_numpy()
    assert (train["expert_consensus"].to_numpy() == synth.consensus(votes)).all()
    n = votes.sum(1)
    assert (((n >= 1) & (n <= 7)) | ((n >= 10) & (n <= 28))).all()


def test_answers_files(data, tables):
    out, _ = data
    train, test, _ = tables
    pstar = pd.read_csv(out / schema.ANSWERS_DIR / schema.TRAIN_ANSWERS_CSV)
    answers = pd.read_csv(out / schema.ANSWERS_DIR / schema.TEST_ANSWERS_CSV)
    assert list(pstar.columns) == ["label_id", *schema.PSTAR_COLUMNS]
    assert list(answers.columns) == ["eeg_id", *schema.PSTAR_COLUMNS, *schema.VOTE_COLUMNS]
    assert (pstar["label_id"].to_numpy() == train["label_id"].to_numpy()).all()
    assert (answers["eeg_id"].to_numpy() == test["eeg_id"].to_numpy()).all()
    for df in (pstar, answers):
        p = df[list(schema.PSTAR_COLUMNS)].to_numpy()
        assert np.allclose(p.sum(1), 1) and (p > 0).all()
    n = answers[list(schema.VOTE_COLUMNS)].sum(axis=1)
    assert n.between(3, 20).all()


def test_summary_kl(data):
    out, summary = data
    kl = synth.oracle_and_prior_kl(out)
    assert kl["oracle_kl_test"] == pytest.approx(summary["oracle_kl_test"])
    assert 0 <= kl["oracle_kl_test"] < kl["prior_kl_test"]
    assert summary["bytes_on_disk"] > 0


def test_nan_stretches(data, tables):
    out, _ = data
    train, _, _ = tables
    runs = []
    for eeg_id in train["eeg_id"].unique():
        df = _eeg(out, "train", eeg_id)
        isnan = df.isna().all(axis=1).to_numpy()
        if isnan.any():
            runs.append((isnan.sum(), len(df)))
    assert runs, "no EEG file with a NaN stretch"
    assert all(schema.SAMPLING_RATE <= k <= n // 2 for k, n in runs)  # a stretch, not a whole file
    spec_nan = [_spec(out, "train", s).isna().to_numpy().any() for s in train["spectrogram_id"].unique()]
    assert any(spec_nan)


def test_spectrogram_agrees_with_its_eeg(data, tables):
    out, _ = data
    train, _, _ = tables
    row = train.iloc[0]
    eeg = _eeg(out, "train", row["eeg_id"])
    spec = _spec(out, "train", row["spectrogram_id"])[list(schema.SPEC_COLUMNS)].to_numpy()
    electrodes = np.nan_to_num(eeg[list(synth.ELECTRODES)].to_numpy())
    mine = synth.kaggle_spectrogram(electrodes, schema.SAMPLING_RATE)
    start = int(row["spectrogram_label_offset_seconds"] - row["eeg_label_offset_seconds"]) + 275
    rows = (start + 2 * np.arange(len(mine))) // 2  # EEG frame i is centred at start + 2i + 1
    a, b = np.log(mine[2:-2] + 0.01), np.log(spec[rows[2:-2]] + 0.01)
    ok = np.isfinite(a) & np.isfinite(b)
    assert np.corrcoef(a[ok], b[ok])[0, 1] > 0.7
    assert abs(np.mean(b[ok] - a[ok])) < 0.3


def test_kaggle_spectrogram_bins_and_rates():
    t200 = np.arange(60 * 200) / 200
    x200 = np.zeros((len(t200), synth.N_EL))
    left = [synth.ELECTRODES.index(e) for e in ("F7", "T5", "F3", "P3")]
    x200[:, left] = 50 * np.sin(2 * np.pi * 5.0 * t200)[:, None]
    s200 = synth.kaggle_spectrogram(x200, 200)
    s50 = synth.kaggle_spectrogram(x200[::4], 50)  # a 5 Hz sine needs no anti-aliasing
    assert s200.shape == s50.shape == (30, 400)
    peak = np.abs(schema.SPEC_FREQS - 5.0).argmin()
    ll = s200[10, :100]
    assert ll.argmax() == peak
    assert s200[10, 100:200].max() < 1e-6 * ll.max()  # RL untouched
    assert s50[10, peak] == pytest.approx(s200[10, peak], rel=1e-3)


def test_pstar_is_smooth_in_latents():
    lat = np.linspace(0, 1, 11)
    p = synth.pstar_from_latents(s=0.9, lat=lat, freq=1.0, evo=0.1, amp=2.0)
    lpd, gpd = schema.CLASSES.index("lpd"), schema.CLASSES.index("gpd")
    assert np.all(np.diff(p[:, lpd]) > 0) and np.all(np.diff(p[:, gpd]) < 0)
    assert np.abs(np.diff(p, axis=0)).max() < 0.2  # no jumps: votes split near the boundary
    assert 0.3 < p[5, lpd] / (p[5, lpd] + p[5, gpd]) < 0.7
    evo = synth.pstar_from_latents(s=0.9, lat=0.9, freq=1.0, evo=np.array([0.1, 0.9]), amp=2.0)
    assert evo[1, 0] > evo[0, 0] + 0.3
    faint = synth.pstar_from_latents(s=0.9, lat=0.9, freq=1.0, evo=0.1, amp=np.array([0.1, 2.0]))
    assert faint[0, -1] > 0.8 > faint[1, -1]


def test_rounds_class_mix():
    # the plan alone (no signals) is cheap: check the two rounds on many eeg_ids
    _, train, test, _, test_ans = synth.make_plan(1500, 300, seed=3)
    n = train[list(schema.VOTE_COLUMNS)].sum(axis=1)
    sz_low = (train.loc[n < 10, "expert_consensus"] == "Seizure").mean()
    sz_high = (train.loc[n >= 10, "expert_consensus"] == "Seizure").mean()
    assert 0.25 < sz_low < 0.42 and sz_high < 0.08
    assert 0.4 < (n < 10).mean() < 0.7
    votes = train[list(schema.VOTE_COLUMNS)].to_numpy()
    one_vector = pd.DataFrame(votes).groupby(train["eeg_id"].to_numpy()).nunique().max(axis=1) == 1
    assert 0.8 < one_vector.mean() < 0.97  # real data: 89% of eeg_ids carry one vote vector
    test_sz = (synth.consensus(test_ans[list(schema.VOTE_COLUMNS)].to_numpy()) == "Seizure").mean()
    assert test_sz < 0.1  # the test set resembles the high-vote round


def test_determinism_across_workers(data, tables, tmp_path):
    out, _ = data
    train, test, _ = tables
    again = tmp_path / "again"
    synth.generate(again, n_eegs=N_EEGS, n_test_eegs=N_TEST, seed=SEED, progress=False, workers=2)
    files = [schema.TRAIN_CSV, schema.TEST_CSV, schema.SAMPLE_SUBMISSION_CSV,
             f"{schema.ANSWERS_DIR}/{schema.TRAIN_ANSWERS_CSV}",
             f"{schema.ANSWERS_DIR}/{schema.TEST_ANSWERS_CSV}",
             f"{schema.TRAIN_EEG_DIR}/{train['eeg_id'].iloc[-1]}.parquet",
             f"{schema.TRAIN_SPEC_DIR}/{train['spectrogram_id'].iloc[-1]}.parquet",
             f"{schema.TEST_EEG_DIR}/{test['eeg_id'].iloc[0]}.parquet"]
    for name in files:
        assert (out / name).read_bytes() == (again / name).read_bytes(), name


def test_other_seed_differs_and_foreign_dir_refused(tmp_path):
    a = synth.make_plan(6, 2, seed=1)[1]
    b = synth.make_plan(6, 2, seed=2)[1]
    assert not a["eeg_id"].equals(b["eeg_id"])
    foreign = tmp_path / "real"
    (foreign / schema.TRAIN_EEG_DIR).mkdir(parents=True)
    (foreign / schema.TRAIN_EEG_DIR / "123.parquet").write_bytes(b"not ours")
    with pytest.raises(FileExistsError):
        synth.generate(foreign, n_eegs=2, n_test_eegs=1, seed=0, progress=False, workers=1)
    assert (foreign / schema.TRAIN_EEG_DIR / "123.parquet").read_bytes() == b"not ours"


def test_parquet_has_no_pandas_index(data, tables):
    out, _ = data
    train, _, _ = tables
    path = out / schema.TRAIN_EEG_DIR / f"{train['eeg_id'].iloc[0]}.parquet"
    assert pq.read_schema(path).names == list(schema.EEG_CHANNELS)
