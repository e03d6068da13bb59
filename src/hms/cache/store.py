"""`hms prepare`: the caches training and inference read, under $HMS_WORK_DIR/cache/.

Two kinds per split, each one flat memory-mapped npy plus an index:
  eeg  : raw signals in µV, NaN kept, float16 (n_samples_total, 19): every signal any experiment
         can ask for (the 16 double-banana pairs, the midline pairs, EKG: EEG_CACHE_SIGNALS), so
         one cache per dataset serves every experiment, each selecting its own (Cache.columns).
         One span per eeg_id covering all its labelled 50 s windows (train) or the whole file
         (test). The cleaning happens per 50 s window at training/inference time (dataset +
         model), so a train window and a test file are cleaned alike and filter settings need no
         new cache;
  spec : log-clipped Kaggle spectrogram frames, float16 (n_frames_total, 400); one span per
         spectrogram_id covering all its 10-minute windows.
The index's t0 is the time of a span's first cached sample or frame: for a spectrogram the
file's first frame at or after the first labelled offset (real frames sit at odd seconds).
A cache directory's name holds a hash of its inputs (file names, sizes, mtimes) and of the
parameters, so a changed parameter or file never reuses a stale cache. Work is written into a
`.partial` memmap with a done-bitmap; an interrupted run resumes where it stopped and the
final names appear only when every item is in. A file lock beside the directory lets one
process build it while others (other folds, GPUs, Slurm tasks on shared storage) wait and reuse.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from hms.data import io, schema
from hms.signal import kaggle_spec, montage
from hms.utils import atomic_save_npy, atomic_to_csv, atomic_write_json, bars_off, file_lock

# 2: eeg caches hold raw bipolar signals; 3: one eeg cache of every signal, spec t0 = first frame
CACHE_VERSION = 3
INDEX_COLUMNS = ("id", "start", "length", "t0", "nan_share")
EEG_CACHE_SIGNALS = tuple(montage.montage_names(montage.EXTRAS))  # what every eeg cache holds
EEG_SLICE_SAMPLES = 60 * schema.SAMPLING_RATE  # a worker converts a recording a minute at a time


@dataclass
class Cache:
    """An opened cache: data[start:start+length] is the span of one id; t0 its first second."""

    root: Path
    data: np.ndarray
    index: pd.DataFrame
    meta: dict

    def __post_init__(self):
        # plain-int lookups: pandas .loc per item would be slow and upcast ints to float
        self._rows = {int(i): Span(int(s), int(n), float(t)) for i, s, n, t in
                      zip(self.index.index, self.index.start, self.index.length, self.index.t0)}

    @property
    def signal_names(self) -> tuple[str, ...]:
        """The eeg cache's columns, in order (a version-2 cache holds its montage's alone)."""
        if "signals" in self.meta:
            return tuple(self.meta["signals"])
        return tuple(montage.montage_names(self.meta.get("params", {}).get("extras", [])))

    def columns(self, names) -> slice | np.ndarray:
        """Where the signals `names` sit in data's columns: a slice when they are adjacent and in
        order (a view, no copy), else an index array."""
        have = self.signal_names
        missing = [n for n in names if n not in have]
        if missing:
            raise io.HMSDataError(f"{self.root}: the cache has no signals {missing} (it holds {list(have)}); "
                                  "rebuild it with `hms prepare`")
        cols = np.array([have.index(n) for n in names])
        if len(cols) and np.array_equal(cols, np.arange(cols[0], cols[0] + len(cols))):
            return slice(int(cols[0]), int(cols[0]) + len(cols))
        return cols

    def bad_ids(self) -> set[int]:
        """Ids whose file was missing or unreadable (built with skip_bad)."""
        return set(int(i) for i in self.index.index[self.index.nan_share.to_numpy() == BAD_ITEM])

    def bad_reasons(self) -> dict[int, str]:
        """id -> the error that made it a bad item (what the build warned)."""
        path = self.root / BAD_REASONS_JSON
        return {int(k): v for k, v in json.loads(path.read_text()).items()} if path.is_file() else {}

    def row(self, item_id: int) -> "Span":
        try:
            return self._rows[int(item_id)]
        except KeyError:
            raise io.HMSDataError(f"{self.root}: id {item_id} is not in this cache") from None


class Span(NamedTuple):
    start: int
    length: int
    t0: float


# ---------------------------------------------------------------- spans per item

SPAN_SOURCES = {  # kind -> (id column, offset column, window seconds)
    "eeg": ("eeg_id", "eeg_label_offset_seconds", schema.EEG_WINDOW_SECONDS),
    "spec": ("spectrogram_id", "spectrogram_label_offset_seconds", schema.SPEC_WINDOW_SECONDS),
}


def spans(table: pd.DataFrame, split: str, kind: str) -> pd.DataFrame:
    """id, t0, seconds: the part of each file to cache. Train: from the first labelled window's
    start to the last one's end; test: the whole (exactly one-window) file."""
    id_col, offset_col, window = SPAN_SOURCES[kind]
    if split == "test":
        return pd.DataFrame({"id": table[id_col].unique(), "t0": 0.0, "seconds": float(window)})
    g = table.groupby(id_col)[offset_col]
    out = pd.DataFrame({"t0": g.min(), "seconds": g.max() - g.min() + window})
    return out.rename_axis("id").reset_index()


