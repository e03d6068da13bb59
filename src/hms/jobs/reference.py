"""A fixed CPU workload to measure a machine by (issue 31): the main job's time divided by it
says what to expect on another machine better than seconds do (two 2-core machines of the same
kind ran the demo 5x apart). `hms run` times it first and prints the ratio at the end;
`hms bench reference` prints it alone."""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hms import config as C

REFERENCE_STEPS = 20  # about a second: short beside a job, long beside timer noise
REFERENCE_REPEATS = 5  # the median of these: one timing of 20 steps on 2 threads ran 0.89-1.55 s on one machine
WARMUP_STEPS = 3
REFERENCE_THREADS = 1  # what each of the CPU demo's runs has (hms.jobs.schedule.cpu_slots)
REPEATS_ENV = "HMS_REFERENCE_REPEATS"  # hms run's timings of it; 0: none (the tests' short jobs)


def reference_net() -> nn.Module:
    """A small conv net of fixed shape and seed (no timm: the workload must not change with a
    library's release)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 6))


def cpu_reference(steps: int = REFERENCE_STEPS, repeats: int = REFERENCE_REPEATS) -> dict:
    """Wall and CPU seconds of `steps` AdamW training steps of reference_net on a fixed
    (32, 1, 64, 64) batch, on one CPU thread (what each of the CPU demo's runs has:
    hms.jobs.schedule.cpu_slots; a second thread's share varies from run to run), the median
    of `repeats` timings."""
    net = reference_net()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(32, 1, 64, 64, generator=generator)
    y = torch.randint(0, 6, (32,), generator=generator)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return float(loss.detach())

    threads = torch.get_num_threads()
    torch.set_num_threads(REFERENCE_THREADS)
    try:
        for _ in range(WARMUP_STEPS):
            step()
        walls, cpus = [], []
        for _ in range(repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(steps):
                loss = step()
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    finally:
        torch.set_num_threads(threads)
    return {"bench": "reference", "steps": steps, "repeats": repeats, "threads": REFERENCE_THREADS,
            "reference_s": round(float(np.median(walls)), 3), "reference_cpu_s": round(float(np.median(cpus)), 3),
            "spread_s": [round(min(walls), 3), round(max(walls), 3)], "final_loss": round(loss, 6)}


def job_reference() -> dict | None:
    """The reference `hms run` times before its job: REFERENCE_REPEATS timings (~8 s), or
    $HMS_REFERENCE_REPEATS of them; 0 times none (the test suite's many seconds-long jobs would
    spend most of their time on it)."""
    repeats = C.env_count(REPEATS_ENV, "a number of timings, 0 for none", minimum=0)
    if repeats is None:
        return cpu_reference()
    return cpu_reference(repeats=repeats) if repeats else None


def ratio_line(job_seconds: float, reference: dict | None) -> str:
    if reference is None:
        return f"{job_seconds:.0f} s (no CPU reference: {REPEATS_ENV}=0)"
    return (f"{job_seconds:.0f} s = {job_seconds / reference['reference_s']:.0f} x the CPU reference "
            f"({reference['reference_s']:.2f} s on {reference['threads']} thread: hms bench reference)")
