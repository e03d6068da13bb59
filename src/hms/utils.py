"""Small helpers shared by every stage: atomic writes, file locks, seeding, timing."""
from __future__ import annotations

import errno
import json
import os
import random
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from filelock import FileLock, Timeout


class DiskFull(OSError):
    """A write failed for want of disk space; nothing was written under the final name."""


def disk_full(path: Path, exc: OSError) -> DiskFull:
    return DiskFull(errno.ENOSPC, f"no space left on device while writing {path}: nothing was written under that "
                    "name (an earlier file there is intact). Free disk space (`hms prepare --clean` removes caches "
                    "of other settings; set-aside <run>.old-* folders can go) and run the same command again: "
                    "finished work is kept")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` only if the block succeeds,
    so a crash never leaves a half-written artefact under the final name. A full disk raises
    DiskFull naming `path` (writers such as torch.save do not say which file failed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise disk_full(path, exc) if exc.errno == errno.ENOSPC else exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:
        if exc.errno == errno.ENOSPC and not isinstance(exc, DiskFull):
            raise disk_full(path, exc) from exc
        raise
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


LOCK_TIMEOUT_S = 6 * 3600.0  # longer than a first real cache build (the longest thing built under a lock)


@contextmanager
def file_lock(path: str | Path, timeout_s: float = LOCK_TIMEOUT_S, what: str | None = None) -> Iterator[None]:
    """Hold an exclusive lock on `<path>.lock` for the block, so that of several processes
    (on one machine, or Slurm tasks on shared storage) one builds `path` while the others wait
    and then find it built. A filelock.FileLock, not a hand-made one: it is released when its
    process dies, so a killed build never blocks the next. Waiting longer than timeout_s raises
    TimeoutError naming the lock file, what it guards and who to look for."""
    lock_path = Path(f"{path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path), timeout=timeout_s)
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:  # say why this process seems to stand still
            print(f"[hms] waiting for another process building {what or Path(path).name} (lock {lock_path})",
                  flush=True)
            lock.acquire()
    except Timeout:
        raise TimeoutError(f"waited {timeout_s:g} s for {lock_path} (another process is building "
                           f"{what or Path(path).name}); if none is running, delete the lock file") from None
    try:
        yield
    finally:
        lock.release()


def bars_off(progress: bool) -> bool | None:
    """tqdm's `disable` for a bar shown when `progress`: on a terminal only (None makes tqdm turn
    itself off when its stream is not a TTY), so a log file gets the caller's one line per epoch
    or stage instead of carriage-return noise."""
    return None if progress else True


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
