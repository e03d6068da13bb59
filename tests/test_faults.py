"""Faults a competitor's week brings: an edited config over finished or half-finished runs, a
resumed run under another config, runs of one experiment trained under different configs."""
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from conftest import TINY_TRAIN, tiny_config


def one_epoch(*extra):
    return ["train.stages=[{rows: all, epochs: 1, lr: 3.0e-3}]", *extra]


@pytest.fixture(scope="module")
def finished(tiny_synth, tmp_path_factory):
    """The tiny experiment trained through (2 folds, 1 epoch each), to be copied and broken."""
    from hms.training.experiment import train_experiment

    work = tmp_path_factory.mktemp("finished")
    train_experiment(tiny_config(tiny_synth, work, *one_epoch()), progress=False)
    return work


@pytest.fixture()
def copy(finished, tmp_path):
    import shutil

    shutil.copytree(finished, tmp_path / "work")
    return tmp_path / "work"


def test_an_edited_config_stops_before_training_and_names_the_change(copy, tiny_synth):
    from hms.training.experiment import train_experiment
    from hms.models.fingerprint import ConfigChanged

    best = copy / "tiny" / "fold0" / "best.pt"
    before = best.stat().st_mtime_ns
    edited = tiny_config(tiny_synth, copy, "train.stages=[{rows: all, epochs: 1, lr: 1.0e-3}]")
    with pytest.raises(ConfigChanged) as exc:
        train_experiment(edited, progress=False)
    message = str(exc.value)
    assert "tiny" in message and "fold0" in message and "train.stages" in message
    assert "0.003" in message and "0.001" in message  # old -> new
    assert "--force" in message and "name:" in message
    assert best.stat().st_mtime_ns == before
    # both ways on: a new name keeps both, --force retrains and keeps the old folder aside
    renamed = tiny_config(tiny_synth, copy, "train.stages=[{rows: all, epochs: 1, lr: 1.0e-3}]", "name=tiny_lr1")
    train_experiment(renamed, folds=[0], progress=False)
    assert (copy / "tiny_lr1" / "fold0" / "best.pt").is_file() and best.stat().st_mtime_ns == before
    train_experiment(edited, folds=[0], force=True, progress=False)
    assert list((copy / "tiny").glob("fold0.old-*/best.pt"))


def test_settings_that_cannot_change_a_run_do_not_stop_it(copy, tiny_synth, capsys):
    from hms.training.experiment import train_experiment

    same = tiny_config(tiny_synth, copy, *one_epoch("train.num_workers=0", "train.n_seeds=1", "train.full_fits=0",
                                                    "train.logger=csv", "cache.workers=1", "device=cpu",
                                                    "ensemble.calibration=off"))
    train_experiment(same, folds=[0], progress=True)
    assert "already complete: skipped" in capsys.readouterr().out


def test_a_run_saved_by_an_older_version_counts_missing_keys_as_defaults(copy, tiny_synth):
    from hms.models.fingerprint import changed_runs

    cfg = tiny_config(tiny_synth, copy, *one_epoch())
    saved = copy / "tiny" / "fold0" / "config.yaml"
    old = OmegaConf.load(saved)
    del old.train["ema"]  # a key added to base.yaml after the run was trained, at its default
    del old["context"]
    OmegaConf.save(old, saved)
    assert changed_runs(cfg, [saved.parent]) == {}
    old.train.ema = 0.99  # a saved value that is not today's is a change
    OmegaConf.save(old, saved)
    assert changed_runs(cfg, [saved.parent]) == {"fold0": {"train.ema": (0.99, 0.0)}}


