"""Where one CV fold's time goes (issue 31): `hms train CONFIG --fold 0` under cProfile, in a work
dir of its own that shares the main job's caches, then the cumulative seconds of the loader, the
training step, validation (with its TTA at the end), the test prediction and the rest.

    python scripts/profile_fold.py configs/demo/conv1d.yaml [key=value ...]

cProfile adds a cost to every Python call (the loader's per-item code most): read the shares,
not the seconds. Needs the main job's caches (working/cache) from one `hms run`."""
from __future__ import annotations

import cProfile
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

PARTS = {  # (file suffix, function): what a part's cumulative time is read from
    "loader (items + collate)": ("torch/utils/data/dataloader.py", "__next__"),
    "training step (forward, backward, optimiser)": ("hms/training/step.py", "__call__"),
    "validation, every epoch (TTA at the end)": ("hms/training/loop.py", "validate"),
    "test prediction": ("hms/training/loop.py", "test_predictions"),
    "tree fit": ("hms/models/trees.py", "fit"),
}


def cumulative(stats: pstats.Stats, suffix: str, name: str) -> float:
    return sum(row[3] for (path, _, func), row in stats.stats.items() if path.endswith(suffix) and func == name)


def main(argv: list[str]) -> int:
    config, overrides = argv[0], argv[1:]
    work = Path(tempfile.mkdtemp(prefix="hms-profile-"))
    (work / "cache").symlink_to(Path("working/cache").resolve())
    for name in ("folds.csv", "folds.json", "validate.json"):
        shutil.copy(Path("working") / name, work / name)
    os.environ["HMS_WORK_DIR"] = str(work)
    from hms.cli import main as hms

    profile, wall, cpu = cProfile.Profile(), time.perf_counter(), time.process_time()
    profile.runcall(hms, ["train", config, "--fold", "0", *overrides])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stats = pstats.Stats(profile)
    total = stats.total_tt
    print(f"{config} fold 0: {wall:.1f} s wall, {cpu:.1f} CPU-s; under cProfile {total:.1f} s")
    for part, (suffix, name) in PARTS.items():
        seconds = cumulative(stats, suffix, name)
        if seconds:
            print(f"  {part:<46} {seconds:7.1f} s  {seconds / total:6.1%}")
    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
