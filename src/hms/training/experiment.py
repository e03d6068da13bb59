"""`hms train`: every run of one experiment (its CV folds, their extra seeds, full-data fits:
see hms.models.runs) and what joins them: the validate report, caches and folds built once
before any run, then oof.csv (one row per eeg_id and vote vector, each eeg_id in exactly one
fold, a fold's seeds averaged), test_pred.csv (mean over the predicting runs, in test.csv
order) and summary.json in $HMS_WORK_DIR/<exp>/. How one run trains: hms.training.loop."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from hms.cache.prepare import prepare
from hms.data import labels, schema
from hms.data.tables import load_train
from hms.metric import kl_score
from hms.models.factory import fitted_once
from hms.models.fingerprint import check_unchanged
from hms.training.dist import barrier, init_distributed, is_main_process, launched_world_size
from hms.inference.trees import tree_feature_caches
from hms.training.loop import FoldRun, TreeRun, check_launch
from hms.models.runs import RunSpec, all_runs, cv_runs, full_fit_epochs, full_runs, n_full_fits, predicting_runs
from hms.models.workdir import exp_dir, is_complete
from hms.utils import atomic_to_csv, atomic_write_json, seed_everything


def prepare_experiment(cfg: DictConfig, progress: bool = True) -> tuple[dict, pd.DataFrame]:
    """(cache dirs, train table with folds): the validate report, every cache this experiment
    reads and folds.csv, built once. Under torchrun rank 0 builds them while the other ranks
    wait; separate processes (`hms run`'s scheduled folds, a Slurm array's tasks) wait on each
    build's file lock instead and then reuse what the first one built. A model fitted once on
    fixed features (qeeg_trees) gets its train feature caches here too, read by all its runs."""
    world = launched_world_size()
    if world > 1:
        init_distributed(cfg.train.ddp_timeout_minutes)
        if is_main_process():
            prepare(cfg, progress=progress)
            load_train(cfg)
        barrier()
    caches, train = prepare(cfg, progress=progress and world == 1), load_train(cfg)
    if fitted_once(cfg):  # one process: check_launch refuses torchrun for these
        tree_feature_caches(cfg, caches, train, progress)
    return caches, train


def train_experiment(cfg: DictConfig, folds: list[int] | None = None, force: bool = False,
                     progress: bool = True, full: list[int] | None = None,
                     prepared: tuple[dict, pd.DataFrame] | None = None) -> dict:
    """Train the requested runs, every seed of each, skipping finished runs unless forced:
    by default every fold, then the full-data fits; `folds` only those folds (no full fits);
    `full` only those full fits (every CV run must be finished: they copy its epochs). Writes
    the experiment's oof.csv, test_pred.csv and summary.json once every run is done. `prepared`:
    what prepare_experiment returned for this config earlier in the same process (`hms run`'s
    build_once), so the validate report, caches and folds are not looked up and hashed again."""
    check_launch(cfg)
    if not force:
        check_runs_unchanged(cfg)
    seed_everything(cfg.seed)
    caches, train = prepared if prepared is not None else prepare_experiment(cfg, progress)
    if full is None:
        for run in cv_runs(cfg, folds):
            train_run(cfg, run, train, caches, force, progress)
    if folds is None:
        for run in selected_full_runs(cfg, full):
            train_run(cfg, run, train, caches, force, progress)
    return collect_experiment(cfg) if is_main_process() else {"name": cfg.name, "complete": False}


def selected_full_runs(cfg: DictConfig, which: list[int] | None = None) -> list[RunSpec]:
    """The full fits (all, or those numbered in `which`), as long as the CV runs took to their
    best epochs; those runs must be finished."""
    n = n_full_fits(cfg)
    which = list(range(n)) if which is None else list(which)
    if not which:
        return []
    if not all(0 <= i < n for i in which):
        raise ValueError(f"{cfg.name}: full fits {which} asked for, but train.full_fits is {n}")
    unfinished = [r.name for r in cv_runs(cfg) if not is_complete(exp_dir(cfg) / r.name)]
    if unfinished:
        raise FileNotFoundError(f"{cfg.name}: full fits copy the CV runs' best epochs, but {unfinished} "
                                f"are not finished in {exp_dir(cfg)}")
    runs = full_runs(cfg, full_fit_epochs(cv_logs(cfg), len(cfg.train.stages)))
    return [runs[i] for i in which]


def train_run(cfg, run: RunSpec, train, caches, force: bool, progress: bool) -> dict | None:
    run_dir = exp_dir(cfg) / run.name
    if is_complete(run_dir) and not force:
        print(f"[{cfg.name} {run.name}] already complete: skipped (use --force to retrain)")
        return None
    if force and is_main_process():
        set_aside(run_dir)
    barrier()
    seed_everything(run.seed)
    if run.is_full:
        print(f"[{cfg.name} {run.name}] full-data fit, epochs per stage {list(run.stage_epochs)} (from the CV runs)")
    runner = TreeRun if fitted_once(cfg) else FoldRun
    return runner(cfg, run, train, caches, progress).run()


def set_aside(run_dir: Path) -> None:
    """--force: keep a run's earlier folder beside it (<run>.old-<time>) rather than lose it."""
    if run_dir.exists():
        run_dir.rename(run_dir.with_name(f"{run_dir.name}.old-{int(time.time())}"))


