"""How `hms run` spreads an experiment's runs over several devices: one `hms train CONFIG
--fold K` (or `--full I`) process per device at a time, teachers' folds before their
students', full fits after their experiment's CV runs. Each job's output goes to
$HMS_WORK_DIR/<exp>/<run>/train.log; one line per finished job; the first failure stops the
others and names the job and its log. Caches, folds and the validate report are built once
before (hms.jobs.experiments.build_once), so the jobs only read them."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from hms import config as C
from hms.inputs.loaders import CORES_ENV
from hms.training.experiment import set_aside
from hms.models.runs import all_runs, cv_runs, n_full_fits, pseudo_teachers
from hms.models.workdir import TRAIN_LOG, exp_dir, is_complete

CPU_SLOT = "cpu"  # a device slot that trains on the CPU (tests; a machine with no GPU)
CPU_JOBS_ENV = "HMS_CPU_JOBS"  # runs training at once without a GPU (1: in the hms run process)
MAX_CPU_JOBS = 4  # each demo run holds ~1.2 GB; past 4, a run's cores are better spent as its threads
POLL_S = 0.2  # seconds between looks at the running jobs


class RunFailed(RuntimeError):
    """A scheduled job exited non-zero; the message names it and its log."""


class Interrupted(KeyboardInterrupt):
    """hms run was stopped by SIGINT or SIGTERM; the message says what it stopped."""


def die_with_parent() -> None:
    """In a job's process, before it starts: ask Linux to send it SIGTERM when `hms run` dies,
    even by SIGKILL, which no handler of the parent's can catch, so no fold trains on unseen.
    Elsewhere nothing (the parent's handlers still stop the jobs on SIGINT and SIGTERM)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))


@dataclass
class Job:
    exp: str
    run: str  # the run folder its log goes to: fold{k} (with fold k's extra seeds) or full{i}
    args: list[str]  # `hms train` arguments: config file, overrides, --fold/--full
    needs: set[str] = field(default_factory=set)  # keys of the jobs to finish first

    @property
    def key(self) -> str:
        return f"{self.exp} {self.run}"


def visible_gpus() -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES's entries when it is set (indices,
    UUIDs or MIG ids, kept as they are), else torch's device count."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def cpu_slots() -> list[str]:
    """The slots of a machine without a GPU: one run per core, up to MAX_CPU_JOBS, the cores
    shared out as their threads (slot_env); $HMS_CPU_JOBS sets the count. Small networks use a
    second thread poorly: on 2 cores two single-thread folds at once took 0.84x the CPU-seconds
    and 0.82x the wall time of the same folds one after the other on 2 threads (README, "What the
    CPU demo costs")."""
    jobs = C.env_count(CPU_JOBS_ENV, "a number of runs at once, 1 or more", minimum=1)
    return [CPU_SLOT] * (jobs or max(1, min(len(os.sched_getaffinity(0)), MAX_CPU_JOBS)))


def device_slots(gpus: str | int = "all", devices: list[str] | None = None) -> list[str]:
    """The device slots to schedule over: `devices` as given (GPU ids, or `cpu` for a CPU
    process), else the first `gpus` visible GPUs (all by default), else, with no GPU visible or
    HMS_DEVICE=cpu, cpu_slots()."""
    if devices:
        return list(devices)
    visible = [] if os.environ.get("HMS_DEVICE", "").startswith("cpu") else visible_gpus()
    if not visible and str(gpus) == "all":
        return cpu_slots()
    if str(gpus) == "all":
        return visible
    n = int(gpus)
    if not 1 <= n <= len(visible):
        raise C.ConfigError(f"--gpus {n}: {len(visible)} GPUs are visible ({visible or 'none'})")
    return visible[:n]


