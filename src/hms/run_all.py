"""The main job behind `scripts/train_all_folds.sh` (`hms run`): dataset, caches, every fold
of every experiment, the OOF-weighted ensemble, the submission and a summary table."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from hms import config as C
from hms.inference.ensemble import write_submission
from hms.data import schema
from hms.data.tables import ensure_dataset, load_test
from hms.plan import check_budget, make_plan, print_plan
from hms.cache.prepare import prepare
from hms.inference.summary import load_answers, summary_table, test_scores
from hms.training.loop import experiment_name, exp_dir, train_experiment


def experiment_configs(config_paths: list[str], overrides: list[str]) -> list[DictConfig]:
    cfgs = []
    for path in config_paths:
        cfg = C.load_config([path], overrides)
        cfg.name = experiment_name(cfg, path)
        cfgs.append(cfg)
    names = [c.name for c in cfgs]
    if len(set(names)) != len(names):
        raise C.ConfigError(f"experiment names must differ, got {names}")
    return teachers_first(cfgs)


def pseudo_sources(cfg: DictConfig) -> list[str]:
    return [str(s) for s in (cfg.labels.get("pseudo", {}).get("from") or [])]


def teachers_first(cfgs: list[DictConfig]) -> list[DictConfig]:
    """The experiments in the given order, except that one whose pseudo-labels come from
    others (labels.pseudo.from) trains after them; sources outside this run must be trained
    already (checked when the student starts)."""
    ordered, placed = [], set()
    pending = list(cfgs)
    while pending:
        ready = [c for c in pending if all(s in placed or s not in {p.name for p in cfgs} for s in pseudo_sources(c))]
        if not ready:
            raise C.ConfigError("labels.pseudo.from forms a cycle among "
                                f"{[c.name for c in pending]}: an experiment cannot learn from itself")
        ordered.append(ready[0])
        placed.add(ready[0].name)
        pending.remove(ready[0])
    return ordered


def run_all(config_paths: list[str], overrides: list[str] = (), force: bool = False,
            stop_when_long: bool = False) -> dict:
    """stop_when_long: raise PlanTooLong before any cache or training when the plan's estimate on
    this device is over plan.STOP_HOURS (the no-argument main job)."""
    t0 = time.perf_counter()
    cfgs = experiment_configs(config_paths, list(overrides))
    base = cfgs[0]
    if not (C.data_dir(base) / schema.TRAIN_CSV).is_file():
        ensure_dataset(base)  # the embedded dataset, made when absent: the plan reads its tables
    plan = make_plan(cfgs)
    print_plan(plan)
    if stop_when_long:
        check_budget(plan)
    prepare(base)
    print(f"[hms] caches ready ({time.perf_counter() - t0:.0f} s)")
    summaries = [train_experiment(cfg, force=force) for cfg in cfgs]
    dirs = [exp_dir(cfg) for cfg in cfgs]
    test = load_test(base)
    report = write_submission(dirs, test, C.submission_dir(base), base.labels.min_votes_high)
    rows = table_rows(base, cfgs, summaries, report, dirs)
    print(summary_table(rows))
    print(f"[hms] ensemble high-vote OOF KL {report['oof_kl_high']:.4f} in-sample, "
          f"{report['oof_kl_high_nested']:.4f} by nested CV ({report['blend']} blend; nested: "
          f"{ {k: round(v, 4) for k, v in report['nested_oof_kl_high'].items()} })")
    print(f"[hms] ensemble weights {dict(zip(report['experiments'], [round(w, 3) for w in report['weights']]))} "
          f"({report['used']})")
    print(f"[hms] wrote {C.submission_dir(base) / 'submission.csv'} in {time.perf_counter() - t0:.0f} s")
    return {"rows": rows, "ensemble": report}


def table_rows(base, cfgs, summaries, report, dirs) -> list[dict]:
    import pandas as pd

    answers = load_answers(C.data_dir(base))
    prior = np.asarray(summaries[0]["prior"])  # labels.prior, saved by collect_experiment
    rows = []
    preds = {cfg.name: pd.read_csv(d / "test_pred.csv") for cfg, d in zip(cfgs, dirs)}
    preds["ensemble"] = pd.read_csv(C.submission_dir(base) / "submission.csv")
    oof = {s["name"]: (s["oof_kl"], s["oof_kl_high"]) for s in summaries}
    oof["ensemble"] = (report["oof_kl"], report["oof_kl_high"])
    for name, pred in preds.items():
        row = {"model": name, "oof_kl": oof[name][0], "oof_kl_high": oof[name][1]}
        if answers is not None:
            row.update(test_scores(pred, answers, prior))
        rows.append(row)
    return rows
