"""Feature caches: the fixed features of every item's window, computed once per dataset split and
feature settings and then read by every run of a model fitted once on them (model kind
qeeg_trees: its CV folds, full fits, validation with TTA, `hms predict`, the notebook).

A feature depends on the window alone (eeg_id and offset, spectrogram_id and offset), never on
the fold: one cache per split serves all the runs. Layout, beside the eeg and spec caches in
$HMS_WORK_DIR/cache/features-<split>-<hash>/: data.npy (n_windows, n_features) float64,
windows.csv (the WINDOW_KEY columns, one row per data row) and meta.json, written last. The
hash covers the settings the caller says the features depend on (the source caches' names,
which hash their files, the config sections, the feature code's source), so a changed setting
builds a new cache and never reads a stale one. Built like the other caches: under the same
kind of file lock (one process builds, others wait and reuse), in chunks of CHUNK_ITEMS windows
over the cache workers, straight into a `.partial` memmap with a per-chunk done list, so an
interrupted build resumes where it stopped. What extracts the features is the caller's: a
module-level factory and its (picklable) arguments, called once per worker process, returning
a function from a windows table to its (n, n_features) matrix (this stage cannot import the
models).
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from hms.cache.store import _Serial
from hms.utils import atomic_save_npy, atomic_to_csv, atomic_write_json, bars_off, file_lock

FEATURE_VERSION = 1
WINDOW_KEY = ("eeg_id", "eeg_label_offset_seconds", "spectrogram_id", "spectrogram_label_offset_seconds")
CHUNK_ITEMS = 64  # windows per job: a worker's loader batches, large enough to amortise its start

Extractor = tuple[Callable[..., Callable[[pd.DataFrame], np.ndarray]], tuple]  # (factory, its args)


@dataclass
class FeatureCache:
    """An opened feature cache: data[k] holds the features of windows.iloc[k]."""

    root: Path
    data: np.ndarray
    windows: pd.DataFrame

    def __post_init__(self):
        self._rows = {key: k for k, key in enumerate(window_keys(self.windows))}

    def positions(self, table: pd.DataFrame) -> np.ndarray:
        """Each table row's position in data, -1 where its window is not cached."""
        return np.array([self._rows.get(key, -1) for key in window_keys(table)], dtype=np.int64)


def window_keys(table: pd.DataFrame) -> list[tuple]:
    """One hashable key per row: its WINDOW_KEY values (ids as int, offsets as float)."""
    cols = [table[c].to_numpy() for c in WINDOW_KEY]
    return [(int(a), float(b), int(c), float(d)) for a, b, c, d in zip(*cols)]


def unique_windows(table: pd.DataFrame) -> pd.DataFrame:
    """The distinct WINDOW_KEY rows of a table, in first-seen order."""
    return table[list(WINDOW_KEY)].drop_duplicates(ignore_index=True)


def feature_cache_dir(work_dir: Path, split: str, settings: dict, windows: pd.DataFrame) -> Path:
    h = hashlib.sha256()
    h.update(json.dumps({"v": FEATURE_VERSION, "split": split, "settings": settings}, sort_keys=True,
                        default=str).encode())
    h.update(pd.util.hash_pandas_object(windows[list(WINDOW_KEY)], index=False).values.tobytes())
    return Path(work_dir) / "cache" / f"features-{split}-{h.hexdigest()[:16]}"


def build_feature_cache(work_dir: Path, split: str, settings: dict, windows: pd.DataFrame, n_features: int,
                        extractor: Extractor, workers: int = 1, progress: bool = True) -> Path:
    """Build (or finish, or reuse) the feature cache of `windows` (a WINDOW_KEY table without
    repeats); returns its directory. Several processes may call it at once: one builds under the
    lock while the others wait, then all read the same files."""
    windows = windows[list(WINDOW_KEY)].reset_index(drop=True)
    root = feature_cache_dir(work_dir, split, settings, windows)
    if (root / "meta.json").is_file():
        return root
    with file_lock(root.parent / ".locks" / root.name, what=f"the {split} feature cache {root.name}"):
        if not (root / "meta.json").is_file():  # another process may have built it while we waited
            _build(root, split, settings, windows, n_features, extractor, workers, progress)
    return root


def _build(root: Path, split: str, settings: dict, windows: pd.DataFrame, n_features: int, extractor: Extractor,
           workers: int, progress: bool) -> None:
    root.mkdir(parents=True, exist_ok=True)
    partial, done_path = root / "data.partial.npy", root / "done.partial.npy"
    shape = (len(windows), int(n_features))
    n_chunks = -(-len(windows) // CHUNK_ITEMS)
    if not partial.is_file() or np.load(partial, mmap_mode="r").shape != shape or not done_path.is_file():
        np.lib.format.open_memmap(partial, mode="w+", dtype=np.float64, shape=shape).flush()
        atomic_save_npy(done_path, np.zeros(n_chunks, bool))
    done = np.load(done_path)
    jobs = [(int(c), c * CHUNK_ITEMS, min(len(windows), (c + 1) * CHUNK_ITEMS), str(partial))
            for c in np.flatnonzero(~done)]
    bar = tqdm(total=len(jobs), desc=f"features {split}", disable=bars_off(progress), unit="chunk")
    checkpoint_every = max(1, len(jobs) // 20)
    pool = (ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(extractor, windows))
            if workers > 1 and len(jobs) > 1 else _Serial())
    if isinstance(pool, _Serial):
        _init_worker(extractor, windows)
    try:
        with pool:
            for k, chunk in enumerate(pool.map(_chunk_job, jobs), start=1):
                done[chunk] = True
                bar.update()
                if k % checkpoint_every == 0:
                    atomic_save_npy(done_path, done)  # progress survives an interruption
    finally:
        _WORKER.clear()  # in-process builds: let the extractor's network and caches go
    atomic_save_npy(done_path, done)
    bar.close()
    atomic_to_csv(windows, root / "windows.csv")
    os.replace(partial, root / "data.npy")
    done_path.unlink()
    atomic_write_json(root / "meta.json", {"kind": "features", "split": split, "shape": list(shape),
                                           "settings": settings, "version": FEATURE_VERSION})


_WORKER: dict = {}  # per process: the extract function and the windows table


def _init_worker(extractor: Extractor, windows: pd.DataFrame) -> None:
    factory, args = extractor
    _WORKER.update(extract=factory(*args), windows=windows)


def _chunk_job(job: tuple[int, int, int, str]) -> int:
    """Extract one chunk of windows straight into the shared partial memmap."""
    chunk, lo, hi, data_path = job
    features = _WORKER["extract"](_WORKER["windows"].iloc[lo:hi].reset_index(drop=True))
    data = np.load(data_path, mmap_mode="r+")
    try:
        data[lo:hi] = features
        data.flush()
    finally:
        del data
    return chunk


def open_feature_cache(root: Path) -> FeatureCache:
    root = Path(root)
    if not (root / "meta.json").is_file():
        raise FileNotFoundError(f"{root}: not a complete feature cache (built by `hms prepare` or the first run)")
    windows = pd.read_csv(root / "windows.csv")
    return FeatureCache(root, np.load(root / "data.npy", mmap_mode="r"), windows)