# ---------------------------------------------------------------- per-file work (in workers)

FLOAT16_LIMIT = 65_000.0  # raw µV beyond float16's range (65,504) would become inf


def _eeg_item(path: Path, t0: float, n: int, out: np.ndarray) -> tuple[float, float]:
    """Write the span's raw signals (every EEG_CACHE_SIGNALS column) into `out` (n rows), a
    minute at a time; returns (NaN share, time of the first sample)."""
    eeg = io.EEGFile(path)
    start = int(round(t0 * schema.SAMPLING_RATE))
    if start + n > eeg.n_samples:
        raise io.HMSDataError(
            f"{path}: {eeg.n_samples} samples, but its labelled windows need samples {start}..{start + n}"
        )
    n_nan = 0
    for lo in range(0, n, EEG_SLICE_SAMPLES):
        hi = min(n, lo + EEG_SLICE_SAMPLES)
        raw = montage.bipolar(eeg.rows(start + lo, start + hi), montage.EXTRAS).T
        n_nan += int(np.isnan(raw).sum())
        with np.errstate(invalid="ignore"):
            out[lo:hi] = np.clip(raw, -FLOAT16_LIMIT, FLOAT16_LIMIT)
    return n_nan / (n * out.shape[1]), start / schema.SAMPLING_RATE


def _spec_item(path: Path, t0: float, n: int, out: np.ndarray, log_clip) -> tuple[float, float]:
    """Write the span's log frames into `out`; returns (NaN share, time of the first frame)."""
    logp, first_time = kaggle_spec.read_log_window_timed(path, t0, n, tuple(log_clip))
    out[:] = logp
    return float(np.isnan(logp).mean()), first_time


BAD_ITEM = -1.0  # nan_share of an item whose file was missing or unreadable (skip_bad mode)
BAD_REASONS_JSON = "bad_items.json"


def _work(job: tuple) -> tuple[int, float, float, str | None]:
    """Process one file straight into the shared partial memmap: (item, NaN share, t0, error)."""
    kind, i, path, t0, start, n, params, data_path, skip_bad = job
    data = np.load(data_path, mmap_mode="r+")
    try:
        if kind == "eeg":
            nan_share, first = _eeg_item(Path(path), t0, n, data[start:start + n])
        else:
            nan_share, first = _spec_item(Path(path), t0, n, data[start:start + n], params["log_clip"])
    except io.HMSDataError as exc:
        if not skip_bad:
            raise
        print(f"[hms] warning: {exc}", flush=True)
        return i, BAD_ITEM, t0, str(exc)
    finally:
        data.flush()
        del data
    return i, nan_share, first, None


# ---------------------------------------------------------------- building

def _params(cfg: DictConfig, kind: str) -> dict:
    """What a cache's content depends on: the montage (eeg), the log clip and more (spec)."""
    if kind == "eeg":  # every experiment's signals come from one cache: nothing in the config matters
        return {"signals": list(EEG_CACHE_SIGNALS)}
    # kaggle_spec.normalize does not change the cached log-power (the network standardises on the
    # device) but stays in the hash: without it every existing spectrogram cache would be renamed
    return OmegaConf.to_container(cfg.kaggle_spec, resolve=True)


