"""Several processes at once: `hms run`'s scheduler over device slots, the file locks that let
concurrent `hms train --fold K` processes share caches and folds, torchrun's limits, and
pseudo-label teachers that read another montage than their student."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import hms as package
from hms.data import labels, schema

from conftest import TEST_SETTINGS, TINY_TRAIN

VOTES = list(schema.VOTE_COLUMNS)
REPO = Path(__file__).resolve().parents[1]
ONE_EPOCH = "train.stages=[{rows: all, epochs: 1, lr: 3.0e-3}]"
TINY_TREES = ["folds.n_folds=2", "model.max_iter=20", "model.min_samples_leaf=5"]


def hms_env(data: Path, work: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HMS_")}
    env.update(HMS_DATA_DIR=str(data), HMS_WORK_DIR=str(work), HMS_SUBMISSION_DIR=str(work / "submissions"),
               HMS_DEVICE="cpu", PYTHONPATH=str(Path(package.__file__).parents[1]))  # the hms under test
    env.update(TEST_SETTINGS)  # serial unless --devices, as in the tests' own process
    return env


def run_hms(*args, data: Path, work: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hms", *args], env=hms_env(data, work), capture_output=True,
                          text=True, **kw)


def tiny_conv1d_config(tmp_path: Path) -> Path:
    """A conv1d experiment file small enough for a test: 2 folds, one epoch, one full fit."""
    path = tmp_path / "tiny.yaml"
    path.write_text(f"inherit: {REPO / 'configs/demo/conv1d.yaml'}\nname: tiny\n")
    return path


TINY_RUN = [o for o in TINY_TRAIN if not o.startswith("train.stages")] + [ONE_EPOCH, "train.full_fits=1",
                                                                          "context.enabled=false"]


# ---------------------------------------------------------------- device slots

def test_visible_gpus_are_cuda_visible_devices_entries_as_given(monkeypatch):
    from hms.jobs.schedule import device_slots, slot_env, visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, GPU-8f3c2a, MIG-GPU-8f3c2a/1/0")
    assert visible_gpus() == ["3", "GPU-8f3c2a", "MIG-GPU-8f3c2a/1/0"]
    assert device_slots("all") == visible_gpus()
    assert device_slots(2) == ["3", "GPU-8f3c2a"]
    with pytest.raises(ValueError, match="--gpus 4: 3 GPUs are visible"):
        device_slots(4)
    assert slot_env("MIG-GPU-8f3c2a/1/0", 0)["CUDA_VISIBLE_DEVICES"] == "MIG-GPU-8f3c2a/1/0"
    assert slot_env("cpu", 2)["HMS_DEVICE"] == "cpu" and slot_env("cpu", 2)["CUDA_VISIBLE_DEVICES"] == ""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []  # set but empty: no GPU, whatever torch would count
    assert device_slots(devices=["cpu", "cpu"]) == ["cpu", "cpu"]


def test_without_a_gpu_the_main_job_trains_one_run_per_core_on_one_thread_each(monkeypatch):
    """No GPU (or HMS_DEVICE=cpu beside one): a slot per core up to 4, each run's threads its
    share of the cores; HMS_CPU_JOBS sets the count and 1 keeps the runs in hms run's process."""
    from hms.config import ConfigError
    from hms.jobs.schedule import MAX_CPU_JOBS, cpu_slots, device_slots, slot_env

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.delenv("HMS_CPU_JOBS")
    for cores, slots in ((1, 1), (2, 2), (3, 3), (16, 4)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)))
        assert device_slots() == ["cpu"] * slots
        assert slot_env("cpu", slots)["OMP_NUM_THREADS"] == str(cores // slots)  # 16 cores: 4 runs x 4 threads
    assert MAX_CPU_JOBS == 4
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("HMS_DEVICE", "cpu")
    assert device_slots() == ["cpu"] * 4  # the GPUs are not used: HMS_DEVICE says so
    monkeypatch.setenv("HMS_CPU_JOBS", "1")
    assert cpu_slots() == ["cpu"]
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("HMS_CPU_JOBS", bad)
        with pytest.raises(ConfigError, match=f"HMS_CPU_JOBS='{bad}': a number of runs at once"):
            cpu_slots()


def test_a_students_jobs_wait_for_the_teacher_jobs_they_read(tmp_path):
    from hms.config import load_config
    from hms.jobs.experiments import teachers_first
    from hms.jobs.schedule import plan_jobs

    student = load_config([], ["name=student", "folds.n_folds=2", "train.full_fits=1",
                               "labels.pseudo.from=[teacher]"])
    teacher = load_config([], ["name=teacher", "folds.n_folds=2", "train.full_fits=2"])
    jobs = {j.key: j for j in plan_jobs(teachers_first([student, teacher]),
                                        {"student": "s.yaml", "teacher": "t.yaml"}, ["x=1"])}
    assert list(jobs) == ["teacher fold0", "teacher fold1", "teacher full0", "teacher full1",
                          "student fold0", "student fold1", "student full0"]
    assert jobs["teacher fold1"].needs == set() and jobs["teacher fold1"].args == ["t.yaml", "x=1", "--fold", "1"]
    assert jobs["teacher full1"].needs == {"teacher fold0", "teacher fold1"}
    assert jobs["student fold1"].needs == {"teacher fold1"}  # its pseudo-labels: the teacher's fold-1 model
    assert jobs["student full0"].needs == {"student fold0", "student fold1", "teacher fold0", "teacher fold1",
                                           "teacher full0", "teacher full1"}  # the teacher's OOF
    assert jobs["student full0"].args[-2:] == ["--full", "0"]


def test_tiny_folds_say_once_which_class_a_fold_lacks_without_sklearns_warning(capsys):
    import warnings

    from hms.data.folds import make_folds

    from conftest import train_frame

    train = train_frame(n_patients=12)
    train.loc[train.expert_consensus == "Seizure", "expert_consensus"] = "Other"
    train.loc[train.eeg_id == train.eeg_id.iloc[0], "expert_consensus"] = "Seizure"  # one Seizure eeg_id
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sklearn's "least populated class" warning would raise here
        make_folds(train, 3, seed=0)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "some folds have no eeg_id whose experts' majority is" in out[0]
    assert "Seizure (1 eeg_id, in 1 of 3 folds)" in out[0]


STAND_IN = """
import pathlib, sys, time
key, out, failing = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3]
(out / f"{key}.start").write_text(repr(time.time()))
time.sleep(0.2)
if key == failing:
    print("boom: a stand-in failure")
    sys.exit(3)
(out / f"{key}.end").write_text(repr(time.time()))
"""


def stand_in_jobs(tmp_path, failing=""):
    """A teacher and its student (2 folds and a full fit each), on two slots named a and b,
    each job a stand-in process that records when it started and ended."""
    from hms.config import load_config
    from hms.jobs.schedule import Scheduler, plan_jobs

    common = [f"paths.work_dir={tmp_path}", "folds.n_folds=2", "train.full_fits=1"]
    cfgs = [load_config([], ["name=teacher", *common]),
            load_config([], ["name=student", "labels.pseudo.from=[teacher]", *common])]
    jobs = plan_jobs(cfgs, {"teacher": "t.yaml", "student": "s.yaml"}, [])
    (tmp_path / "marks").mkdir()
    collected = []
    command = lambda job: [sys.executable, "-c", STAND_IN, job.key, str(tmp_path / "marks"), failing]  # noqa: E731
    return Scheduler(cfgs, jobs, ["a", "b"], lambda cfg: collected.append(cfg.name), command), jobs, collected


def mark(tmp_path, key, what):
    path = tmp_path / "marks" / f"{key}.{what}"
    return float(path.read_text()) if path.is_file() else None


def test_the_scheduler_runs_each_job_once_after_what_it_needs_on_both_slots(tmp_path):
    scheduler, jobs, collected = stand_in_jobs(tmp_path)
    scheduler.run()
    for job in jobs:
        assert mark(tmp_path, job.key, "end") is not None
        for need in job.needs:
            assert mark(tmp_path, need, "end") <= mark(tmp_path, job.key, "start"), (need, job.key)
        log = (tmp_path / job.exp / job.run / "train.log").read_text()
        assert log.count("==== ") == 1  # started once
    headers = [(tmp_path / "teacher" / f"fold{k}" / "train.log").read_text() for k in (0, 1)]
    assert "on device a: " in headers[0] and "on device b: " in headers[1]  # both slots at once
    assert collected == ["teacher", "student"]  # each OOF written once its last job was done


def test_the_scheduler_stops_at_the_first_failure_and_names_the_job_and_its_log(tmp_path):
    from hms.jobs.schedule import RunFailed

    scheduler, jobs, collected = stand_in_jobs(tmp_path, failing="teacher fold1")
    log = tmp_path / "teacher" / "fold1" / "train.log"
    with pytest.raises(RunFailed, match=f"teacher fold1 failed \\(exit 3\\) on device b; its log: {log}"):
        scheduler.run()
    assert "boom: a stand-in failure" in log.read_text()
    assert [j.key for j in jobs if mark(tmp_path, j.key, "start")] == ["teacher fold0", "teacher fold1"]
    assert collected == [] and not scheduler.running


# ---------------------------------------------------------------- hms run over two slots

@pytest.mark.slow
def test_two_cpu_slots_run_every_fold_once_and_give_the_serial_oof(tiny_synth, tmp_path):
    config = tiny_conv1d_config(tmp_path)
    serial = run_hms("run", str(config), *TINY_RUN, data=tiny_synth, work=tmp_path / "serial")
    assert serial.returncode == 0, serial.stderr[-3000:]
    run = run_hms("run", str(config), *TINY_RUN, "--devices", "cpu,cpu", data=tiny_synth, work=tmp_path / "slots")
    assert run.returncode == 0, run.stderr[-3000:]
    done = [line for line in run.stdout.splitlines() if line.startswith("[hms run] tiny ")]
    assert sorted(line.split(" done")[0] for line in done) == [
        "[hms run] tiny fold0", "[hms run] tiny fold1", "[hms run] tiny full0"]
    exp = tmp_path / "slots" / "tiny"
    for run_name in ("fold0", "fold1", "full0"):
        log = (exp / run_name / "train.log").read_text()
        assert log.count("==== ") == 1 and "\r" not in log  # one process ran it; no progress-bar noise
        assert "stage 0 epoch 0: loss" in log  # one line per epoch instead
        assert len(pd.read_csv(exp / run_name / "log.csv")) == 1  # one epoch, trained once
    ours, theirs = (pd.read_csv(w / "tiny" / "oof.csv") for w in (tmp_path / "slots", tmp_path / "serial"))
    assert list(ours.eeg_id) == list(theirs.eeg_id)
    np.testing.assert_allclose(ours[VOTES].to_numpy(), theirs[VOTES].to_numpy(), atol=1e-5)
    assert (tmp_path / "slots" / "submissions" / "submission.csv").is_file()


@pytest.mark.slow
def test_a_failed_fold_stops_hms_run_and_names_the_fold_and_its_log(tiny_synth, tmp_path):
    config = tiny_conv1d_config(tmp_path)
    work = tmp_path / "work"
    broken = work / "tiny" / "fold1" / "last.pt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a checkpoint")  # fold 1 dies when it resumes from it
    run = run_hms("run", str(config), *TINY_RUN, "--devices", "cpu,cpu", data=tiny_synth, work=work)
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    log = work / "tiny" / "fold1" / "train.log"
    assert last.startswith("hms run: error: tiny fold1 failed (exit 2)") and f"its log: {log}" in last
    assert f"{broken} is damaged" in log.read_text()  # the child's one line, not a traceback
    assert not (work / "tiny" / "full0").exists()  # nothing ran after the failure
    assert not (work / "submissions" / "submission.csv").exists()


