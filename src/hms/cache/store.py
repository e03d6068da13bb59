"""`hms prepare`: the caches training and inference read, under $HMS_WORK_DIR/cache/.

Two kinds per split, each one flat memory-mapped npy plus an index:
  eeg  : raw bipolar signals in µV, NaN kept, float16 (n_samples_total, n_signals); one span per
         eeg_id covering all its labelled 50 s windows (train) or the whole file (test). The
         cleaning happens per 50 s window at training/inference time (dataset + model), so a
         train window and a test file are cleaned alike and filter settings need no new cache;
  spec : log-clipped Kaggle spectrogram frames, float16 (n_frames_total, 400); one span per
         spectrogram_id covering all its 10-minute windows.
A cache directory's name holds a hash of its inputs (file names, sizes, mtimes) and of the
parameters, so a changed parameter or file never reuses a stale cache. Work is written into a
`.partial` memmap with a done-bitmap; an interrupted run resumes where it stopped and the
final names appear only when every item is in.
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
from hms.utils import atomic_to_csv, atomic_write_json

CACHE_VERSION = 2  # 2: eeg caches hold raw bipolar signals
INDEX_COLUMNS = ("id", "start", "length", "t0", "nan_share")


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


def _eeg_item(path: Path, t0: float, n: int, signal_cfg: dict) -> tuple[np.ndarray, float]:
    eeg = io.read_eeg_array(path)
    start = int(round(t0 * schema.SAMPLING_RATE))
    if start + n > len(eeg):
        raise io.HMSDataError(
            f"{path}: {len(eeg)} samples, but its labelled windows need samples {start}..{start + n}"
        )
    raw = montage.bipolar(eeg[start:start + n], signal_cfg["extras"]).T
    with np.errstate(invalid="ignore"):
        return np.clip(raw, -FLOAT16_LIMIT, FLOAT16_LIMIT), float(np.isnan(raw).mean())


def _spec_item(path: Path, t0: float, n: int, spec_cfg: dict) -> tuple[np.ndarray, float]:
    logp = kaggle_spec.read_log_window(path, t0, n, tuple(spec_cfg["log_clip"]))
    return logp, float(np.isnan(logp).mean())


BAD_ITEM = -1.0  # nan_share of an item whose file was missing or unreadable (skip_bad mode)
BAD_REASONS_JSON = "bad_items.json"


def _work(job: tuple) -> tuple[int, float, str | None]:
    """Process one file and write it straight into the shared partial memmap."""
    kind, i, path, t0, start, n, params, data_path, skip_bad = job
    item = _eeg_item if kind == "eeg" else _spec_item
    try:
        values, nan_share = item(Path(path), t0, n, params)
    except io.HMSDataError as exc:
        if not skip_bad:
            raise
        print(f"[hms] warning: {exc}", flush=True)
        return i, BAD_ITEM, str(exc)
    data = np.load(data_path, mmap_mode="r+")
    data[start:start + n] = values.astype(np.float16)
    data.flush()
    del data
    return i, nan_share, None


# ---------------------------------------------------------------- building

def _params(cfg: DictConfig, kind: str) -> dict:
    """What a cache's content depends on: the montage (eeg), the log clip and more (spec)."""
    if kind == "eeg":
        return {"extras": list(cfg.signal.extras)}
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


def build_cache(cfg: DictConfig, data_dir: Path, split: str, kind: str, table: pd.DataFrame,
                workers: int | None = None, progress: bool = True, skip_bad: bool = False) -> Path:
    """Build (or finish, or reuse) one cache; returns its directory. skip_bad (inference):
    a missing or unreadable file is marked BAD_ITEM in the index instead of stopping."""
    items = spans(table, split, kind)
    path_of = io.eeg_path if kind == "eeg" else io.spectrogram_path
    paths = [path_of(data_dir, split, i) for i in items["id"]]
    root = _cache_dir(cfg, data_dir, kind, split, paths, items)
    if (root / "meta.json").is_file():
        return root
    missing = [str(p) for p in paths if not p.is_file()]
    if missing and not skip_bad:
        raise io.HMSDataError(f"{len(missing)} {kind} files missing, e.g. {missing[0]}")
    items = _layout(items, kind)
    n_cols = len(montage.montage_names(cfg.signal.extras)) if kind == "eeg" else len(schema.SPEC_COLUMNS)
    root.mkdir(parents=True, exist_ok=True)
    partial, done_path = root / "data.partial.npy", root / "done.partial.npy"
    shape = (int(items["length"].sum()), n_cols)
    if not partial.is_file() or np.load(partial, mmap_mode="r").shape != shape:
        np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=shape).flush()
        np.save(done_path, np.full(len(items), np.nan))
    nan_share = np.load(done_path)  # NaN = not done yet; else the item's NaN share
    todo = np.flatnonzero(np.isnan(nan_share))
    params = _params(cfg, kind)
    jobs = [(kind, int(i), str(paths[i]), float(items.t0.iat[i]), int(items.start.iat[i]),
             int(items.length.iat[i]), params, str(partial), skip_bad) for i in todo]
    reasons = _run_jobs(jobs, nan_share, done_path, workers, progress, f"prepare {kind} {split}")
    if reasons:
        atomic_write_json(root / BAD_REASONS_JSON, {str(int(items.id.iat[i])): r for i, r in reasons.items()})
    index = items.assign(nan_share=nan_share)[list(INDEX_COLUMNS)]
    atomic_to_csv(index, root / "index.csv")
    os.replace(partial, root / "data.npy")
    done_path.unlink()
    meta = {"kind": kind, "split": split, "params": params, "shape": list(shape), "version": CACHE_VERSION}
    atomic_write_json(root / "meta.json", meta)  # written last: its presence marks a complete cache
    return root


def _run_jobs(jobs, nan_share, done_path, workers, progress, desc) -> dict[int, str]:
    """Runs the jobs, recording each item's NaN share; returns {item: error} of bad items."""
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress, unit="file")
    checkpoint_every = max(1, len(jobs) // 20)
    with ProcessPoolExecutor(max_workers=workers) if workers > 1 else _Serial() as pool:
        reasons = {}
        for k, (i, share, reason) in enumerate(pool.map(_work, jobs, chunksize=4), start=1):
            nan_share[i] = share
            if reason is not None:
                reasons[i] = reason
            bar.update()
            if k % checkpoint_every == 0:
                np.save(done_path, nan_share)  # progress survives an interruption
    np.save(done_path, nan_share)
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
    meta = json.loads((root / "meta.json").read_text())
    index = pd.read_csv(root / "index.csv").set_index("id")
    return Cache(root, np.load(root / "data.npy", mmap_mode="r"), index, meta)


def clear_stale(cfg: DictConfig, keep: list[Path]) -> list[Path]:
    """Remove cache dirs not in `keep` (used by `hms prepare --clean`)."""
    base = Path(cfg.paths.work_dir) / "cache"
    removed = []
    for d in base.glob("*-*-*") if base.is_dir() else []:
        if d not in keep:
            shutil.rmtree(d)
            removed.append(d)
    return removed