def _cache_dir(cfg: DictConfig, data_dir: Path, kind: str, split: str, paths: list[Path],
               items: pd.DataFrame) -> Path:
    h = hashlib.sha256()
    h.update(json.dumps({"v": CACHE_VERSION, "kind": kind, "params": _params(cfg, kind)}, sort_keys=True).encode())
    h.update(str(Path(data_dir).resolve()).encode())
    h.update(pd.util.hash_pandas_object(items, index=False).values.tobytes())
    for p in paths:
        st = p.stat() if p.exists() else None
        h.update(f"{p.name}:{st.st_size if st else -1}:{st.st_mtime_ns if st else -1}".encode())
    return Path(cfg.paths.work_dir) / "cache" / f"{kind}-{split}-{h.hexdigest()[:16]}"


def _layout(items: pd.DataFrame, kind: str) -> pd.DataFrame:
    per_second = schema.SAMPLING_RATE if kind == "eeg" else 1 / schema.SPEC_STEP_SECONDS
    length = np.round(items["seconds"].to_numpy() * per_second).astype(np.int64)
    return items.assign(length=length, start=np.concatenate([[0], np.cumsum(length)[:-1]]))


def cache_rows(table: pd.DataFrame, split: str, kind: str) -> int:
    """Rows the cache of this split and kind holds for the table, laid out as build_cache lays
    them out but without reading a file (`hms plan` sizes the caches before any is built)."""
    return int(_layout(spans(table, split, kind), kind)["length"].sum())


def build_cache(cfg: DictConfig, data_dir: Path, split: str, kind: str, table: pd.DataFrame,
                workers: int | None = None, progress: bool = True, skip_bad: bool = False) -> Path:
    """Build (or finish, or reuse) one cache; returns its directory. skip_bad (inference):
    a missing or unreadable file is marked BAD_ITEM in the index instead of stopping. Several
    processes may call it at once: one builds under the cache's lock, the others wait for it
    and reuse the result, so a cache is never written by two processes."""
    items = spans(table, split, kind)
    path_of = io.eeg_path if kind == "eeg" else io.spectrogram_path
    paths = [path_of(data_dir, split, i) for i in items["id"]]
    root = _cache_dir(cfg, data_dir, kind, split, paths, items)
    if (root / "meta.json").is_file():
        return root
    missing = [str(p) for p in paths if not p.is_file()]
    if missing and not skip_bad:
        raise io.HMSDataError(f"{len(missing)} {kind} files missing, e.g. {missing[0]}")
    with file_lock(root.parent / ".locks" / root.name, what=f"the {kind} {split} cache {root.name}"):
        if not (root / "meta.json").is_file():  # another process may have built it while we waited
            _note_older_caches(root, kind, split)
            _build(cfg, root, kind, split, _layout(items, kind), paths,
                   cache_workers(cfg, workers), progress, skip_bad)
    return root


def _build(cfg, root: Path, kind: str, split: str, items: pd.DataFrame, paths: list[Path], workers: int,
           progress: bool, skip_bad: bool) -> None:
    n_cols = len(EEG_CACHE_SIGNALS) if kind == "eeg" else len(schema.SPEC_COLUMNS)
    root.mkdir(parents=True, exist_ok=True)
    partial, done_path = root / "data.partial.npy", root / "done.partial.npy"
    shape = (int(items["length"].sum()), n_cols)
    if not partial.is_file() or np.load(partial, mmap_mode="r").shape != shape or not done_path.is_file():
        np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=shape).flush()
        done = np.full((len(items), 2), np.nan)
        done[:, 1] = items.t0.to_numpy()
        atomic_save_npy(done_path, done)
    done = np.load(done_path)  # per item: NaN share (NaN = not done yet), time of the first row
    todo = np.flatnonzero(np.isnan(done[:, 0]))
    params = _params(cfg, kind)
    jobs = [(kind, int(i), str(paths[i]), float(items.t0.iat[i]), int(items.start.iat[i]),
             int(items.length.iat[i]), params, str(partial), skip_bad) for i in todo]
    try:
        reasons = _run_jobs(jobs, done, done_path, workers, progress, f"prepare {kind} {split}")
    except io.HMSDataError as exc:  # a file the footer-only pre-flight could not see is damaged
        raise io.HMSDataError(f"{exc}. `hms validate` reads footers only, so it passed this file. Replace it "
                              "(`hms download`), or delete it and run with --skip-bad (validate.skip_bad=true), "
                              "which then leaves out every train.csv row that names it") from None
    if reasons:
        atomic_write_json(root / BAD_REASONS_JSON, {str(int(items.id.iat[i])): r for i, r in reasons.items()})
    index = items.assign(nan_share=done[:, 0], t0=done[:, 1])[list(INDEX_COLUMNS)]
    atomic_to_csv(index, root / "index.csv")
    os.replace(partial, root / "data.npy")
    done_path.unlink()
    meta = {"kind": kind, "split": split, "params": params, "shape": list(shape), "version": CACHE_VERSION}
    if kind == "eeg":
        meta["signals"] = list(EEG_CACHE_SIGNALS)
    atomic_write_json(root / "meta.json", meta)  # written last: its presence marks a complete cache


