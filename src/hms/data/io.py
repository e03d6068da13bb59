"""Readers for the competition files that validate what they read.

Every error names the file and what is wrong; a missing or unreadable file never
silently becomes zeros.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from hms.data import schema


class HMSDataError(ValueError):
    """A competition file is missing, unreadable or not in the expected format."""


def _read_parquet(path: Path) -> pd.DataFrame:
    table = _read_parquet_table(path)
    try:
        return table.to_pandas()
    except Exception as exc:  # a type pandas cannot hold
        raise HMSDataError(f"{path}: cannot read parquet ({type(exc).__name__}: {exc})") from exc


def _is_index_column(name: str) -> bool:
    """Index columns some writers add (pyarrow without pandas metadata, CSV round trips)."""
    return name.startswith("__index_level_") or name.startswith("Unnamed: ")


def _problem_list(label: str, names: list[str]) -> str:
    return f"{label} {names[:8]}{'...' if len(names) > 8 else ''}"


def _column_errors(missing: list[str], extra: list[str]) -> list[str]:
    return ([_problem_list("missing columns", missing)] if missing else []) + \
           ([_problem_list("unexpected columns", extra)] if extra else [])


def eeg_column_map(names) -> tuple[dict[str, str], list[str]]:
    """({file column: channel name}, problems). Channels match case-insensitively (FP1, fp1);
    writer index columns are ignored."""
    canonical = {c.lower(): c for c in schema.EEG_CHANNELS}
    mapping, extra = {}, []
    for name in map(str, names):
        channel = canonical.get(name.strip().lower())
        if channel is not None and channel not in mapping.values():
            mapping[name] = channel
        elif not _is_index_column(name):
            extra.append(name)
    missing = [c for c in schema.EEG_CHANNELS if c not in mapping.values()]
    return mapping, _column_errors(missing, extra)


def spectrogram_column_map(names) -> tuple[dict[str, str], list[str]]:
    """({file column: canonical name}, problems). Columns match by chain prefix and parsed
    frequency (LL_3.12, LL_3.13 and ll_3.125 are one bin), `time` case-insensitively."""
    mapping, extra, taken = {}, [], set()
    for name in map(str, names):
        if name.strip().lower() == schema.SPEC_TIME_COLUMN and schema.SPEC_TIME_COLUMN not in taken:
            mapping[name] = schema.SPEC_TIME_COLUMN
            taken.add(schema.SPEC_TIME_COLUMN)
            continue
        slot = schema.spec_column_slot(name)
        canonical = schema.SPEC_COLUMNS[slot] if slot is not None else None
        if canonical is not None and canonical not in taken:
            mapping[name] = canonical
            taken.add(canonical)
        elif not _is_index_column(name):
            extra.append(name)
    missing = [c for c in (schema.SPEC_TIME_COLUMN, *schema.SPEC_COLUMNS) if c not in taken]
    return mapping, _column_errors(missing, extra)


def _conform(df: pd.DataFrame, column_map, expected: tuple[str, ...], path: Path) -> pd.DataFrame:
    """Canonical names in the expected order, or an error naming the file and the columns."""
    mapping, problems = column_map(df.columns)
    if problems:
        raise HMSDataError(f"{path}: " + "; ".join(problems))
    return df[list(mapping)].rename(columns=mapping)[list(expected)]


def _numeric_float32(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    bad = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    if bad:
        raise HMSDataError(f"{path}: non-numeric columns {bad[:8]}")
    return df.astype(np.float32)


def read_eeg(path: str | Path, min_seconds: float = schema.EEG_WINDOW_SECONDS) -> pd.DataFrame:
    """An EEG parquet: the 20 channels in schema order, float32 microvolts, >= min_seconds."""
    path = Path(path)
    df = _conform(_read_parquet(path), eeg_column_map, schema.EEG_CHANNELS, path)
    df = _numeric_float32(df, path)
    min_rows = int(round(min_seconds * schema.SAMPLING_RATE))
    if len(df) < min_rows:
        raise HMSDataError(
            f"{path}: {len(df)} samples ({len(df) / schema.SAMPLING_RATE:.1f} s) is shorter "
            f"than {min_seconds} s at {schema.SAMPLING_RATE} Hz"
        )
    if df.isna().all().all():
        raise HMSDataError(f"{path}: every value is NaN")
    return df


def read_eeg_array(path: str | Path, min_seconds: float = schema.EEG_WINDOW_SECONDS) -> np.ndarray:
    """(n_samples, 20) float32, channels in schema.EEG_CHANNELS order."""
    return read_eeg(path, min_seconds).to_numpy(dtype=np.float32)


class EEGFile:
    """An EEG parquet opened once, read in row slices: an hour-long recording is held once, as
    the decoded Arrow columns (~58 MB), never as several whole float32/pandas copies. The same
    checks as read_eeg (columns, numeric types, length, not all NaN), from the Arrow table."""

    def __init__(self, path: str | Path, min_seconds: float = schema.EEG_WINDOW_SECONDS):
        import pyarrow.compute as pc
        import pyarrow.types as pat

        self.path = Path(path)
        if not self.path.is_file():
            raise HMSDataError(f"{self.path}: file not found")
        try:
            table = pq.read_table(self.path)
        except Exception as exc:  # pyarrow raises several types for truncated/corrupt files
            raise HMSDataError(f"{self.path}: cannot read parquet ({type(exc).__name__}: {exc})") from exc
        mapping, problems = eeg_column_map(table.column_names)
        if problems:
            raise HMSDataError(f"{self.path}: " + "; ".join(problems))
        by_channel = {channel: name for name, channel in mapping.items()}
        columns = [table.column(by_channel[c]) for c in schema.EEG_CHANNELS]
        bad = [c for c, col in zip(schema.EEG_CHANNELS, columns)
               if not (pat.is_integer(col.type) or pat.is_floating(col.type))]
        if bad:
            raise HMSDataError(f"{self.path}: non-numeric columns {bad[:8]}")
        # float32 as read_eeg's astype; nulls become NaN (an int column with nulls too)
        self.columns = [col if col.type == "float" else pc.cast(col, "float32") for col in columns]
        self.n_samples = table.num_rows
        min_rows = int(round(min_seconds * schema.SAMPLING_RATE))
        if self.n_samples < min_rows:
            raise HMSDataError(
                f"{self.path}: {self.n_samples} samples ({self.n_samples / schema.SAMPLING_RATE:.1f} s) is "
                f"shorter than {min_seconds} s at {schema.SAMPLING_RATE} Hz")
        if not any(pc.any(pc.invert(pc.is_nan(col))).as_py() for col in self.columns):
            raise HMSDataError(f"{self.path}: every value is NaN")

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) as (n, 20) float32, channels in schema order (nulls as NaN)."""
        out = np.empty((stop - start, len(self.columns)), np.float32)
        for j, col in enumerate(self.columns):
            out[:, j] = col.slice(start, stop - start).to_numpy()
        return out


