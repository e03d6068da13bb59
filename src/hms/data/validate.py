"""`hms validate`: a pre-flight over a whole dataset in seconds, before any long stage.

It reads train.csv, test.csv and each parquet file's footer (schema, row count, column
statistics; a spectrogram's `time` column only when its footer has no statistics), never the
signals, and reports every problem at once with a count per kind: a bad file never surfaces
after an hour of caching. `hms prepare` and the main job run it first (`preflight`).
"""
from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hms.data import io, schema
from hms.utils import atomic_to_csv, atomic_write_json, file_lock

PROBLEM_KINDS = {
    "bad_table": "train.csv or test.csv unreadable or with wrong columns",
    "duplicate_label_id": "label_id used by more than one train.csv row",
    "missing_file": "a file that train.csv or test.csv names is not there",
    "unreadable_file": "not a readable parquet file",
    "wrong_schema": "missing, unexpected or misspelled columns",
    "non_numeric": "columns that are not numbers",
    "short_eeg": "EEG shorter than 50 s",
    "short_spectrogram": "spectrogram shorter than 10 minutes",
    "window_past_end": "a labelled window starts or ends past the end of its file",
}
REPORT_JSON = "validate.json"


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
EXCLUDED_CSV = "excluded_train_files.csv"  # written by --skip-bad; train rows naming these are dropped


@dataclass
class Problem:
    split: str
    kind: str
    file: str
    detail: str


@dataclass
class Report:
    data_dir: str
    files_checked: int = 0
    seconds: float = 0.0
    signature: str = ""
    problems: list[Problem] = field(default_factory=list)

    def counts(self, split: str | None = None) -> dict[str, int]:
        kinds = [p.kind for p in self.problems if split is None or p.split == split]
        return {k: kinds.count(k) for k in PROBLEM_KINDS if k in kinds}

    def of(self, split: str) -> list[Problem]:
        return [p for p in self.problems if p.split == split]

    def text(self, examples: int = 3) -> str:
        if not self.problems:
            return f"{self.data_dir}: {self.files_checked} files checked, no problems ({self.seconds:.1f} s)"
        lines = [f"{self.data_dir}: {plural(len(self.problems), 'problem')} in {self.files_checked} files checked "
                 f"({self.seconds:.1f} s)"]
        for split in ("train", "test"):
            for kind, n in self.counts(split).items():
                lines.append(f"  {split} {kind} ({PROBLEM_KINDS[kind]}): {n}")
                for p in [p for p in self.of(split) if p.kind == kind][:examples]:
                    lines.append(f"      {p.file}: {p.detail}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {**asdict(self), "counts": {s: self.counts(s) for s in ("train", "test")}}


# ---------------------------------------------------------------- one parquet footer

def _numeric(arrow_type) -> bool:
    return pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type)


def _footer(path: Path, column_map) -> tuple[pq.ParquetFile | None, dict, list[tuple[str, str]]]:
    """(open file, {file column: canonical name}, problems) from the footer alone."""
    if not path.is_file():
        return None, {}, [("missing_file", "file not found")]
    try:
        pf = pq.ParquetFile(path)
        arrow = pf.schema_arrow
    except Exception as exc:  # pyarrow raises several types for truncated/corrupt files
        return None, {}, [("unreadable_file", f"{type(exc).__name__}: {exc}")]
    mapping, column_problems = column_map(arrow.names)
    problems = [("wrong_schema", "; ".join(column_problems))] if column_problems else []
    bad_types = [name for name in mapping if not _numeric(arrow.field(name).type)]
    if bad_types:
        problems.append(("non_numeric", f"columns {bad_types[:8]}"))
    return pf, mapping, problems


def check_eeg(path: Path, need_samples: int) -> list[tuple[str, str]]:
    pf, _, problems = _footer(path, io.eeg_column_map)
    if pf is None:
        return problems
    rows = pf.metadata.num_rows
    if rows < schema.EEG_WINDOW_SAMPLES:
        problems.append(("short_eeg", f"{rows} samples ({rows / schema.SAMPLING_RATE:.1f} s)"))
    elif rows < need_samples:
        problems.append(("window_past_end", f"{rows} samples, its labelled windows need {need_samples}"))
    return problems


