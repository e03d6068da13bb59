"""The main job behind `scripts/train_all_folds.sh` (`hms run`): dataset, caches, every fold
of every experiment, the OOF-weighted ensemble, the submission and a summary table."""
from __future__ import annotations

import time

import numpy as np
from omegaconf import DictConfig

from hms import config as C
from hms.inference.ensemble import blend_test, describe, write_submission
from hms.data import schema
from hms.data.tables import ensure_dataset, load_test
from hms.jobs.experiments import build_once, experiment_sources
from hms.jobs.budget import NOTEBOOK_MINUTES, NothingFits, Selection, print_plan, select
from hms.jobs.main_job import check_budget
from hms.jobs.plan import make_plan
from hms.jobs.reference import job_reference, ratio_line
from hms.inference.summary import load_answers, summary_table, test_scores
from hms.training.dist import launched_world_size
from hms.training.experiment import check_runs_unchanged, collect_experiment, train_experiment
from hms.jobs.schedule import device_slots, schedule
from hms.models.workdir import exp_dir


def refuse_torchrun() -> None:
    """`hms run` starts its own processes, one per device; under torchrun every rank would run
    the whole job. DDP trains one experiment: say how, before anything is built."""
    if launched_world_size() > 1:
        raise C.ConfigError("hms run schedules its own processes (one per GPU: --gpus N|all) and cannot run "
                            "under torchrun. To train one experiment with DDP over several GPUs or nodes: "
                            "torchrun --nproc_per_node=N -m hms train CONFIG [key=value], then "
                            "hms ensemble EXP [EXP...]")


def run_all(config_paths: list[str], overrides: list[str] = (), force: bool = False, gpus: str | int = "all",
            devices: list[str] | None = None, stop_when_long: bool = False, hours: float | None = None,
            notebook_minutes: float = NOTEBOOK_MINUTES) -> dict:
    """The main job: its plan first, then caches and folds once, then every run. With two or more
    device slots (the visible GPUs, `gpus` of them, the `devices` given, or without a GPU one
    per core: schedule.cpu_slots) the runs are scheduled over them, one process each
    (hms.jobs.schedule); else they train here, one after another. hours: train only the part of
    the plan that fits (budget.select: whole members by value per hour; NothingFits when none
    does); None: all of it. notebook_minutes: the Kaggle notebook's limit, which picks test_runs /
    TTA choices. stop_when_long: raise PlanTooLong before any cache or training when the plan's
    estimate on this device is over main_job.STOP_HOURS."""
    refuse_torchrun()
    reference = job_reference()  # first, on an idle process: the machine's yardstick for the job's time
    t0 = time.perf_counter()
    sources = experiment_sources(config_paths, list(overrides))
    base = sources[0][0]
    if not (C.data_dir(base) / schema.TRAIN_CSV).is_file():
        ensure_dataset(base)  # the embedded dataset, made when absent: the plan reads its tables
    slots = device_slots(gpus, devices)
    chosen = plan_first([cfg for cfg, _ in sources], len(slots), hours, notebook_minutes, stop_when_long)
    sources = selected_sources(sources, chosen, list(overrides))
    cfgs = [cfg for cfg, _ in sources]
    if not force:  # an edited config never reuses the runs of the old one
        for cfg in cfgs:
            check_runs_unchanged(cfg)
    prepared = build_once(cfgs)
    print(f"[hms] caches and folds ready ({time.perf_counter() - t0:.0f} s)")
    if devices or len(slots) > 1:
        summaries = train_scheduled(sources, list(overrides), slots, force, chosen.overrides)
    else:
        summaries = [train_experiment(cfg, force=force, prepared=prepared[cfg.name]) for cfg in cfgs]
    report, rows = blend_and_report(cfgs, summaries)
    seconds = time.perf_counter() - t0
    print(f"[hms] wrote {C.submission_dir(cfgs[0]) / 'submission.csv'} in {ratio_line(seconds, reference)}")
    return {"rows": rows, "ensemble": report, "seconds": seconds, "reference": reference}


def plan_first(cfgs: list[DictConfig], n_slots: int, hours: float | None, notebook_minutes: float,
               stop_when_long: bool) -> Selection:
    """The plan on n_slots processes and what the budget selects of it, printed; NothingFits or
    (stop_when_long) PlanTooLong before any cache is built or any run trains."""
    plan = make_plan(cfgs, gpus=max(1, n_slots))
    chosen = select(plan, cfgs, hours, notebook_minutes)
    print_plan(plan, cfgs, chosen)
    if not chosen.chosen:
        raise NothingFits(f"--hours {hours:g}: the budget is below the cheapest member's seed 0 over every fold "
                          "(the plan's lines above): nothing trained")
    if stop_when_long:
        check_budget(plan)
    return chosen


def selected_sources(sources: list[tuple[DictConfig, str]], chosen: Selection,
                     overrides: list[str]) -> list[tuple[DictConfig, str]]:
    """The experiments as the selection trains them: its members only, each with its overrides
    (seeds, full fits, the notebook's choices); all of them unchanged when it takes everything."""
    if not (chosen.left_out or any(chosen.overrides.values())):
        return sources
    paths = {cfg.name: path for cfg, path in sources}
    return experiment_sources([paths[n] for n in chosen.members], overrides, chosen.overrides)


def train_scheduled(sources: list[tuple[DictConfig, str]], overrides: list[str], slots: list[str], force: bool,
                    member_overrides: dict[str, list[str]]) -> list[dict]:
    """Every run over the device slots (hms.jobs.schedule); each experiment's summary is written as
    soon as its last run is done, since its students' full fits read its OOF."""
    collected = {}

    def collect(cfg):
        collected[cfg.name] = collect_experiment(cfg)

    cfgs = [cfg for cfg, _ in sources]
    schedule(cfgs, {cfg.name: path for cfg, path in sources}, overrides, slots, force=force,
             on_experiment_done=collect, member_overrides=member_overrides)
    return [collected[cfg.name] for cfg in cfgs]


def blend_and_report(cfgs: list[DictConfig], summaries: list[dict]) -> tuple[dict, list[dict]]:
    """The OOF-weighted blend and its submission, then the summary table (test KL too on
    simulated data, whose answers also score the calibration not chosen)."""
    base = cfgs[0]
    dirs = [exp_dir(cfg) for cfg in cfgs]
    test = load_test(base)
    report = write_submission(dirs, test, C.submission_dir(base), base.labels.min_votes_high,
                              str(base.ensemble.calibration))
    rows = table_rows(base, cfgs, summaries, report, dirs)
    print(summary_table(rows))
    for line in describe(report):
        print(f"[hms] {line}")
    if "test_kl" in rows[-1]:  # simulated data: the answers check the calibration choice
        other = report["alternative"]
        other_kl = test_scores(blend_test(dirs, other, test), load_answers(C.data_dir(base)),
                               np.asarray(summaries[0]["prior"]))["test_kl"]
        print(f"[hms] test KL of the submitted {report['blend']} blend {rows[-1]['test_kl']:.4f}; "
              f"the {other['blend']} one would score {other_kl:.4f}")
    return report, rows


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
