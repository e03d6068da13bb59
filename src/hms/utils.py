"""Small helpers shared by every stage: atomic writes, seeding, timing."""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` only if the block succeeds,
    so a crash never leaves a half-written artefact under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """atomic_path for a folder: yield an empty folder beside `path`; only if the block succeeds
    does it take `path`'s place (renames), so a failure leaves an earlier folder as it was and
    no half-built one behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # a plain mkdir's mode, not mkdtemp's private 0700
    aside = tmp.with_name(tmp.name + ".old")
    try:
        yield tmp
        if path.exists():
            path.rename(aside)
        tmp.rename(path)
    finally:
        for leftover in (tmp, aside):
            if leftover.exists():
                shutil.rmtree(leftover)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=float) + "\n")


def atomic_to_csv(df, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


@contextmanager
def file_lock(path: str | Path, what: str | None = None, timeout_s: float | None = None) -> Iterator[None]:
    """Hold an exclusive lock on `path` (filelock's FileLock: an OS lock, released if the holder
    dies, and seen by other machines on shared storage whose filesystem supports fcntl/flock
    locks: NFSv4, Lustre and GPFS as usually mounted). Says once when it has to wait; waits
    forever unless timeout_s, then raises TimeoutError naming `what`."""
    from filelock import FileLock, Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"[hms] waiting for another process to finish {what or path} (lock {path})", flush=True)
        try:
            lock.acquire(timeout=-1 if timeout_s is None else timeout_s)
        except Timeout:
            raise TimeoutError(f"{what or path}: still locked by another process after {timeout_s} s "
                               f"(lock file {path})") from None
    try:
        yield
    finally:
        lock.release()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