def _time_range(pf: pq.ParquetFile, time_column: str) -> tuple[float, float]:
    """(first, last) value of the time column: footer statistics when present, else the column."""
    j = pf.schema_arrow.names.index(time_column)
    stats = [pf.metadata.row_group(g).column(j).statistics for g in range(pf.metadata.num_row_groups)]
    if stats and all(s is not None and s.has_min_max for s in stats):
        return float(min(s.min for s in stats)), float(max(s.max for s in stats))
    values = pf.read(columns=[time_column]).column(0).to_numpy(zero_copy_only=False).astype(np.float64)
    return float(np.nanmin(values)), float(np.nanmax(values))


def check_spectrogram(path: Path, last_offset: float) -> list[tuple[str, str]]:
    pf, mapping, problems = _footer(path, io.spectrogram_column_map)
    if pf is None:
        return problems
    if pf.metadata.num_rows < schema.SPEC_WINDOW_FRAMES:
        problems.append(("short_spectrogram", f"{pf.metadata.num_rows} time steps, need {schema.SPEC_WINDOW_FRAMES}"))
    time_column = next((c for c, name in mapping.items() if name == schema.SPEC_TIME_COLUMN), None)
    if time_column is not None and not problems:
        _, last = _time_range(pf, time_column)
        if last_offset > last:  # the window would hold no frame of this file at all
            problems.append(("window_past_end", f"a window starts at {last_offset:g} s, the file ends at {last:g} s"))
    return problems


# ---------------------------------------------------------------- the whole dataset

def _file_jobs(data_dir: Path, split: str, table: pd.DataFrame) -> list[tuple]:
    """(split, path, check, argument) for every file the table names."""
    if split == "train":
        eeg_need = table.groupby("eeg_id").eeg_label_offset_seconds.max()
        spec_last = table.groupby("spectrogram_id").spectrogram_label_offset_seconds.max()
    else:
        eeg_need = pd.Series(0.0, index=table.eeg_id.unique())
        spec_last = pd.Series(0.0, index=table.spectrogram_id.unique())
    jobs = [(split, io.eeg_path(data_dir, split, i), check_eeg,
             int(round(off * schema.SAMPLING_RATE)) + schema.EEG_WINDOW_SAMPLES) for i, off in eeg_need.items()]
    jobs += [(split, io.spectrogram_path(data_dir, split, i), check_spectrogram, float(off))
             for i, off in spec_last.items()]
    return jobs


def _tables(data_dir: Path, report: Report) -> dict[str, pd.DataFrame]:
    tables = {}
    for split, reader, name in (("train", io.read_train_csv, schema.TRAIN_CSV), ("test", io.read_test_csv, schema.TEST_CSV)):
        try:
            tables[split] = reader(data_dir / name)
        except io.HMSDataError as exc:
            report.problems.append(Problem(split, "bad_table", name, str(exc)))
    if "train" in tables:
        dup = tables["train"].label_id[tables["train"].label_id.duplicated(keep=False)]
        for label_id, n in dup.value_counts().items():
            report.problems.append(Problem("train", "duplicate_label_id", schema.TRAIN_CSV,
                                           f"label_id {label_id} on {n} rows"))
    return tables