def slot_env(slot: str, n_cpu_slots: int, n_slots: int = 1) -> dict[str, str]:
    """The environment of a job on this slot: one GPU visible to it (as cuda:0) with its share of
    the cores for its loader workers (hms.inputs.loaders.loader_workers), or the CPU with a share
    of the cores."""
    env = dict(os.environ)
    if slot == CPU_SLOT:
        env.update(HMS_DEVICE="cpu", CUDA_VISIBLE_DEVICES="",
                   OMP_NUM_THREADS=str(max(1, len(os.sched_getaffinity(0)) // max(1, n_cpu_slots))))
    else:
        env.update(HMS_DEVICE="cuda", CUDA_VISIBLE_DEVICES=slot,
                   **{CORES_ENV: str(max(1, len(os.sched_getaffinity(0)) // max(1, n_slots)))})
    return env


def plan_jobs(cfgs: list[DictConfig], sources: dict[str, str], overrides: list[str],
              member_overrides: dict[str, list[str]] | None = None) -> list[Job]:
    """Every job of the experiments (teachers first, as given): fold k waits for the
    fold k of each teacher in this run (its pseudo-labels come from that model); full fits wait
    for their own experiment's folds and for every job of their teachers (they read the
    teacher's OOF). member_overrides: more key=value for one experiment's jobs (a budget's)."""
    names = {c.name for c in cfgs}
    jobs: list[Job] = []
    for cfg in cfgs:
        teachers = [t for t in pseudo_teachers(cfg) if t in names]
        base = [sources[cfg.name], *overrides, *(member_overrides or {}).get(cfg.name, [])]
        folds = [Job(cfg.name, f"fold{k}", [*base, "--fold", str(k)], {f"{t} fold{k}" for t in teachers})
                 for k in range(cfg.folds.n_folds)]
        teacher_jobs = {j.key for j in jobs if j.exp in teachers}
        fulls = [Job(cfg.name, f"full{i}", [*base, "--full", str(i)], {j.key for j in folds} | teacher_jobs)
                 for i in range(n_full_fits(cfg))]
        jobs += folds + fulls
    return jobs


def train_command(job: Job) -> list[str]:
    return [sys.executable, "-m", "hms", "train", *job.args]


def job_done(cfg: DictConfig, job: Job) -> bool:
    runs = [r.name for r in cv_runs(cfg, [int(job.run[4:])])] if job.run.startswith("fold") else [job.run]
    return all(is_complete(exp_dir(cfg) / name) for name in runs)


class Scheduler:
    """Runs jobs on device slots, one job per slot at a time, each as soon as what it needs is done."""

    def __init__(self, cfgs: list[DictConfig], jobs: list[Job], slots: list[str], on_experiment_done=None,
                 command=train_command):
        self.cfgs = {c.name: c for c in cfgs}
        self.command = command  # job -> argv (tests run stand-ins)
        self.pending, self.slots = list(jobs), list(slots)
        self.total = len(jobs)
        self.done: set[str] = set()
        self.running: dict[int, tuple[Job, subprocess.Popen, float, object]] = {}  # by slot index: names may repeat
        self.on_experiment_done = on_experiment_done or (lambda cfg: None)
        self.n_cpu = sum(s == CPU_SLOT for s in slots)
        self.interrupted: str | None = None  # the signal that asked the job to stop

    def log_path(self, job: Job) -> Path:
        return exp_dir(self.cfgs[job.exp]) / job.run / TRAIN_LOG

    def run(self) -> None:
        handled = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
        previous = {sig: signal.signal(sig, self.on_signal) for sig in handled}
        try:
            print(f"[hms run] {self.total} jobs on {len(self.slots)} devices {self.slots}; each job's output: "
                  f"<work>/<exp>/<run>/{TRAIN_LOG}", flush=True)
            while self.pending or self.running:
                self.start_ready()
                if not self.running:
                    raise RunFailed(f"jobs {[j.key for j in self.pending]} wait for jobs that never run")
                self.reap(self.wait_any())
        except Interrupted as exc:
            stopped = self.stop_all()
            raise Interrupted(f"interrupted by {exc}: stopped {stopped or 'no running job'}; {len(self.done)} of "
                              f"{self.total} jobs had finished") from None
        finally:
            self.stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def on_signal(self, signum, frame) -> None:
        """SIGINT/SIGTERM only set a flag, read between polls: an exception raised wherever the
        signal lands (inside a fork's handlers, say) could be swallowed there."""
        self.interrupted = signal.Signals(signum).name

    def check_interrupted(self) -> None:
        if self.interrupted:
            raise Interrupted(self.interrupted)

    def start_ready(self) -> None:
        self.check_interrupted()
        for slot in [i for i in range(len(self.slots)) if i not in self.running]:
            ready = next((j for j in self.pending if j.needs <= self.done), None)
            if ready is None:
                return
            self.pending.remove(ready)
            self.start(ready, slot)

    def start(self, job: Job, slot: int) -> None:
        log = self.log_path(job)
        log.parent.mkdir(parents=True, exist_ok=True)
        command = self.command(job)
        fh = open(log, "a")
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        fh.write(f"==== {started} on device {self.slots[slot]}: {' '.join(command[1:])}\n")
        fh.flush()
        proc = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=slot_env(self.slots[slot], self.n_cpu, len(self.slots)),
                                preexec_fn=die_with_parent)
        self.running[slot] = (job, proc, time.perf_counter(), fh)

    def wait_any(self) -> int:
        while True:
            self.check_interrupted()
            for slot, (_, proc, _, _) in self.running.items():
                if proc.poll() is not None:
                    return slot
            time.sleep(POLL_S)

    def reap(self, slot: int) -> None:
        job, proc, t0, fh = self.running.pop(slot)
        fh.close()
        if proc.returncode != 0:
            self.fail(job, self.slots[slot], proc.returncode)
        self.done.add(job.key)
        print(f"[hms run] {job.key} done on device {self.slots[slot]} in {time.perf_counter() - t0:.0f} s"
              f"{self.score(job)} ({len(self.done)}/{self.total} jobs)", flush=True)
        if not self.unfinished(job.exp):
            self.on_experiment_done(self.cfgs[job.exp])

    def score(self, job: Job) -> str:
        metrics = exp_dir(self.cfgs[job.exp]) / job.run / "metrics.json"
        kl = json.loads(metrics.read_text()).get("val_kl_high") if metrics.is_file() else None
        return f", high-vote val KL {kl:.4f}" if kl is not None else ""

    def unfinished(self, exp: str) -> bool:
        return any(j.exp == exp for j in self.pending) or any(j.exp == exp for j, *_ in self.running.values())

    def fail(self, job: Job, slot: str, code: int) -> None:
        stopped = self.stop_all()
        log = self.log_path(job)
        tail = log.read_text(errors="replace").splitlines()[-15:]
        print("\n".join(f"  | {line}" for line in tail), file=sys.stderr)
        also = f"; stopped {stopped} (they resume from last.pt on the next run)" if stopped else ""
        raise RunFailed(f"{job.key} failed (exit {code}) on device {slot}; its log: {log}{also}")

    def stop_all(self) -> list[str]:
        stopped = []
        for job, proc, _, fh in list(self.running.values()):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            fh.close()
            stopped.append(job.key)
        self.running.clear()
        return stopped


def schedule(cfgs: list[DictConfig], sources: dict[str, str], overrides: list[str], slots: list[str],
             force: bool = False, on_experiment_done=None, member_overrides: dict[str, list[str]] | None = None) -> None:
    """Train every run of the experiments (teachers first) over the device slots, one process
    per slot. force: earlier run folders are set aside first (<run>.old-<time>), so the jobs
    train them afresh. on_experiment_done(cfg) runs in this process once an experiment's last
    job has finished (it writes the OOF that students' full fits read)."""
    if force:
        for cfg in cfgs:
            for run in all_runs(cfg):
                set_aside(exp_dir(cfg) / run.name)
    by_name = {cfg.name: cfg for cfg in cfgs}
    jobs = plan_jobs(cfgs, sources, overrides, member_overrides)
    todo = [j for j in jobs if not job_done(by_name[j.exp], j)]
    finished = {j.key for j in jobs} - {j.key for j in todo}
    for j in todo:
        j.needs -= finished
    if finished:
        print(f"[hms run] {len(finished)} jobs already complete: skipped (use --force to retrain)", flush=True)
    for cfg in cfgs:
        if not any(j.exp == cfg.name for j in todo) and on_experiment_done:
            on_experiment_done(cfg)
    Scheduler(cfgs, todo, slots, on_experiment_done).run()
