"""Where an experiment's runs live: $HMS_WORK_DIR/<exp>/<run>/ (see hms.training.runs), and
when a run counts as finished. Shared by the fold loop, pseudo-label teachers, the
experiment's orchestration and the scheduler."""
from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout
from omegaconf import DictConfig

from hms import config as C
from hms.data.io import HMSDataError
from hms.utils import atomic_write_json

TRAIN_LOG = "train.log"  # a scheduled run's output (hms run with several devices)


def experiment_name(cfg: DictConfig, config_path: str | None = None) -> str:
    if cfg.get("name"):
        return str(cfg.name)
    if config_path:
        return Path(config_path).stem
    raise ValueError("the experiment has no name: set `name:` in its config")


def exp_dir(cfg: DictConfig) -> Path:
    return C.work_dir(cfg) / str(cfg.name)


def is_complete(fold_dir: Path) -> bool:
    metrics = fold_dir / "metrics.json"
    return metrics.is_file() and '"complete": true' in metrics.read_text()


class DamagedFile(HMSDataError):
    """A file the job wrote earlier cannot be read back (truncated or corrupted)."""


DAMAGED_WAY_ON = {  # what to do about a damaged file, by its name
    "best.pt": "retrain the run (`hms train CONFIG --fold K --force`, or `--full I` for a full fit)",
    "last.pt": "delete it to restart the run from its first epoch",
}


def load_checkpoint(path: Path, map_location="cpu"):
    """torch.load(weights_only=True), or DamagedFile naming the file and the way on."""
    import pickle
    import zipfile

    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, PermissionError):
        raise
    except (RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DamagedFile(f"{path} is damaged and cannot be loaded ({detail}): "
                          f"{DAMAGED_WAY_ON.get(Path(path).name, 'delete it and run the command that wrote it again')}"
                          ) from None


RUN_LOCK = ".hms-run"  # <work_dir>/.hms-run.lock, and .hms-run.json naming its holder


class WorkDirBusy(RuntimeError):
    """Another `hms run` holds the work dir and this one was told not to wait."""


@contextmanager
def one_main_job(work_dir: Path, wait: bool = True) -> Iterator[None]:
    """Hold the work dir for one `hms run` at a time: two main jobs over the same runs would
    train the same folds twice and race on oof.csv and the submission. A second one says which
    process holds it and since when, then waits (wait=False: raises WorkDirBusy). Separate
    `hms train --fold K` processes (Slurm tasks, the scheduler's children) take no such lock.
    The lock is a filelock.FileLock: released when its process dies, so a killed job never
    blocks the next one."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(work_dir / f"{RUN_LOCK}.lock"))
    holder_file = work_dir / f"{RUN_LOCK}.json"
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = _holder(holder_file)
        busy = f"another hms run ({holder}) holds the work dir {work_dir}"
        if not wait:
            raise WorkDirBusy(f"{busy}: --no-wait refuses; wait for it, or give this job another HMS_WORK_DIR") from None
        print(f"[hms] {busy}: waiting for it to finish (--no-wait refuses instead)", flush=True)
        lock.acquire()
    try:
        atomic_write_json(holder_file, {"pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                                        "command": " ".join(sys.argv)})
        yield
    finally:
        holder_file.unlink(missing_ok=True)
        lock.release()


def _holder(holder_file: Path) -> str:
    try:
        h = json.loads(holder_file.read_text())
        return f"pid {h['pid']}, since {h['since']}: {h['command']}"
    except (OSError, ValueError, KeyError):
        return "a process that has not written its name yet"