def test_a_resumed_run_refuses_a_last_pt_saved_under_another_config(tiny_synth, tmp_path, monkeypatch):
    import hms.training.loop as loop
    from hms.training.experiment import train_experiment
    from hms.models.fingerprint import ConfigChanged

    cfg = tiny_config(tiny_synth, tmp_path)
    real_save = loop.FoldRun.save_state

    def save_then_die(self, state, s_idx, epoch, *args):
        real_save(self, state, s_idx, epoch, *args)
        raise KeyboardInterrupt  # killed right after epoch 0 was saved

    monkeypatch.setattr(loop.FoldRun, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_experiment(cfg, folds=[0], progress=False)
    monkeypatch.setattr(loop.FoldRun, "save_state", real_save)
    run_dir = tmp_path / "tiny" / "fold0"
    saved_config = (run_dir / "config.yaml").read_text()
    wider = tiny_config(tiny_synth, tmp_path, "model.stage_channels=[16, 48]")  # another network shape
    with pytest.raises(ConfigChanged, match="model.stage_channels"):  # not load_state_dict's traceback
        train_experiment(wider, folds=[0], progress=False)
    assert (run_dir / "config.yaml").read_text() == saved_config  # the saved config still names the weights
    assert (run_dir / "last.pt").is_file()
    # last.pt carries the fingerprint too: a run folder whose config.yaml was replaced by hand
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["fingerprint"] == loop.fingerprint(cfg) != loop.fingerprint(wider)
    OmegaConf.save(OmegaConf.merge(wider, {"name": "tiny"}), run_dir / "config.yaml")
    with pytest.raises(ConfigChanged, match="last.pt was saved under another config"):
        loop.FoldRun(wider, loop.RunSpec("fold0", 0, 0), _train(wider), _caches(wider), False).load_state()



def test_a_last_pt_saved_before_the_layout_change_still_resumes(tiny_synth, tmp_path, monkeypatch):
    """A run killed before issue 29 moved keys (input.spec_normalize -> kaggle_spec.normalize,
    mel.sr derived) saved a fingerprint over its config in the old keys; unchanged settings
    resume it, where a plain hash comparison would demand --force."""
    import hms.training.loop as loop
    from hms.training.experiment import train_experiment

    cfg = tiny_config(tiny_synth, tmp_path)
    real_save = loop.FoldRun.save_state

    def save_then_die(self, state, s_idx, epoch, *args):
        real_save(self, state, s_idx, epoch, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop.FoldRun, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_experiment(cfg, folds=[0], progress=False)
    monkeypatch.setattr(loop.FoldRun, "save_state", real_save)
    run_dir = tmp_path / "tiny" / "fold0"
    old = OmegaConf.load(run_dir / "config.yaml")  # as the code before the move wrote it
    old.input.spec_normalize = old.kaggle_spec.normalize
    old.mel.sr = 200 / int(old.input.downsample)
    OmegaConf.save(old, run_dir / "config.yaml")
    state = torch.load(run_dir / "last.pt", weights_only=True)
    state["fingerprint"] = loop.fingerprint(old, upgrade=False)
    torch.save(state, run_dir / "last.pt")
    assert state["fingerprint"] != loop.fingerprint(cfg)
    resumed = loop.FoldRun(cfg, loop.RunSpec("fold0", 0, 0), _train(cfg), _caches(cfg), False).load_state()
    assert (resumed.stage, resumed.epoch) == (0, 0)


def _caches(cfg):
    from hms.cache.prepare import prepare

    return prepare(cfg, progress=False)


def _train(cfg):
    from hms.data.tables import load_train

    return load_train(cfg)


def test_joining_runs_trained_under_different_configs_is_refused(copy, tiny_synth):
    from hms.inference.ensemble import describe_members
    from hms.inference.predict import load_folds
    from hms.kaggle.package import copy_experiment
    from hms.models.fingerprint import ConfigChanged

    exp = copy / "tiny"
    assert len(describe_members([exp])[0]["test_runs"]) == 2  # one config: joined
    fold1 = OmegaConf.load(exp / "fold1" / "config.yaml")
    fold1.signal.bandpass = [0.5, 40.0]  # as if fold 1 had been trained after an edit
    OmegaConf.save(fold1, exp / "fold1" / "config.yaml")
    for join in (lambda: describe_members([exp]), lambda: load_folds(exp, {}, "cpu"),
                 lambda: copy_experiment(exp, copy / "pkg")):
        with pytest.raises(ConfigChanged, match=r"signal.bandpass: \[0.5, 20.0\] -> \[0.5, 40.0\]"):
            join()


def test_the_cli_says_it_in_one_line_and_exits_non_zero(copy, tiny_synth, capsys):
    from hms.cli import main

    edited = [f"paths.data_dir={tiny_synth}", f"paths.work_dir={copy}", "name=tiny", *TINY_TRAIN,
              "train.stages=[{rows: all, epochs: 1, lr: 2.0e-3}]"]
    assert main(["train", "configs/demo/conv1d.yaml", *edited, "--fold", "0"]) == 2
    err = capsys.readouterr().err
    assert "were trained under another config" in err and "Traceback" not in err
    assert pd.read_csv(copy / "tiny" / "fold0" / "log.csv").shape[0] == 1  # nothing retrained



HOLD = """
import sys, time
from hms.jobs.lock import one_main_job
with one_main_job(sys.argv[1]):
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(work, seconds):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(work), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_a_second_main_job_on_one_work_dir_says_who_holds_it(tmp_path, capsys):
    import signal

    from hms.cli import main
    from hms.jobs.lock import one_main_job

    holder = _holder(tmp_path, 60)
    try:
        assert main(["run", "configs/demo/conv1d.yaml", f"paths.work_dir={tmp_path}", "--no-wait"]) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and "since" in err and str(tmp_path) in err and "--no-wait" in err
        holder.send_signal(signal.SIGKILL)  # a killed job leaves its files; its lock goes with it
        holder.wait()
        assert (tmp_path / ".hms-run.json").is_file()
        with one_main_job(tmp_path, wait=False):
            assert str(__import__("os").getpid()) in (tmp_path / ".hms-run.json").read_text()
        assert not (tmp_path / ".hms-run.json").exists()
    finally:
        holder.kill()


def test_a_second_main_job_waits_for_the_first_by_default(tmp_path, capsys):
    import time

    from hms.jobs.lock import one_main_job

    holder = _holder(tmp_path, 2)
    t0 = time.perf_counter()
    with one_main_job(tmp_path):
        waited = time.perf_counter() - t0
    assert holder.wait() == 0 and waited > 0.5
    assert f"pid {holder.pid}" in capsys.readouterr().out


# ---------------------------------------------------------------- broken files and full disks

def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_a_damaged_best_pt_is_one_line_naming_it_and_the_way_on(copy, tiny_synth, capsys):
    from hms.cli import main

    best = copy / "tiny" / "fold1" / "best.pt"
    truncate(best)
    assert main(["predict", f"paths.data_dir={tiny_synth}", f"paths.work_dir={copy}", "--exp", "tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(best) in err and "damaged" in err and "--force" in err


def test_a_damaged_last_pt_says_delete_it_to_restart(copy, tiny_synth):
    from hms.training.experiment import train_experiment
    from hms.models.workdir import DamagedFile

    run = copy / "tiny" / "fold0"
    (run / "metrics.json").unlink()  # as if killed mid-run: unfinished, with a resume state
    (run / "last.pt").write_bytes(b"PK\x03\x04 not a whole zip")
    with pytest.raises(DamagedFile, match=r"last.pt is damaged .*delete it to restart the run"):
        train_experiment(tiny_config(tiny_synth, copy, *one_epoch()), folds=[0], progress=False)


@pytest.mark.parametrize("damage", ["truncated data.npy", "corrupted index.csv"])
def test_a_damaged_cache_names_its_folder(copy, damage):
    from hms.cache.store import open_cache
    from hms.data.io import HMSDataError

    root = next(p.parent for p in (copy / "cache").glob("*/data.npy") if "eeg" in p.parent.name)
    open_cache(root)  # whole, it opens
    if damage.endswith("data.npy"):
        truncate(root / "data.npy", 0.3)
    else:
        (root / "index.csv").write_text("id,start,length\n1,0,\n")
    with pytest.raises(HMSDataError, match=rf"{root} is damaged .*delete that folder and run `hms prepare`"):
        open_cache(root)


def test_a_truncated_folds_csv_is_rebuilt_the_same(copy, tiny_synth, capsys):
    from hms.data.tables import load_train

    cfg = tiny_config(tiny_synth, copy, *one_epoch())
    before = pd.read_csv(copy / "folds.csv")
    text = (copy / "folds.csv").read_text()
    (copy / "folds.csv").write_text(text[: len(text) // 2].rsplit(",", 1)[0] + ",")  # cut inside a row
    train = load_train(cfg)
    assert "is damaged" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_csv(copy / "folds.csv"), before)  # same seed, same folds
    assert train["fold"].notna().all()


def test_a_truncated_oof_csv_is_refused_by_the_ensemble(copy):
    from hms.inference.ensemble import load_oofs
    from hms.models.workdir import DamagedFile

    oof = copy / "tiny" / "oof.csv"
    lines = oof.read_text().splitlines()
    oof.write_text("\n".join(lines[: len(lines) // 2]) + "\n")  # whole rows lost: parses, but short
    with pytest.raises(DamagedFile, match=r"oof.csv is damaged .*rebuilt from the runs' val_pred.csv"):
        load_oofs([copy / "tiny"])


def test_a_full_disk_while_saving_a_checkpoint_leaves_nothing_half_written(tiny_synth, tmp_path, monkeypatch,
                                                                           capsys):
    import errno

    import hms.training.loop as loop
    from hms.training.experiment import train_experiment
    from hms.utils import DiskFull

    cfg = tiny_config(tiny_synth, tmp_path, *one_epoch())
    real_save = torch.save

    def disk_full_at_best(obj, f, *args, **kwargs):
        if ".best.pt." in str(f):
            with open(f, "wb") as fh:
                fh.write(b"PK\x03\x04 half")  # what reached the disk before it filled
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(loop.torch, "save", disk_full_at_best)
    with pytest.raises(DiskFull, match=r"no space left on device while writing .*fold0/best.pt: nothing was written"):
        train_experiment(cfg, folds=[0], progress=False)
    run = tmp_path / "tiny" / "fold0"
    assert not (run / "best.pt").exists() and not list(run.glob(".*.tmp"))
    assert not (run / "metrics.json").exists()  # not taken as complete
    monkeypatch.setattr(loop.torch, "save", real_save)
    train_experiment(cfg, folds=[0], progress=False)  # space freed: the same command finishes the run
    assert (run / "metrics.json").is_file() and loop.load_checkpoint(run / "best.pt")


# ---------------------------------------------------------------- kills

KILL_POINTS = [  # (a line hms run prints, what it is doing right after it)
    ("[hms plan] total", "validate, caches and folds"),
    ("[tiny fold0] stage 0 epoch 0", "fold 0's next epoch"),
    ("[tiny fold1] stage 1 epoch 0", "fold 1's last epoch, its OOF and test predictions"),
    ("[tiny full0] full-data fit", "the full fit, between the CV runs and the ensemble"),
    ("[tiny] OOF KL", "the ensemble and the submission"),
]


def hms_run(work, data, marker=None, *extra, sig=None, target=None):
    """`hms run` on the tiny experiment in a child process; sent `sig` (SIGKILL) right after it
    prints a line containing `marker` (target(proc) picks another process to signal). Returns
    its exit status and output."""
    import os
    import signal
    import subprocess
    import sys

    env = {**os.environ, "HMS_DATA_DIR": str(data), "HMS_WORK_DIR": str(work / "w"),
           "HMS_SUBMISSION_DIR": str(work / "s"), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "hms", "run", "configs/demo/conv1d.yaml", "name=tiny", *TINY_TRAIN,
           "input.signal_seconds=20", "train.full_fits=1", "context.enabled=false",
           "train.stages=[{rows: all, epochs: 2, lr: 3.0e-3}, {rows: high, epochs: 1, lr: 1.0e-3}]", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    out = []
    for line in proc.stdout:
        out.append(line)
        if marker and marker in line:
            os.kill(target(proc) if target else proc.pid, sig or signal.SIGKILL)
            if target or sig not in (None, signal.SIGKILL):
                out.extend(proc.stdout)  # what it says as it stops
            break
    proc.stdout.close()
    return proc.wait(), "".join(out)


def test_sigkill_at_each_stage_then_rerun_gives_the_uninterrupted_submission(tiny_synth, tmp_path):
    """One chain: killed at each point in turn, each run resuming the last; then a run that
    finishes. Its submission equals an uninterrupted run's: CPU training is deterministic here
    (num_workers 0; last.pt restores the weights, optimiser, scheduler and torch RNG)."""
    code, out = hms_run(tmp_path / "clean", tiny_synth)
    assert code == 0, out[-2000:]
    for marker, doing in KILL_POINTS:
        code, out = hms_run(tmp_path / "killed", tiny_synth, marker)
        assert code == -9 and marker in out, f"the kill during {doing} did not happen: {out[-1500:]}"
    code, out = hms_run(tmp_path / "killed", tiny_synth)
    assert code == 0, out[-2000:]
    clean = pd.read_csv(tmp_path / "clean" / "s" / "submission.csv")
    resumed = pd.read_csv(tmp_path / "killed" / "s" / "submission.csv")
    pd.testing.assert_frame_equal(resumed, clean, check_exact=False, rtol=0, atol=1e-6)


def processes_of(work) -> list[int]:
    """PIDs of live processes whose environment names this work dir (hms run and its jobs)."""
    import os
    from pathlib import Path

    mine, found = f"HMS_WORK_DIR={work / 'w'}".encode(), []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if mine in (proc / "environ").read_bytes().split(b"\0") and int(proc.name) != os.getpid():
                status = (proc / "status").read_text()
                if "\nState:\tZ" not in status:  # a zombie is already dead
                    found.append(int(proc.name))
        except OSError:
            continue
    return found


def wait_gone(work, seconds=20.0) -> list[int]:
    import time

    deadline = time.monotonic() + seconds
    while processes_of(work) and time.monotonic() < deadline:
        time.sleep(0.2)
    return processes_of(work)


def a_job_of(work):
    import time

    def find(parent):
        for _ in range(100):
            jobs = [p for p in processes_of(work) if p != parent.pid]
            if jobs:
                return jobs[0]
            time.sleep(0.1)
        raise AssertionError("no job process found")
    return find


def a_job_started_of(work):
    """hms run itself, once one of its jobs is running."""
    find = a_job_of(work)

    def parent(proc):
        find(proc)
        return proc.pid
    return parent


@pytest.mark.slow
def test_parallel_slots_stop_with_their_parent_and_resume(tiny_synth, tmp_path):
    """Two CPU slots: SIGTERM to hms run stops its jobs and says so; SIGKILL to hms run takes
    its jobs with it (Linux's parent-death signal); SIGKILL to one job fails the run naming it.
    No process is left and the work-dir lock is free each time; the next run finishes."""
    import signal

    from hms.jobs.lock import one_main_job

    slots, started = ("--devices", "cpu,cpu"), "[hms run] "
    code, out = hms_run(tmp_path, tiny_synth, "jobs on 2 devices", *slots, sig=signal.SIGTERM,
                        target=a_job_started_of(tmp_path))
    assert code == 130 and "interrupted by SIGTERM: stopped ['tiny fold" in out and "resume" in out, out[-1500:]
    assert wait_gone(tmp_path) == []
    code, out = hms_run(tmp_path, tiny_synth, "jobs on 2 devices", *slots)  # SIGKILL: no handler runs
    assert code == -9 and wait_gone(tmp_path) == [], out[-1500:]
    code, out = hms_run(tmp_path, tiny_synth, "jobs on 2 devices", *slots, target=a_job_of(tmp_path))
    assert code == 1 and "failed (exit -9)" in out and wait_gone(tmp_path) == [], out[-1500:]
    with one_main_job(tmp_path / "w", wait=False):  # no lock left held
        pass
    code, out = hms_run(tmp_path, tiny_synth, None, *slots)
    assert code == 0 and (tmp_path / "s" / "submission.csv").is_file(), out[-2000:]
    assert started in out
