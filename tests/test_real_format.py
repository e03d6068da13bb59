"""Conformance with the real competition files. Every expected name, dtype and byte comes from
tests/fixtures/real_files.json (typed from the real files' facts), never from hms.data.schema:
files are written here in exactly the real schema and sent through the readers, `hms validate`,
`hms prepare`, training, `hms predict` and the offline notebook."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import execute_offline_notebook, tiny_config

REAL = json.loads((Path(__file__).parent / "fixtures" / "real_files.json").read_text())
SPEC_NAMES, EEG_NAMES = REAL["spectrogram_columns"], REAL["eeg_columns"]
VOTES = ["seizure_vote", "lpd_vote", "gpd_vote", "lrda_vote", "grda_vote", "other_vote"]
TEST_EEG_ID, TEST_SPEC_ID = 3911565283, 853520  # the real public test pair


# ---------------------------------------------------------------- writers of the real schema

def real_eeg(seconds: float, seed: int) -> pd.DataFrame:
    """20 float32 columns in the real order, µV rounded to 0.01, EKG in the thousands."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 200)
    values = np.cumsum(rng.normal(0, 3, (n, len(EEG_NAMES))), axis=0) * 0.2 + rng.normal(0, 15, (n, len(EEG_NAMES)))
    values[:: 180, -1] += REAL["eeg_train_ekg_abs_max_uv"]  # R waves of a large EKG
    return pd.DataFrame(np.round(values, 2).astype(np.float32), columns=EEG_NAMES)


def write_real_eeg(path: Path, seconds: float, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    real_eeg(seconds, seed).to_parquet(path, index=False)  # pandas metadata, no index column


def write_real_spectrogram(path: Path, n_rows: int, split: str, seed: int, nan_times=()) -> None:
    """`time` int64 (train) or int16 (test), then the 400 real names as float32 power in
    multiples of 0.01 (zeros included); rows at nan_times are NaN in every column."""
    rng = np.random.default_rng(seed)
    power = np.round(rng.lognormal(-1.0, 1.5, (n_rows, len(SPEC_NAMES))), 2).astype(np.float32)
    times = np.arange(1, 2 * n_rows, 2).astype(REAL["spectrogram_time_dtype"][split])
    power[np.isin(times, list(nan_times))] = np.nan
    columns = [pa.array(times)] + [pa.array(power[:, i]) for i in range(power.shape[1])]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_arrays(columns, names=["time", *SPEC_NAMES]), path)


def _train_rows() -> list[str]:
    """The real first rows, the other offsets of eeg 1628180742, the shared spectrogram 1219001
    (offsets continuing across its three EEGs), and four more patients."""
    rows = list(REAL["train_csv_first_rows"])
    label = 2**31 + 1000  # label_ids above 2^31, as in the real file
    for sub, off in enumerate(REAL["train_eeg_1628180742_offsets"][2:], start=2):
        rows.append(f"1628180742,{sub},{off},353733,{sub},{off},{label + sub},42516,Seizure,3,0,0,0,0,0")
    shared = REAL["shared_spectrogram"]
    spec_offsets = shared["spectrogram_offsets"]
    owners = [0, 0, 1, 1, 2, 2, 2]  # which of the three eeg_ids each spectrogram window belongs to
    votes = ["0,0,0,0,12,2", "0,11,1,0,0,2", "1,0,0,13,0,0"]
    consensus = ["GRDA", "LPD", "LRDA"]
    for spec_sub, (off, owner) in enumerate(zip(spec_offsets, owners)):
        first = spec_offsets[owners.index(owner)]
        eeg_sub = owners[:spec_sub].count(owner)
        rows.append(f"{shared['eeg_ids'][owner]},{eeg_sub},{float(off - first)},{shared['spectrogram_id']},"
                    f"{spec_sub},{float(off)},{label + 100 + spec_sub},30001,{consensus[owner]},{votes[owner]}")
    for k in range(4):
        v = ["0,0,11,0,0,3", "2,0,0,0,0,12", "0,3,0,0,0,0", "0,0,0,0,1,14"][k]
        name = ["GPD", "Other", "LPD", "Other"][k]
        rows.append(f"{900_001 + k},0,0.0,{70_001 + k},0,0.0,{label + 200 + k},{30_002 + k},{name},{v}")
    return rows