# ---------------------------------------------------------------- concurrent hms train

@pytest.mark.slow
def test_concurrent_folds_build_caches_and_folds_once(tmp_path):
    """Two `hms train --fold K` processes started together on an empty work dir (the tree
    member: its midline EEG cache too) both finish, and what they built is byte-identical to
    one process's serial build."""
    data = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "hms", "synth", "--out", str(data), "--n-eegs", "40", "--n-test-eegs",
                    "6", "--quiet"], env=hms_env(data, tmp_path), check=True, capture_output=True)
    args = ["train", "configs/demo/qeeg_trees.yaml", *TINY_TREES]
    env = hms_env(data, tmp_path / "parallel")
    procs = [subprocess.Popen([sys.executable, "-m", "hms", *args, "--fold", str(k)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for k in (0, 1)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    serial = run_hms(*args, "--fold", "0", data=data, work=tmp_path / "serial")  # builds all the shared things
    assert serial.returncode == 0, serial.stderr[-2000:]
    parallel, serial = built_files(tmp_path / "parallel"), built_files(tmp_path / "serial")
    assert any("/" in name for name in serial) and "folds.csv" in serial
    assert parallel.keys() == serial.keys()
    assert [name for name in serial if parallel[name] != serial[name]] == []
    for k in (0, 1):
        assert '"complete": true' in (tmp_path / "parallel" / "qeeg_trees" / f"fold{k}" / "metrics.json").read_text()


def built_files(work: Path) -> dict[str, bytes]:
    """The shared things a run builds: every cache file, folds.csv and folds.json."""
    files = [p for p in (work / "cache").rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    files += [work / "folds.csv", work / "folds.json"]
    return {str(p.relative_to(work)): p.read_bytes() for p in files}


# ---------------------------------------------------------------- torchrun

def torchrun(*args, tmp_path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "hms",
               *args]
    return subprocess.run(command, env=hms_env(tmp_path / "data", tmp_path / "work"), capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_hms_run_under_torchrun_refuses_at_once_with_the_command_that_works(tmp_path):
    proc = torchrun("run", "configs/demo/conv1d.yaml", tmp_path=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.count("hms run: error: hms run schedules its own processes") == 2  # both ranks, one line each
    assert "torchrun --nproc_per_node=N -m hms train CONFIG" in proc.stderr
    assert not (tmp_path / "work").exists() and not (tmp_path / "data").exists()  # nothing was built


@pytest.mark.slow
def test_the_tree_member_refuses_torchrun_before_anything_is_built(tmp_path):
    proc = torchrun("train", "configs/demo/qeeg_trees.yaml", "--fold", "0", tmp_path=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.count("a qeeg_trees experiment is fitted once, in one process; run it without torchrun") == 2
    assert "parameter" not in proc.stderr  # not DDP's complaint about a network without parameters
    assert not (tmp_path / "work").exists()


# ---------------------------------------------------------------- pseudo-label teachers

@pytest.mark.slow
@pytest.mark.parametrize("teacher_file, student_file", [("qeeg_trees", "conv1d"), ("conv1d", "qeeg_trees")])
def test_a_teacher_with_another_montage_predicts_from_its_own_caches(tiny_synth, tmp_path, teacher_file,
                                                                     student_file):
    """qeeg_trees reads 18 signals (signal.extras: [midline]), conv1d 16: each, as the other's
    teacher, predicts from the caches its own config builds (issue 22, item 2)."""
    from hms.config import load_config
    from hms.data.tables import load_train
    from hms.training.experiment import train_experiment
    from hms.training.pseudo import pseudo_labelled
    from hms.models.runs import RunSpec

    def demo(name, *extra):
        small = TINY_TREES if name == "qeeg_trees" else TINY_TRAIN
        return load_config([f"configs/demo/{name}.yaml"], [f"paths.data_dir={tiny_synth}", f"paths.work_dir={tmp_path}",
                                                           *small, ONE_EPOCH, "train.full_fits=0",
                                                           "context.enabled=false", *extra])

    teacher = demo(teacher_file)
    student = demo(student_file, "name=student", f"labels.pseudo.from=[{teacher.name}]", "labels.pseudo.weight=1.0")
    assert len(teacher.signal.extras) != len(student.signal.extras)  # the two montages differ
    train_experiment(teacher, folds=[0], progress=False)
    train = load_train(student)
    rows = train[train.fold != 0]
    mixed = pseudo_labelled(rows, student, RunSpec("fold0", 0, 1), torch.device("cpu"))
    low = ~labels.high_vote_mask(rows, student.labels.min_votes_high)
    assert low.any()
    taught = mixed[low][VOTES].to_numpy()
    assert np.isfinite(taught).all() and not np.allclose(taught, rows[low][VOTES].to_numpy())