def read_spectrogram(path: str | Path, min_seconds: float = schema.SPEC_WINDOW_SECONDS) -> pd.DataFrame:
    """A Kaggle spectrogram parquet: `time` (any integer or float dtype) then the 400 chain_freq
    columns under their canonical (real) names, float32. Rows that are NaN throughout are valid
    (the real train files have them); zero power is valid (take logs with a floor).
    Built from the Arrow columns straight into one (rows, 401) float32 block: going through
    to_pandas (401 blocks), a reorder, a rename and astype cost 37-46 ms a real file against
    24-25 ms for the bare Arrow read (issue 31); the values are the same, bit for bit."""
    path = Path(path)
    table = _read_parquet_table(path)
    mapping, problems = _spectrogram_columns(tuple(table.column_names), (table.schema.metadata or {}).get(b"pandas"))
    if problems:
        raise HMSDataError(f"{path}: " + "; ".join(problems))
    by_name = {canonical: i for i, canonical in enumerate(map(mapping.get, table.column_names)) if canonical}
    columns = [table.column(by_name[name]) for name in SPEC_FILE_COLUMNS]
    bad = [name for name, col in zip(SPEC_FILE_COLUMNS, columns) if not _arrow_numeric(col)]
    if bad:
        raise HMSDataError(f"{path}: non-numeric columns {bad[:8]}")
    values = np.empty((len(columns), table.num_rows), np.float32)  # column-major: pandas' own block layout
    for j, col in enumerate(columns):
        # as pandas: ints without nulls straight to float32, with nulls (and floats) via float64 NaN
        values[j] = col.to_numpy() if col.null_count == 0 else col.to_pandas().to_numpy()
    df = pd.DataFrame(values.T, columns=SPEC_FILE_INDEX, copy=False)
    min_rows = int(min_seconds // schema.SPEC_STEP_SECONDS)
    if len(df) < min_rows:
        raise HMSDataError(f"{path}: {len(df)} time steps, need at least {min_rows} ({min_seconds} s)")
    if np.isnan(values[1:]).all():
        raise HMSDataError(f"{path}: every spectrogram value is NaN")
    if np.isnan(values[0]).any():
        raise HMSDataError(f"{path}: NaN in the time column")
    return df


def _read_parquet_table(path: Path):
    """The file's Arrow table. ParquetFile.read rather than read_table (the datasets layer):
    the same table for ~15% less CPU on a spectrogram file; one thread, since prepare already
    runs one reader per core."""
    if not path.is_file():
        raise HMSDataError(f"{path}: file not found")
    try:
        return pq.ParquetFile(path, memory_map=True).read(use_threads=False)
    except Exception as exc:  # pyarrow raises several types for truncated/corrupt files
        raise HMSDataError(f"{path}: cannot read parquet ({type(exc).__name__}: {exc})") from exc


SPEC_FILE_COLUMNS = (schema.SPEC_TIME_COLUMN, *schema.SPEC_COLUMNS)
SPEC_FILE_INDEX = pd.Index(SPEC_FILE_COLUMNS)  # built once: a 401-name Index costs ~0.1 ms a file


@functools.lru_cache(maxsize=16)
def _spectrogram_columns(names: tuple[str, ...], pandas_meta: bytes | None) -> tuple[dict[str, str], list[str]]:
    """spectrogram_column_map of a file's columns, less those a pandas writer stored as its index
    (to_pandas makes them the index, not columns); parsed once per header (a dataset's files
    share one)."""
    index_columns = set()
    if pandas_meta:
        index_columns = {c for c in json.loads(pandas_meta).get("index_columns", []) if isinstance(c, str)}
    return spectrogram_column_map([n for n in names if n not in index_columns])


def _arrow_numeric(column) -> bool:
    """What pandas' is_numeric_dtype accepts after to_pandas: ints, floats, and bools without nulls."""
    import pyarrow.types as pat

    kind = column.type
    return pat.is_floating(kind) or pat.is_integer(kind) or (pat.is_boolean(kind) and column.null_count == 0)


def _read_csv(path: Path, expected: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise HMSDataError(f"{path}: file not found")
    try:
        df = pd.read_csv(path)
    except Exception as exc:
        raise HMSDataError(f"{path}: cannot read CSV ({type(exc).__name__}: {exc})") from exc
    missing = [c for c in expected if c not in df.columns]
    if missing:
        raise HMSDataError(f"{path}: missing columns {missing}")
    df = df[list(expected)]
    if df.empty:
        raise HMSDataError(f"{path}: no rows")
    return df


def _check_ints(df: pd.DataFrame, cols: tuple[str, ...], path: Path) -> pd.DataFrame:
    for col in cols:
        if col not in df.columns:
            continue
        if df[col].isna().any():
            row = int(df[col].isna().to_numpy().argmax())
            raise HMSDataError(f"{path}: column {col} is empty at data row {row}")
        if not pd.api.types.is_integer_dtype(df[col]):
            raise HMSDataError(f"{path}: column {col} must hold integer ids, got {df[col].dtype}")
        df[col] = df[col].astype(np.int64)
    return df


def read_train_csv(path: str | Path) -> pd.DataFrame:
    """train.csv with every Kaggle column; votes non-negative with at least one per row."""
    path = Path(path)
    df = _check_ints(_read_csv(path, schema.TRAIN_COLUMNS), schema.INT_COLUMNS, path)
    for col in (*schema.FLOAT_COLUMNS, *schema.VOTE_COLUMNS):
        if not pd.api.types.is_numeric_dtype(df[col]):
            raise HMSDataError(f"{path}: column {col} is not numeric")
    votes = df[list(schema.VOTE_COLUMNS)].to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(votes).all(1) | (votes < 0).any(1) | (votes.sum(1) <= 0))
    if len(bad):
        raise HMSDataError(
            f"{path}: {len(bad)} rows with invalid votes (negative, NaN or all zero), "
            f"first at data row {int(bad[0])} (label_id {int(df['label_id'].iloc[bad[0]])})"
        )
    return df


def read_test_csv(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    return _check_ints(_read_csv(path, schema.TEST_COLUMNS), schema.TEST_COLUMNS, path)


def split_dirs(split: str) -> tuple[str, str]:
    """(eeg dir, spectrogram dir) names for 'train' or 'test'."""
    if split == "train":
        return schema.TRAIN_EEG_DIR, schema.TRAIN_SPEC_DIR
    if split == "test":
        return schema.TEST_EEG_DIR, schema.TEST_SPEC_DIR
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def eeg_path(data_dir: str | Path, split: str, eeg_id: int) -> Path:
    return Path(data_dir) / split_dirs(split)[0] / f"{int(eeg_id)}.parquet"


def spectrogram_path(data_dir: str | Path, split: str, spectrogram_id: int) -> Path:
    return Path(data_dir) / split_dirs(split)[1] / f"{int(spectrogram_id)}.parquet"


def require_dataset(data_dir: str | Path, splits: tuple[str, ...] = ("train", "test")) -> Path:
    """Check the Kaggle layout is there before a long stage starts."""
    data_dir = Path(data_dir)
    needed = {"train": [schema.TRAIN_CSV, *split_dirs("train")], "test": [schema.TEST_CSV, *split_dirs("test")]}
    missing = [name for s in splits for name in needed[s] if not (data_dir / name).exists()]
    if missing:
        raise HMSDataError(
            f"{data_dir}: not a dataset in Kaggle layout (missing {missing}); "
            "run `hms download` (real data) or `hms synth --out DIR` (embedded dataset)"
        )
    return data_dir