def cache_workers(cfg: DictConfig, workers: int | None = None) -> int:
    """Processes for a build: `workers` when given, else the cores this process may run on
    (os.sched_getaffinity: a Slurm or taskset allotment, not the whole node), capped by
    cache.workers (each worker holds one decoded recording; parquet reads gain little past it)."""
    if workers:
        return max(1, int(workers))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cap = OmegaConf.select(cfg, "cache.workers", default=None)
    return max(1, min(cores, int(cap)) if cap else cores)


def _note_older_caches(root: Path, kind: str, split: str) -> None:
    """One line when this build replaces caches of an older format (kept until `--clean`)."""
    older = []
    for d in root.parent.glob(f"{kind}-{split}-*"):
        meta = d / "meta.json"
        if d != root and meta.is_file() and json.loads(meta.read_text()).get("version", 0) < CACHE_VERSION:
            older.append(d.name)
    if older:
        print(f"[hms] cache format {CACHE_VERSION} (one EEG cache of all {len(EEG_CACHE_SIGNALS)} signals, shared by "
              f"every experiment; spectrogram frames at their file's times): building {root.name} once. "
              f"Older caches {sorted(older)} are no longer read; `hms prepare --clean` removes them.", flush=True)


def _run_jobs(jobs, done, done_path, workers, progress, desc) -> dict[int, str]:
    """Runs the jobs, recording each item's NaN share and first time; returns {item: error} of bad items."""
    bar = tqdm(total=len(jobs), desc=desc, disable=bars_off(progress), unit="file")
    checkpoint_every = max(1, len(jobs) // 20)
    with ProcessPoolExecutor(max_workers=workers) if workers > 1 else _Serial() as pool:
        reasons = {}
        for k, (i, share, first, reason) in enumerate(pool.map(_work, jobs, chunksize=4), start=1):
            done[i] = share, first
            if reason is not None:
                reasons[i] = reason
            bar.update()
            if k % checkpoint_every == 0:
                atomic_save_npy(done_path, done)  # progress survives an interruption
    atomic_save_npy(done_path, done)
    bar.close()
    return reasons


class _Serial:
    """Same interface as an executor, in-process (workers=1, easier to debug)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def map(fn, items, chunksize=1):
        return map(fn, items)


def open_cache(root: Path) -> Cache:
    root = Path(root)
    if not (root / "meta.json").is_file():
        raise io.HMSDataError(f"{root}: not a complete cache; run `hms prepare`")
    try:
        meta = json.loads((root / "meta.json").read_text())
        index = pd.read_csv(root / "index.csv").set_index("id")
        data = np.load(root / "data.npy", mmap_mode="r")
        rows = int((index["start"] + index["length"]).max()) if len(index) else 0
    except (OSError, ValueError, KeyError, pd.errors.ParserError) as exc:  # truncated or corrupted files
        raise io.HMSDataError(f"{root} is damaged ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): "
                              f"delete that folder and run `hms prepare` (or the same command) again") from None
    if data.ndim != 2 or data.shape[0] < rows or index[["start", "length"]].isna().any().any():
        raise io.HMSDataError(f"{root} is damaged (data.npy holds {data.shape[0]:,} rows, its index.csv spans "
                              f"{rows:,}): delete that folder and run `hms prepare` (or the same command) again")
    return Cache(root, data, index, meta)


def clear_stale(cfg: DictConfig, keep: list[Path]) -> list[Path]:
    """Remove cache dirs not in `keep` (used by `hms prepare --clean`)."""
    base = Path(cfg.paths.work_dir) / "cache"
    removed = []
    for d in base.glob("*-*-*") if base.is_dir() else []:
        if d.is_dir() and d not in keep:
            shutil.rmtree(d)
            removed.append(d)
    return removed