def check_runs_unchanged(cfg: DictConfig) -> None:
    """Every started run of the experiment was trained under cfg's settings (else ConfigChanged,
    before anything is built or trained; --force sets them aside instead)."""
    check_unchanged(cfg, [exp_dir(cfg) / r.name for r in all_runs(cfg)])


def cv_logs(cfg) -> list[pd.DataFrame]:
    return [pd.read_csv(exp_dir(cfg) / run.name / "log.csv") for run in cv_runs(cfg)]


def collect_experiment(cfg: DictConfig) -> dict:
    """Merge run outputs once every run is complete: OOF (each fold's seeds averaged) with its
    KL on all and high-vote rows, and the test mean over the predicting runs."""
    root = exp_dir(cfg)
    cv = cv_runs(cfg)
    runs = all_runs(cfg)
    if not all(is_complete(root / r.name) for r in runs):
        return {"name": cfg.name, "complete": False}
    oof = pd.concat([seed_mean([pd.read_csv(root / r.name / "val_pred.csv") for r in cv if r.fold == k])
                     for k in range(cfg.folds.n_folds)], ignore_index=True)
    atomic_to_csv(oof, root / "oof.csv")
    predicting = predicting_runs(cfg, runs)
    atomic_to_csv(seed_mean([test_predictions_of(cfg, root / r.name) for r in predicting]), root / "test_pred.csv")
    summary = {"name": cfg.name, "complete": True, "runs": [r.name for r in predicting],
               **oof_scores(oof, cfg.labels.min_votes_high),
               "prior": labels.prior(load_train(cfg), cfg.labels.min_votes_high).tolist()}
    atomic_write_json(root / "summary.json", summary)
    print(f"[{cfg.name}] OOF KL {summary['oof_kl']:.4f}  high-vote OOF KL {summary['oof_kl_high']:.4f}"
          f"  ({len(cv)} CV runs; test mean of {len(predicting)} runs)")
    return summary


def test_predictions_of(cfg: DictConfig, run_dir: Path) -> pd.DataFrame:
    """A finished run's test_pred.csv. A run trained while train.test_runs left it out of the test
    mean wrote none (the setting does not change what a run learns, so its runs are reused when
    it changes): predicted now from its best.pt, with its training rows' prior, and saved."""
    path = run_dir / "test_pred.csv"
    if not path.is_file():
        from hms.inference.predict import run_test_predictions

        print(f"[{cfg.name}] {run_dir.name}: test predictions from best.pt (train.test_runs now takes it in)")
        prior = json.loads((run_dir / "metrics.json").read_text()).get("prior")
        atomic_to_csv(run_test_predictions(run_dir, cfg, prior), path)
    return pd.read_csv(path)


def seed_mean(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The first frame with its class probabilities replaced by the mean over frames (rows in
    the same order: the same fold's validation set, or test.csv's)."""
    for f in frames[1:]:
        if not np.array_equal(f["eeg_id"].to_numpy(), frames[0]["eeg_id"].to_numpy()):
            raise ValueError("runs to average predict different rows (stale predictions?)")
    mean = frames[0].copy()
    mean[list(schema.VOTE_COLUMNS)] = np.mean([f[list(schema.VOTE_COLUMNS)].to_numpy() for f in frames], axis=0)
    return mean


def oof_scores(oof: pd.DataFrame, min_votes: int) -> dict:
    target = oof[[f"{c}_target" for c in schema.CLASSES]].to_numpy()
    probs = oof[list(schema.VOTE_COLUMNS)].to_numpy()
    high = oof[labels.TOTAL_VOTES].to_numpy() >= min_votes
    return {"oof_kl": kl_score(target, probs),
            "oof_kl_high": kl_score(target[high], probs[high]) if high.any() else float("nan"),
            "n_oof": len(oof), "n_oof_high": int(high.sum())}
