"""One `hms run` per work dir at a time."""
from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from hms.utils import atomic_write_json


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