def signature(data_dir: Path) -> str:
    """Names, sizes and mtimes of the tables and every parquet file: an unchanged dataset
    need not be validated again."""
    h = hashlib.sha256()
    for name in (schema.TRAIN_CSV, schema.TEST_CSV):
        p = data_dir / name
        h.update(f"{name}:{p.stat().st_size}:{p.stat().st_mtime_ns}".encode() if p.is_file() else name.encode())
    for d in (schema.TRAIN_EEG_DIR, schema.TRAIN_SPEC_DIR, schema.TEST_EEG_DIR, schema.TEST_SPEC_DIR):
        folder = data_dir / d
        for entry in sorted(folder.iterdir(), key=lambda e: e.name) if folder.is_dir() else []:
            st = entry.stat()
            h.update(f"{d}/{entry.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def validate_dataset(data_dir: str | Path, workers: int = 8, files_signature: str | None = None) -> Report:
    """files_signature: signature(data_dir) when the caller has it already (one stat per file)."""
    t0 = time.perf_counter()
    data_dir = Path(data_dir)
    report = Report(str(data_dir), signature=files_signature or signature(data_dir))
    tables = _tables(data_dir, report)
    jobs = [job for split, table in tables.items() for job in _file_jobs(data_dir, split, table)]
    with ThreadPoolExecutor(workers) as pool:  # footers are small reads: threads overlap the I/O
        results = list(pool.map(lambda job: job[2](job[1], job[3]), jobs))
    for (split, path, _, _), problems in zip(jobs, results):
        report.problems += [Problem(split, kind, str(path), detail) for kind, detail in problems]
    report.files_checked = len(jobs) + len(tables)
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


# ---------------------------------------------------------------- pre-flight of the stages

def excluded_path(work_dir: Path) -> Path:
    return Path(work_dir) / EXCLUDED_CSV


def bad_train_files(report: Report) -> pd.DataFrame:
    """kind (eeg | spec), id, problem: the train files --skip-bad leaves out."""
    rows = []
    for p in report.of("train"):
        if p.kind in ("bad_table", "duplicate_label_id"):
            continue
        path = Path(p.file)
        kind = "eeg" if path.parent.name == schema.TRAIN_EEG_DIR else "spec"
        rows.append({"kind": kind, "id": int(path.stem), "problem": f"{p.kind}: {p.detail}"})
    return pd.DataFrame(rows, columns=["kind", "id", "problem"]).drop_duplicates(["kind", "id"])


def preflight(data_dir: Path, work_dir: Path, skip_bad: bool = False, quiet: bool = False) -> Report:
    """Validate (or reuse the report of an unchanged dataset), write it to the work dir, and
    stop on train problems, listing all of them; with skip_bad, list the bad train files in
    the work dir instead (their rows leave training) and say so loudly. Test problems are
    reported: inference gives such rows the prior, and stops when too many do. Under a file lock:
    of concurrent processes one validates and writes the report, the others wait and reuse it."""
    work_dir = Path(work_dir)
    with file_lock(work_dir / REPORT_JSON, what="the validate report"):
        return _preflight(data_dir, work_dir, skip_bad, quiet)


def _preflight(data_dir: Path, work_dir: Path, skip_bad: bool, quiet: bool) -> Report:
    saved = work_dir / REPORT_JSON
    report, files_signature = None, signature(data_dir)
    if saved.is_file():
        old = json.loads(saved.read_text())
        if old.get("signature") == files_signature and old.get("data_dir") == str(data_dir):
            report = Report(old["data_dir"], old["files_checked"], old["seconds"], old["signature"],
                            [Problem(**p) for p in old["problems"]])
    fresh = report is None
    if fresh:
        report = validate_dataset(data_dir, files_signature=files_signature)
        atomic_write_json(saved, report.to_json())
    if (fresh and not quiet) or report.problems:  # an unchanged clean dataset needs no second word
        print(f"[hms validate] {report.text()}", flush=True)
    train_problems = report.of("train")
    fatal = [p for p in train_problems if p.kind in ("bad_table", "duplicate_label_id")]
    excluded = excluded_path(work_dir)
    if train_problems and (fatal or not skip_bad):
        listing = "\n".join(f"  {p.kind}: {p.file}: {p.detail}" for p in (fatal or train_problems))
        hint = "" if fatal else "\n(or run with --skip-bad / validate.skip_bad=true to leave these files out)"
        raise io.HMSDataError(f"{plural(len(fatal or train_problems), 'problem')} in the training data "
                              f"(report: {saved}):\n{listing}{hint}")
    if train_problems:
        bad = bad_train_files(report)
        atomic_to_csv(bad, excluded)
        print(f"[hms validate] WARNING: --skip-bad: leaving out {len(bad)} train files and every train.csv row "
              f"that names them (list: {excluded})", flush=True)
    elif excluded.is_file():
        excluded.unlink()  # the data is clean now: nothing is left out any more
    return report


def drop_excluded_rows(train: pd.DataFrame, work_dir: Path) -> pd.DataFrame:
    """train.csv rows minus those naming a file that --skip-bad left out (said loudly)."""
    path = excluded_path(work_dir)
    if not path.is_file():
        return train
    bad = pd.read_csv(path)
    drop = (train.eeg_id.isin(bad.id[bad.kind == "eeg"]) |
            train.spectrogram_id.isin(bad.id[bad.kind == "spec"])).to_numpy()
    if drop.any():
        print(f"[hms] WARNING: {int(drop.sum())} train rows left out: they name files listed in {path}", flush=True)
    return train[~drop].reset_index(drop=True)
