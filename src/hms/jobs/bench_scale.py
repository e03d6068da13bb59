"""`hms bench scale --data DIR`: the pipeline's stages on a dataset of the competition's size
(`hms synth --like-kaggle`), one JSON line per stage: wall seconds, CPU seconds, peak RSS and
the disk the stage added.

Each stage runs in its own process (a fresh interpreter: STAGE_CHILD), so its peak memory is
its own: the summed PSS of the stage's process tree, sampled every 0.2 s (TreeRssPeak), or the
main process's exact high-water mark when that is larger.
Stages whose work grows with the data also carry `full_size_s`, their wall time scaled by the
real count over this dataset's (rows, or 2,000 test EEGs), when the dataset is a fraction.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from hms.data import schema
from hms.data.like_kaggle import REAL_COUNTS, REAL_TEST_EEGS

GPU_BOX_CORES = 16  # the cores of the GPU machine the loader workers share
LOADER_SECONDS = 20.0  # how long each loader is timed (after a warm-up batch)
TREE_ITEMS = 512  # items whose tree features are timed
# The command a stage runs in: `python -c` rather than the `hms` CLI, so that no subcommand exists
# only for this; its arguments are stage_in_child's (stage, config, workers).
STAGE_CHILD = "import sys; from hms.jobs.bench_scale import stage_in_child; stage_in_child(*sys.argv[1:])"


def default_configs() -> list[str]:
    """configs/demo/*.yaml, then configs/recipe/*.yaml when present."""
    from hms.config import config_dir

    root = config_dir()
    return [str(p) for d in ("demo", "recipe") for p in sorted((root / d).glob("*.yaml"))]


def _gb(n_bytes: float) -> float:
    return round(n_bytes / 1e9, 3)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) if Path(path).is_dir() else 0


def _pss_bytes(pid: int) -> tuple[int, int]:
    """(all, anonymous) proportional resident bytes of one process, (0, 0) once it is gone.
    Pages shared with the processes it forked count once over all of them, so a sum over
    workers is no overcount. `all` includes the cache pages a memmap has read (the kernel
    drops them under pressure); anonymous + shmem is the memory that must stay in RAM."""
    fields = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("Pss", "Pss_Anon", "Pss_Shmem"):
                    fields[key] = int(rest.split()[0]) * 1024
    except (OSError, IndexError, ValueError):
        return 0, 0
    return fields.get("Pss", 0), fields.get("Pss_Anon", 0) + fields.get("Pss_Shmem", 0)


def tree_pids(root: int) -> list[int]:
    """root and its live descendants (the stage's worker processes), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


class TreeRssPeak:
    """Samples the summed resident memory (PSS) of a process and its descendants every `every`
    seconds, in a thread. The kernel's own high-water marks do not serve: a child started by fork/vfork +
    exec inherits its parent's peak in ru_maxrss, so each stage would report the largest peak
    so far; and ru_maxrss is one process's, where several workers run at once."""

    def __init__(self, pid: int, every: float = 0.2):
        import threading

        self.pid, self.every, self.peak, self.peak_anon = pid, every, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            sizes = [_pss_bytes(p) for p in tree_pids(self.pid)]
            self.peak = max(self.peak, sum(a for a, _ in sizes))
            self.peak_anon = max(self.peak_anon, sum(b for _, b in sizes))
            self._stop.wait(self.every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def timed_stage(stage: str, config: str, workers: int | None, env: dict, work_dir: Path) -> dict:
    """Run one stage in a child process (STAGE_CHILD); wall, CPU (the stage's processes, user +
    system), peak RSS (GB: the larger of the summed PSS of its processes, sampled, and the main
    process's exact high-water mark; peak_anon_gb: their anonymous memory alone, without the
    memmapped cache pages) and the disk it added (GB), plus what the child printed as its last
    JSON line. workers: prepare's processes (None: all cores)."""
    before = dir_bytes(work_dir)
    t0 = time.perf_counter()
    command = [sys.executable, "-c", STAGE_CHILD, stage, config, str(workers or "")]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    sampler = TreeRssPeak(proc.pid)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    sampled, anon = sampler.stop(), sampler.peak_anon
    extra = child_result(out, proc.returncode)
    peak = max(sampled, extra.pop("main_hwm_bytes", 0))
    return {"stage": stage, **extra.pop("label", {}), "wall_s": round(wall, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "peak_rss_gb": _gb(peak), "peak_anon_gb": _gb(anon),
            "disk_gb": _gb(dir_bytes(work_dir) - before), **extra}


def child_result(out: str, returncode: int) -> dict:
    """The last JSON line the stage's process printed (stage_in_child), and its exit status if it failed."""
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    result = json.loads(lines[-1]) if lines else {}
    if returncode != 0:
        result["error"] = f"exit status {returncode}"
    return result


def own_high_water() -> int:
    """This process's peak resident bytes (VmHWM: its own address space since exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def dataset_line(data_dir: Path) -> dict:
    import pandas as pd

    train = pd.read_csv(data_dir / schema.TRAIN_CSV)
    test = pd.read_csv(data_dir / schema.TEST_CSV)
    return {"stage": "data", "rows": len(train), "eegs": int(train.eeg_id.nunique()),
            "spectrograms": int(train.spectrogram_id.nunique()), "patients": int(train.patient_id.nunique()),
            "test_eegs": len(test), "fraction": round(len(train) / REAL_COUNTS["rows"], 4),
            "data_gb": _gb(dir_bytes(data_dir))}


def bench_scale(data_dir: Path, work_dir: Path, configs: list[str], workers: int | None = None,
                only: list[str] | None = None, emit=print) -> list[dict]:
    """Every stage in order (or those named in `only`); `emit` gets each line as it is measured."""
    data_dir, work_dir = Path(data_dir).resolve(), Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HMS_DATA_DIR": str(data_dir), "HMS_WORK_DIR": str(work_dir)}
    data = dataset_line(data_dir)
    scale = {"rows": REAL_COUNTS["rows"] / data["rows"], "test": REAL_TEST_EEGS / data["test_eegs"]}
    lines = [data]
    emit(json.dumps(data))
    stages = [("validate", configs[0], "rows"), ("folds", configs[0], "rows")]
    stages += [("prepare", c, "rows") for c in configs]
    stages += [("loader", c, None) for c in configs]
    trees = [c for c in configs if _kind(c) == "qeeg_trees"]
    stages += [("trees", c, "rows") for c in trees]
    stages += [("features", c, "rows") for c in trees[:1]]  # one build serves every tree config
    stages += [("notebook", c, "test") for c in configs]
    cleared = set()
    for stage, config, scaled_by in [s for s in stages if not only or s[0] in only]:
        kind = {"prepare": "*-train", "notebook": "*-test", "features": "features-*"}.get(stage)
        if kind and kind not in cleared:  # time the builds, not the reuse of an earlier run's caches
            clear_caches(work_dir, kind, emit)
            cleared.add(kind)
        line = timed_stage(stage, config, workers, env, work_dir)
        if scaled_by and "full_size_s" not in line and scale[scaled_by] > 1.001:
            line["full_size_s"] = round(line["wall_s"] * scale[scaled_by], 1)
        lines.append(line)
        emit(json.dumps(line))
    return lines


def clear_caches(work_dir: Path, kind: str, emit=print) -> None:
    """Remove the bench work dir's caches whose names match `kind` (`*-train`: one split's;
    `features-*`: the tree feature caches), said in a line."""
    import shutil

    for d in sorted((Path(work_dir) / "cache").glob(f"{kind}-*")):
        emit(json.dumps({"note": f"removing {d} so that the build is timed"}))
        shutil.rmtree(d)


def _kind(config: str) -> str:
    from hms.config import load_config

    return str(load_config([config]).model.kind)


# ---------------------------------------------------------------- stages (in the child)

def _cfg(config: str):
    from hms.config import load_config

    return load_config([config])


def stage_validate(config: str) -> dict:
    from hms import config as C
    from hms.data.validate import REPORT_JSON, preflight

    cfg = _cfg(config)
    (C.work_dir(cfg) / REPORT_JSON).unlink(missing_ok=True)  # time the check, not the reuse of its report
    report = preflight(C.data_dir(cfg), C.work_dir(cfg), skip_bad=False, quiet=True)
    return {"files_checked": report.files_checked, "problems": len(report.problems)}


def stage_folds(config: str) -> dict:
    from hms.data.tables import ensure_folds, folds_path

    cfg = _cfg(config)
    if folds_path(cfg).is_file():
        folds_path(cfg).unlink()  # time the build, not the reuse
    folds = ensure_folds(cfg)
    return {"n_folds": int(folds.fold.nunique())}


def stage_prepare(config: str, workers: int | None = None) -> dict:
    """The train caches of one config (reused when an earlier config built them)."""
    from hms.cache.prepare import prepare

    cfg = _cfg(config)
    dirs = prepare(cfg, ("train",), workers=workers, progress=False)["train"]
    return {"label": {"config": cfg.name}, "caches": {k: Path(d).name for k, d in dirs.items()}}


def h200_rates() -> dict[str, float]:
    """The H200 samples/s measured per experiment: configs/throughput.yaml (jobs/throughput.py)."""
    from hms.jobs.throughput import throughput_table

    table = throughput_table()
    measured = table["devices"][table["gpu_reference"]]["experiments"]
    return {name: entry["samples_per_s"] for name, entry in measured.items()}


def h200_rate(config: str) -> int | None:
    """The H200 samples/s measured for this config's name, or for a config it inherits from
    (a recipe member inherits its model and input from a configs/exp one)."""
    import yaml

    rates, path = h200_rates(), Path(config)
    while path.is_file():
        raw = yaml.safe_load(path.read_text()) or {}
        for name in (raw.get("name"), path.stem):
            if name in rates:
                return rates[name]
        if not raw.get("inherit"):
            return None
        path = (path.parent / raw["inherit"]).resolve()
    return None


def stage_loader(config: str) -> dict:
    """Items/s of one loader worker: the dataset's __getitem__ and collation over shuffled
    items, in this process (what each DataLoader worker does), no model, no device."""
    import torch
    from torch.utils.data import DataLoader

    from hms.jobs.bench import training_dataset

    cfg = _cfg(config)
    t0 = time.perf_counter()
    ds = training_dataset(cfg)
    build_s = time.perf_counter() - t0
    torch.manual_seed(0)
    torch.set_num_threads(1)  # as in a DataLoader worker: more threads only spin (4x the CPU per item here)
    loader = DataLoader(ds, batch_size=int(cfg.train.batch_size), shuffle=True, num_workers=0)
    next(iter(loader))  # warm-up: first page faults of the caches' index and memmaps
    items, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < LOADER_SECONDS:  # epochs in turn: a small dataset's end comes soon
        for batch in loader:
            items += len(batch["index"])
            if time.perf_counter() - t0 > LOADER_SECONDS:
                break
    per_worker = items / (time.perf_counter() - t0)
    per_cpu_s = items / max(time.process_time() - c0, 1e-9)  # what one dedicated core gives
    gpu = h200_rate(config)
    need = math.ceil(gpu / per_cpu_s) if gpu else None
    return {"label": {"config": cfg.name}, "dataset_build_s": round(build_s, 1), "items": len(ds),
            "items_timed": items, "items_per_s_per_worker": round(per_worker, 1),
            "items_per_cpu_s": round(per_cpu_s, 1), "h200_samples_per_s": gpu, "workers_needed": need,
            "fits_16_cores": None if need is None else need <= GPU_BOX_CORES - 2}


def stage_trees(config: str) -> dict:
    """The tree member's features per item on the CPU (signals cleaned and decimated, 102
    features), timed over TREE_ITEMS items; `full_size_s` is every training item's."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from hms.jobs.bench import training_dataset
    from hms.inference.trees import feature_matrix
    from hms.models.network import build_network

    cfg = _cfg(config)
    ds = training_dataset(cfg)
    net = build_network(cfg)
    n = min(TREE_ITEMS, len(ds))
    loader = DataLoader(Subset(ds, range(n)), batch_size=int(cfg.train.batch_size), num_workers=0)
    t0, c0 = time.perf_counter(), time.process_time()
    feats = feature_matrix(net, loader, torch.device("cpu"))
    seconds = time.perf_counter() - t0
    rate = n / seconds
    cpu_per_item = (time.process_time() - c0) / n
    full_items = len(ds) * REAL_COUNTS["rows"] / len(ds.rows)
    return {"label": {"config": cfg.name}, "items_timed": n, "n_features": int(feats.shape[1]),
            "items_per_s": round(rate, 1), "cpu_s_per_item": round(cpu_per_item, 4), "train_items": len(ds),
            "full_size_s": round(full_items / rate, 1), "full_size_cpu_s": round(full_items * cpu_per_item, 1),
            "cpu_threads": torch.get_num_threads()}


def stage_features(config: str, workers: int | None = None) -> dict:
    """The tree member's feature caches, built once per dataset over the cache workers (plain
    and mirrored for the TTA): every training window (what prepare_experiment builds before
    the runs), then every test window (what the notebook builds once for all runs)."""
    from hms.cache.prepare import prepare
    from hms.data.tables import load_train
    from hms.inference.batch import test_inputs
    from hms.inference.trees import ItemFeatures

    cfg = _cfg(config)
    caches = prepare(cfg, ("train",), workers=workers, progress=False)["train"]
    test, eeg, spec, ok = test_inputs(cfg)
    out = {"label": {"config": cfg.name}}
    for split, table, roots in (("train", load_train(cfg), (caches["eeg"], caches["spec"])),
                                ("test", test[ok], (eeg.root, spec.root))):
        t0, c0 = time.perf_counter(), _cpu_with_children()
        features = ItemFeatures(cfg, split, table, *roots, progress=False, workers=workers)
        out[f"{split}_windows"] = len(features.caches[False].windows)
        out[f"{split}_s"] = round(time.perf_counter() - t0, 1)
        out[f"{split}_cpu_s"] = round(_cpu_with_children() - c0, 1)
    return out


def _cpu_with_children() -> float:
    """User + system seconds of this process and its finished children (the cache workers)."""
    own = os.times()
    return own.user + own.system + own.children_user + own.children_system


def stage_notebook(config: str) -> dict:
    """The test caches the Kaggle notebook builds for one member before predicting
    (predict_test's inputs, all cores); a later member reuses what an earlier one built."""
    from hms.inference.batch import test_inputs

    cfg = _cfg(config)
    test, eeg, spec, ok = test_inputs(cfg)
    return {"label": {"config": cfg.name}, "test_eegs": len(test), "predictable": int(ok.sum())}


STAGES = {"validate": stage_validate, "folds": stage_folds, "prepare": stage_prepare, "loader": stage_loader,
          "trees": stage_trees, "features": stage_features, "notebook": stage_notebook}


def stage_in_child(stage: str, config: str, workers: str = "") -> None:
    """The stage's own process (STAGE_CHILD): run it and print its result with this process's
    high-water mark as the last JSON line, which timed_stage reads."""
    kwargs = {"workers": int(workers)} if stage in ("prepare", "features") and workers else {}
    result = STAGES[stage](config, **kwargs)
    print(json.dumps({**result, "main_hwm_bytes": own_high_water()}, default=str), flush=True)