def write_real_schema_dataset(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.csv").write_text("\n".join([REAL["train_csv_header"], *_train_rows()]) + "\n")
    (root / "test.csv").write_text(REAL["test_csv"])
    (root / "sample_submission.csv").write_text(REAL["sample_submission_csv"])
    train = pd.read_csv(root / "train.csv")
    for eeg_id, g in train.groupby("eeg_id"):
        write_real_eeg(root / "train_eegs" / f"{eeg_id}.parquet", g.eeg_label_offset_seconds.max() + 50, int(eeg_id) % 1000)
    nan_lo, nan_hi = REAL["train_spectrogram_whole_nan_time_range"]
    for spec_id, g in train.groupby("spectrogram_id"):
        n_rows = int((g.spectrogram_label_offset_seconds.max() + 600) // 2)
        nan_times = range(nan_lo, nan_hi + 1, 2) if spec_id == 353733 else ()
        write_real_spectrogram(root / "train_spectrograms" / f"{spec_id}.parquet", n_rows, "train", int(spec_id) % 1000,
                               nan_times)
    write_real_eeg(root / "test_eegs" / f"{TEST_EEG_ID}.parquet", REAL["eeg_rows_test"] / 200, 1)
    write_real_spectrogram(root / "test_spectrograms" / f"{TEST_SPEC_ID}.parquet", REAL["spectrogram_rows_test"],
                           "test", 2)
    return root


@pytest.fixture(scope="module")
def real_schema(tmp_path_factory):
    return write_real_schema_dataset(tmp_path_factory.mktemp("real") / "hms")


# ---------------------------------------------------------------- readers

def test_canonical_spectrogram_names_are_the_real_names():
    from hms.data import schema

    assert list(schema.SPEC_COLUMNS) == SPEC_NAMES
    assert list(schema.EEG_CHANNELS) == EEG_NAMES
    assert sum(a != b for a, b in zip(SPEC_NAMES, (f"{c[:2]}_{k * 200 / 1024:.2f}" for c in SPEC_NAMES
                                                   for k in range(3, 103)))) > 0  # .2f is not the rule


def test_real_train_spectrogram_reads_with_its_nan_rows_and_int64_time(real_schema):
    from hms.data import io

    path = real_schema / "train_spectrograms" / "353733.parquet"
    assert str(pq.read_schema(path).field("time").type) == "int64"
    df = io.read_spectrogram(path)
    assert list(df.columns) == ["time", *SPEC_NAMES]
    whole_nan = df[SPEC_NAMES].isna().all(axis=1)
    assert int(whole_nan.sum()) == REAL["train_spectrogram_whole_nan_rows"]
    assert df.time[whole_nan].iloc[[0, -1]].tolist() == REAL["train_spectrogram_whole_nan_time_range"]
    assert (df[SPEC_NAMES].to_numpy()[~whole_nan.to_numpy()] >= 0).all()


def test_real_test_pair_reads_and_makes_one_window(real_schema):
    from hms.data import io
    from hms.signal import kaggle_spec

    spec_path = real_schema / "test_spectrograms" / f"{TEST_SPEC_ID}.parquet"
    assert str(pq.read_schema(spec_path).field("time").type) == "int16"
    window = kaggle_spec.read_log_window(spec_path, 0.0, REAL["spectrogram_rows_test"], (-4.0, 8.0))
    assert window.shape == (300, 400) and np.isfinite(window).all()  # zeros are floored, not -inf
    eeg = io.read_eeg_array(real_schema / "test_eegs" / f"{TEST_EEG_ID}.parquet")
    assert eeg.shape == (REAL["eeg_rows_test"], 20) and eeg.dtype == np.float32


def test_real_spectrograms_read_as_the_pandas_reader_did(real_schema):
    """The fast reader against the one before it, on the real-file fixture's train and test files."""
    from test_io import assert_same_spectrogram

    paths = [*(real_schema / "train_spectrograms").glob("*.parquet"), *(real_schema / "test_spectrograms").glob("*.parquet")]
    assert len(paths) >= 2
    for path in paths:
        assert_same_spectrogram(path)


@pytest.mark.parametrize("spelling", [
    lambda name, f: f"{name[:2]}_{f:.2f}",  # numpy's .2f (LL_3.12, LL_4.10)
    lambda name, f: f"{name[:2].lower()}_{f:.4f}",  # other tools: lower case, 4 decimals
    lambda name, f: f"{name[:2]} {f:g} Hz",
])
def test_other_spellings_of_the_columns_read_as_the_real_names(real_schema, tmp_path, spelling):
    from hms.data import io

    source = real_schema / "test_spectrograms" / f"{TEST_SPEC_ID}.parquet"
    df = pd.read_parquet(source)
    freqs = [k * 200 / 1024 for _ in range(4) for k in range(3, 103)]
    renamed = df.rename(columns=dict(zip(SPEC_NAMES, (spelling(n, f) for n, f in zip(SPEC_NAMES, freqs)))))
    shuffled = renamed[["time", *np.random.default_rng(0).permutation(renamed.columns[1:]).tolist()]]
    path = tmp_path / "s.parquet"
    shuffled.astype({"time": "float64"}).to_parquet(path)  # float time and a pandas index too
    got = io.read_spectrogram(path)
    assert list(got.columns) == ["time", *SPEC_NAMES]
    np.testing.assert_array_equal(got[SPEC_NAMES].to_numpy(), df[SPEC_NAMES].to_numpy())


@pytest.mark.parametrize("rename, message", [
    ({"LL_0.59": "LL_0.62"}, r"missing columns \['LL_0.59'\]; unexpected columns \['LL_0.62'\]"),  # off the grid
    ({"RP_19.92": "XX_19.92"}, r"unexpected columns \['XX_19.92'\]"),
    ({"LL_3.13": "LL_3.12"}, None),  # the same bin, another spelling: fine
])
def test_spectrogram_grid_errors_name_the_file(real_schema, tmp_path, rename, message):
    from hms.data import io

    df = pd.read_parquet(real_schema / "test_spectrograms" / f"{TEST_SPEC_ID}.parquet").rename(columns=rename)
    path = tmp_path / "bad.parquet"
    df.to_parquet(path, index=False)
    if message is None:
        assert list(io.read_spectrogram(path).columns)[1:] == SPEC_NAMES
        return
    with pytest.raises(io.HMSDataError, match=message) as err:
        io.read_spectrogram(path)
    assert str(path) in str(err.value)


def test_eeg_reader_accepts_other_spellings_dtypes_and_index_columns(tmp_path):
    from hms.data import io

    df = real_eeg(50, 0)
    odd = df.rename(columns={"Fp1": "FP1", "Fz": "FZ", "EKG": "ekg"}).astype(np.float64)
    path = tmp_path / "e.parquet"
    pq.write_table(pa.Table.from_pandas(odd.set_index(pd.RangeIndex(len(odd)) * 2), preserve_index=True), path)
    got = io.read_eeg(path)
    assert list(got.columns) == EEG_NAMES and (got.dtypes == np.float32).all()
    np.testing.assert_array_equal(got.to_numpy(), df.to_numpy())


# ---------------------------------------------------------------- the stages, end to end

def _no_fallback_predict(exp_dir, data, work):
    from hms.inference.predict import predict_experiment

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the per-row prior fallback warns: none here
        return predict_experiment(exp_dir, data, work, progress=False)


@pytest.mark.slow
def test_real_schema_dataset_through_validate_prepare_train_predict_and_notebook(real_schema, tmp_path, monkeypatch):
    from hms.data.validate import validate_dataset
    from hms.inference.ensemble import write_submission
    from hms.kaggle import notebook, package
    from hms.data.tables import load_test
    from hms.cache.prepare import prepare
    from hms.training.experiment import exp_dir, train_experiment

    report = validate_dataset(real_schema)
    assert report.problems == [] and report.files_checked == 2 + 8 + 6 + 2  # tables, train eeg+spec, test pair
    work = tmp_path / "work"
    panels = ["name=real_panels", "model={kind: timm2d, backbone: resnet10t, drop_rate: 0.0}", "image.layout=channels",
              "image.panel_height=32", "image.panel_width=64", "mel.sr=50", "mel.n_fft=256", "mel.win_length=32",
              "mel.n_mels=32"]
    cfgs = [tiny_config(real_schema, work, "name=real_conv1d"), tiny_config(real_schema, work, *panels)]
    prepare(cfgs[0], progress=False)
    prior = None
    for cfg in cfgs:
        summary = train_experiment(cfg, progress=False)
        prior = np.asarray(summary["prior"])
        pred = _no_fallback_predict(exp_dir(cfg), real_schema, tmp_path / "predict")
        assert pred.eeg_id.tolist() == [TEST_EEG_ID]
        probs = pred[VOTES].to_numpy()
        assert np.isclose(probs.sum(), 1) and not np.allclose(probs, prior, atol=1e-4)

    sub_dir = tmp_path / "sub"
    write_submission([exp_dir(c) for c in cfgs], load_test(cfgs[0]), sub_dir, cfgs[0].labels.min_votes_high)
    package.package(tmp_path / "dataset", work, sub_dir, user="tester")
    nb_path = notebook.write_notebook(tmp_path / "notebook", tmp_path / "dataset")
    submitted = execute_offline_notebook(nb_path, real_schema, tmp_path / "dataset", tmp_path, monkeypatch)
    nb, working = execute_offline_notebook.executed, tmp_path / "working"
    outputs = "".join(o.get("text", "") for cell in nb.cells for o in cell.get("outputs", []))
    assert "prior" not in outputs.lower()  # no fallback warning in the notebook either
    got = (working / "submission.csv").read_text().splitlines()
    assert got[0] == REAL["sample_submission_csv"].splitlines()[0]  # the real header, exactly
    assert submitted.eeg_id.tolist() == [TEST_EEG_ID] and np.isclose(submitted[VOTES].to_numpy().sum(), 1)
    np.testing.assert_allclose(submitted[VOTES].to_numpy(), pd.read_csv(sub_dir / "submission.csv")[VOTES].to_numpy(),
                               atol=1e-6)


def test_every_test_row_falling_back_is_an_error_that_names_the_cause(real_schema, tmp_path):
    """The public test has one row: its file unreadable must stop predict, not submit the prior."""
    from hms.data.io import HMSDataError
    from hms.inference.batch import predict_test

    data = tmp_path / "data"
    shutil.copytree(real_schema, data)
    (data / "test_eegs" / f"{TEST_EEG_ID}.parquet").write_bytes(b"PAR1 truncated")
    cfg = tiny_config(data, tmp_path / "work")
    with pytest.raises(HMSDataError, match=r"1 of 1 test rows .*cannot read parquet"):
        predict_test(cfg, nets=[], device="cpu")
