import numpy as np
import pandas as pd
import pytest

from conftest import eeg_frame, spectrogram_frame, train_frame
from hms.data import io, schema


def test_reads_valid_eeg_as_float32_in_schema_order(tmp_eeg):
    arr = io.read_eeg_array(tmp_eeg)
    assert arr.shape == (50 * schema.SAMPLING_RATE, 20) and arr.dtype == np.float32


def test_misordered_columns_are_reordered_by_name(tmp_path):
    df = eeg_frame()
    path = tmp_path / "x.parquet"
    df[list(reversed(df.columns))].to_parquet(path, index=False)
    out = io.read_eeg(path)
    assert list(out.columns) == list(schema.EEG_CHANNELS)
    np.testing.assert_array_equal(out["Fp1"].to_numpy(), df["Fp1"].to_numpy())


@pytest.mark.parametrize("make, message", [
    (lambda df: df.drop(columns=["Cz"]), r"missing columns \['Cz'\]"),
    (lambda df: df.assign(extra=1.0), r"unexpected columns \['extra'\]"),
    (lambda df: df.assign(Fp1="a"), r"non-numeric columns \['Fp1'\]"),
    (lambda df: df.iloc[:5000], "shorter than 50 s"),
    (lambda df: df * np.nan, "every value is NaN"),
])
@pytest.mark.parametrize("read", [io.read_eeg, io.EEGFile], ids=["read_eeg", "sliced"])  # the cache reads sliced
def test_bad_eeg_errors_name_the_file_and_problem(tmp_path, make, message, read):
    path = tmp_path / "bad.parquet"
    make(eeg_frame()).to_parquet(path, index=False)
    with pytest.raises(io.HMSDataError, match=message) as err:
        read(path)
    assert str(path) in str(err.value)


def test_missing_file_is_an_error_not_zeros(tmp_path):
    with pytest.raises(io.HMSDataError, match="file not found"):
        io.read_eeg(tmp_path / "nope.parquet")


def test_truncated_parquet_is_a_clear_error(tmp_eeg, tmp_path):
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(tmp_eeg.read_bytes()[: tmp_eeg.stat().st_size // 2])
    with pytest.raises(io.HMSDataError, match="cannot read parquet") as err:
        io.read_eeg(broken)
    assert "broken.parquet" in str(err.value)


def test_spectrogram_reader_validates_columns_and_length(tmp_path):
    good = tmp_path / "s.parquet"
    spectrogram_frame().to_parquet(good, index=False)
    assert io.read_spectrogram(good).shape == (300, 401)
    short = tmp_path / "short.parquet"
    spectrogram_frame(seconds=100).to_parquet(short, index=False)
    with pytest.raises(io.HMSDataError, match="need at least 300"):
        io.read_spectrogram(short)
    renamed = tmp_path / "renamed.parquet"
    spectrogram_frame().rename(columns={"LL_0.59": "LL_0.6"}).to_parquet(renamed, index=False)
    with pytest.raises(io.HMSDataError, match="LL_0.59"):
        io.read_spectrogram(renamed)


def test_train_csv_errors_name_column_and_row(tmp_path):
    path = tmp_path / "train.csv"
    df = train_frame()
    df.to_csv(path, index=False)
    assert len(io.read_train_csv(path)) == len(df)
    df.loc[3, list(schema.VOTE_COLUMNS)] = 0
    df.to_csv(path, index=False)
    with pytest.raises(io.HMSDataError, match="first at data row 3"):
        io.read_train_csv(path)
    df.drop(columns=["patient_id"]).to_csv(path, index=False)
    with pytest.raises(io.HMSDataError, match="patient_id"):
        io.read_train_csv(path)


def test_require_dataset_says_how_to_get_data(tmp_path):
    with pytest.raises(io.HMSDataError, match="hms synth"):
        io.require_dataset(tmp_path)


# ---------------------------------------------------------------- the fast spectrogram reader

def pandas_read_spectrogram(path) -> pd.DataFrame:
    """The reader before issue 31, as reference: the whole table through to_pandas, then
    conformed, renamed and cast with astype(float32)."""
    import pyarrow.parquet as pq

    expected = (schema.SPEC_TIME_COLUMN, *schema.SPEC_COLUMNS)
    df = io._conform(pq.read_table(path).to_pandas(), io.spectrogram_column_map, expected, path)
    return io._numeric_float32(df, path)


def assert_same_spectrogram(path) -> None:
    got, want = io.read_spectrogram(path), pandas_read_spectrogram(path)
    assert list(got.columns) == list(want.columns) and (got.dtypes == np.float32).all()
    assert got.to_numpy().tobytes() == want.to_numpy().tobytes()  # bit for bit, NaN included


@pytest.mark.parametrize("variant", ["plain", "int_time_with_nulls", "float64_values", "shuffled_with_index",
                                     "bool_and_int_columns"])
def test_spectrogram_reader_matches_the_pandas_reader_bit_for_bit(tmp_path, variant):
    df = spectrogram_frame(seed=3)
    df.iloc[5:9, 1:] = np.nan
    path = tmp_path / f"{variant}.parquet"
    if variant == "int_time_with_nulls":  # nullable ints: NaN through float64, as to_pandas does
        df = df.astype({"time": "Int64"})
        df.loc[3, "LL_0.59"] = np.nan
        df["RL_0.59"] = pd.array(np.arange(len(df)) * 1_000_003, dtype="Int64")
        df.loc[7, "RL_0.59"] = pd.NA
    elif variant == "float64_values":
        df = df.astype(np.float64) * (1 + 1e-9)
    elif variant == "shuffled_with_index":
        df = df[["time", *np.random.default_rng(0).permutation(df.columns[1:]).tolist()]].set_index(df.index + 7)
    elif variant == "bool_and_int_columns":
        df["LL_0.78"] = df["LL_0.78"] > 1
        df["LL_0.98"] = np.arange(len(df), dtype=np.int64) * 16_777_217  # not exact in float32
    df.to_parquet(path, index=variant == "shuffled_with_index")
    assert_same_spectrogram(path)


def test_the_simulated_spectrograms_read_as_before(tiny_synth):
    paths = sorted((tiny_synth / schema.TRAIN_SPEC_DIR).glob("*.parquet"))[:10]
    paths += sorted((tiny_synth / schema.TEST_SPEC_DIR).glob("*.parquet"))
    assert len(paths) > 10
    for path in paths:
        assert_same_spectrogram(path)


@pytest.mark.parametrize("make, message", [
    (lambda df: df.assign(**{"LL_0.59": "a"}), r"non-numeric columns \['LL_0.59'\]"),
    (lambda df: df.assign(time=df.time.where(df.index != 4)), "NaN in the time column"),
    (lambda df: df.assign(**{c: np.nan for c in df.columns[1:]}), "every spectrogram value is NaN"),
    (lambda df: df.drop(columns=["RP_19.92"]), r"missing columns \['RP_19.92'\]"),
])
def test_spectrogram_errors_name_the_file_and_problem(tmp_path, make, message):
    path = tmp_path / "bad.parquet"
    make(spectrogram_frame()).to_parquet(path, index=False)
    with pytest.raises(io.HMSDataError, match=message) as err:
        io.read_spectrogram(path)
    assert str(path) in str(err.value)
    with pytest.raises(io.HMSDataError, match="file not found"):
        io.read_spectrogram(tmp_path / "nope.parquet")
