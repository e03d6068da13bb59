"""The runs of one experiment and their folders in $HMS_WORK_DIR/<exp>/:

  fold{k}           the CV fold k (seed: seed + k)
  fold{k}-seed{s}   fold k again under another seed (train.n_seeds > 1; s = 1 .. n_seeds - 1)
  full{i}           a fit on every training row, no validation (train.full_fits), for as many
                    epochs per stage as the CV runs took to reach their best checkpoint

CV runs give the OOF (a fold's seeds averaged); every run's test prediction joins the
experiment's mean (train.test_runs: full keeps the full fits' alone). The notebook and
`hms predict` load the same set of folders.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

RUN_DIR = re.compile(r"^(fold\d+(-seed\d+)?|full\d+)$")
SEED_STRIDE, FULL_SEED_OFFSET = 1000, 100_000  # keep every run's seed distinct


@dataclass(frozen=True)
class RunSpec:
    name: str
    fold: int | None  # None: a full-data fit
    seed: int
    stage_epochs: tuple[int, ...] = field(default=())  # full fits: epochs trained per stage

    @property
    def is_full(self) -> bool:
        return self.fold is None


def n_seeds(cfg) -> int:
    n = int(cfg.train.n_seeds)
    if n < 1:
        raise ValueError(f"train.n_seeds must be at least 1, got {n}")
    return n


def n_full_fits(cfg) -> int:
    n = int(cfg.train.full_fits)
    if n < 0:
        raise ValueError(f"train.full_fits must be 0 or more, got {n}")
    return n


def pseudo_teachers(cfg) -> list[str]:
    """The experiments whose models relabel this one's low-vote rows (labels.pseudo.from)."""
    return [str(name) for name in (cfg.labels.pseudo["from"] or [])]


def cv_runs(cfg, folds: list[int] | None = None) -> list[RunSpec]:
    """Every seed's CV runs (all folds, or the given ones), seed 0 first."""
    folds = list(range(cfg.folds.n_folds)) if folds is None else folds
    return [RunSpec(f"fold{k}" + (f"-seed{s}" if s else ""), k, int(cfg.seed) + k + SEED_STRIDE * s)
            for s in range(n_seeds(cfg)) for k in folds]


def full_runs(cfg, stage_epochs: list[int]) -> list[RunSpec]:
    return [RunSpec(f"full{i}", None, int(cfg.seed) + FULL_SEED_OFFSET + i, tuple(stage_epochs))
            for i in range(n_full_fits(cfg))]


def all_runs(cfg) -> list[RunSpec]:
    """Every run the experiment trains (full fits without their epochs: names and seeds only)."""
    return cv_runs(cfg) + full_runs(cfg, [])


TEST_RUNS = ("all", "full", "cv")


def predicting_runs(cfg, runs: list[RunSpec]) -> list[RunSpec]:
    """The runs whose test predictions make the experiment's test mean: all of them; with
    train.test_runs: full the full-data fits alone when there are any (they see every row and
    train to the end, with no checkpoint picked on a noisy validation fold); with cv the CV runs
    alone (to compare techniques without retraining)."""
    choice = cfg.train.get("test_runs", "all")
    if choice not in TEST_RUNS:
        raise ValueError(f"train.test_runs must be one of {TEST_RUNS}, got {choice!r}")
    if choice == "cv":
        return [r for r in runs if not r.is_full]
    full = [r for r in runs if r.is_full]
    return full if choice == "full" and full else runs


def epochs_to_best(log: pd.DataFrame, n_stages: int) -> list[int]:
    """Per stage, the epochs a full fit must run to copy this CV run: up to and including the
    stage's own last improving epoch, since the next stage starts from best.pt (the best so far),
    not from the stage's last weights; 0 for a stage that never improved (the next stage then
    starts from an earlier stage's best) and for every stage after the run's best."""
    best = log[log["best"].astype(bool)]
    if best.empty:
        raise ValueError("a CV run's log.csv has no best epoch")
    last_best = best.groupby("stage")["epoch"].max()
    return [int(last_best[s]) + 1 if s in last_best.index else 0 for s in range(n_stages)]


def full_fit_epochs(logs: list[pd.DataFrame], n_stages: int) -> list[int]:
    """Per stage, the median over CV runs of epochs_to_best (rounded): the full fits' length."""
    counts = np.array([epochs_to_best(log, n_stages) for log in logs])
    return [int(np.round(np.median(counts[:, s]))) for s in range(n_stages)]


def run_dirs(exp_dir: Path) -> list[Path]:
    """The runs whose predictions make the experiment's test mean: those summary.json lists
    (written when every run finished; a run left over from an earlier train.full_fits or
    n_seeds is not one of them), else every folder named like a run with a best.pt
    (set-aside `.old-*` copies excluded), in name order."""
    exp_dir = Path(exp_dir)
    summary = exp_dir / "summary.json"
    listed = json.loads(summary.read_text()).get("runs") if summary.is_file() else None
    if listed:
        missing = [name for name in listed if not (exp_dir / name / "best.pt").is_file()]
        if missing:
            raise FileNotFoundError(f"{exp_dir}: runs {missing} listed in summary.json have no best.pt")
        return sorted(exp_dir / name for name in listed)
    dirs = [d for d in sorted(exp_dir.iterdir()) if RUN_DIR.match(d.name) and (d / "best.pt").is_file()] \
        if exp_dir.is_dir() else []
    if not dirs:
        raise FileNotFoundError(f"{exp_dir}: no fold*/best.pt checkpoints (train the experiment first)")
    return dirs
