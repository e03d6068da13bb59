"""What fits a budget: `--hours H` takes whole units of the plan (a member's seed over every fold,
or its full fits) by published value per hour until H is spent, and `--notebook-minutes` then
picks the choices (full fits alone predict, no TTA) that keep the Kaggle notebook's estimate
under its limit; `hms kaggle package` checks a trained set against that limit. The plan's own
lines and this selection's are printed together (print_plan), the JSON line last."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from hms import config as C
from hms.jobs.plan import (MemberPlan, Plan, PlanTooLong, RunPlan, hours_text, kaggle_t4_minutes, makespan,
                           member_t4_minutes, notebook_prepare_minutes, plan_lines, trained_member_plan)
from hms.jobs.throughput import references, throughput_table
from hms.models.runs import all_runs, n_full_fits, n_seeds as configured_seeds, predicting_runs, run_dirs

UNIFORM_KL = 1.09  # the uniform prediction's public KL (top-recipes.md): a member's value is its gain over it
NOTEBOOK_MINUTES = 300.0  # the default limit on the Kaggle notebook's estimate (Kaggle stops it at 9 h)


def member_value(cfg: DictConfig) -> float:
    """UNIFORM_KL - the member's published single-model KL (published.kl); 0 without one."""
    kl = (cfg.get("published") or {}).get("kl")
    return 0.0 if kl is None else max(0.0, UNIFORM_KL - float(kl))


def run_seed(run: RunPlan) -> int:
    return int(run.name.split("-seed")[1]) if "-seed" in run.name else 0


@dataclass
class Unit:
    """What the budget takes or leaves whole: one seed of a member over every fold, or its full fits."""
    member: str
    what: str  # "seed S" | "full fits"
    runs: list[RunPlan]
    value: float  # the member's (member_value)
    hours: float = 0.0  # what it adds to the selection's hours (the selection's order)

    @property
    def label(self) -> str:
        return f"{self.member} {self.what} ({len(self.runs)} runs)"


def member_units(m: MemberPlan, value: float) -> list[Unit]:
    """Seed 0's CV runs, then the full fits, then each further seed's CV runs."""
    seeds = sorted({run_seed(r) for r in m.runs if not r.full})
    units = [Unit(m.name, f"seed {s}", [r for r in m.runs if not r.full and run_seed(r) == s], value) for s in seeds]
    full = [r for r in m.runs if r.full]
    return units[:1] + ([Unit(m.name, "full fits", full, value)] if full else []) + units[1:]


def selection_hours(plan: Plan, runs: list[RunPlan], on_gpu: bool = False) -> float:
    """Wall hours of these runs on this machine's slots (plan.hours_here's arithmetic: each
    member's CV runs in parallel, then its full fits), or with on_gpu on plan.gpus of the plan's
    GPU (a preview of `hms run` there from another machine)."""
    n = plan.gpus if plan.here_is_gpu or on_gpu else 1
    chosen = {id(r) for r in runs}
    return sum(makespan([r.gpu_seconds if on_gpu else r.seconds for r in m.runs if id(r) in chosen and r.full == full], n)
               for m in plan.members for full in (False, True)) / 3600


@dataclass
class Selection:
    """The part of a plan that fits a budget: whole units in value order (budget_order)."""
    hours: float | None  # the budget; None: everything (--hours all)
    chosen: list[Unit]
    left_out: list[Unit]
    overrides: dict[str, list[str]]  # per chosen member: key=value making `hms run` train exactly its units
    order: list[Unit]  # every unit, in budget_order
    on_gpu: bool = False  # hours on plan.gpus of the plan's GPU, not this machine's (selection_hours)
    notebook_limit: float = NOTEBOOK_MINUTES
    notebook_choices: list[str] = field(default_factory=list)  # "member: key=value", the notebook limit's

    @property
    def members(self) -> list[str]:
        return list(dict.fromkeys(u.member for u in self.chosen))


def budget_order(plan: Plan, values: dict[str, float], on_gpu: bool = False) -> list[Unit]:
    """Every member's seed 0 over every fold first, by value per hour of it (value: member_value;
    equal values: the cheaper first), then the full fits, then the second seeds, ..., members in
    that same order."""
    units = {m.name: member_units(m, values[m.name]) for m in plan.members}
    first = sorted((u[0] for u in units.values()),
                   key=lambda u: (-u.value / max(selection_hours(plan, u.runs, on_gpu), 1e-9),
                                  selection_hours(plan, u.runs, on_gpu)))
    order = [u.member for u in first]
    later = [u for name in order for u in units[name][1:]]
    return first + sorted(later, key=lambda u: (u.what != "full fits", u.what, order.index(u.member)))


def select(plan: Plan, cfgs: list[DictConfig], hours: float | None,
           notebook_limit: float = NOTEBOOK_MINUTES, on_gpu: bool = False) -> Selection:
    """Take units in budget_order while the selection's hours stay within `hours` (a unit that does
    not fit is left out and the next is tried; a member's later units only with its seed 0, and
    seed s only after seed s - 1); then the notebook's choices (notebook_choices)."""
    values = {str(c.name): member_value(c) for c in cfgs}
    chosen, left = [], []
    order = budget_order(plan, values, on_gpu)
    for u in order:
        total = selection_hours(plan, [r for c in chosen + [u] for r in c.runs], on_gpu)
        if may_follow(u, chosen) and (hours is None or total <= hours):
            u.hours = total - selection_hours(plan, [r for c in chosen for r in c.runs], on_gpu)
            chosen.append(u)
        else:
            u.hours = selection_hours(plan, u.runs, on_gpu)
            left.append(u)
    s = Selection(hours, chosen, left, member_overrides(cfgs, chosen), order, on_gpu, notebook_limit)
    notebook_choices(plan, cfgs, s)
    return s


def may_follow(u: Unit, chosen: list[Unit]) -> bool:
    """A member's seed 0 may always be taken; its full fits only with its seed 0, seed s only
    after seed s - 1 (a member trains whole, never a later seed without the earlier ones)."""
    have = [c.what for c in chosen if c.member == u.member]
    seed = int(u.what.split()[1]) if u.what.startswith("seed") else None
    return "seed 0" in have and (seed is None or f"seed {seed - 1}" in have) or seed == 0


def member_overrides(cfgs: list[DictConfig], chosen: list[Unit]) -> dict[str, list[str]]:
    """Per member with a chosen unit: the train.n_seeds and train.full_fits that make `hms run`
    train exactly its chosen units, where they differ from its config's."""
    overrides = {}
    for cfg in cfgs:
        mine = [u for u in chosen if u.member == cfg.name]
        if mine:
            n_seeds = sum(u.what.startswith("seed") for u in mine)
            full = sum(len(u.runs) for u in mine if u.what == "full fits")
            overrides[str(cfg.name)] = [f"train.{k}={v}" for k, v, old in
                                        (("n_seeds", n_seeds, configured_seeds(cfg)),
                                         ("full_fits", full, n_full_fits(cfg))) if int(old) != v]
    return overrides


def selected_t4_minutes(m: MemberPlan, cfg: DictConfig, s: Selection) -> float:
    """The notebook's minutes for this member's chosen runs under its chosen overrides."""
    if m.name not in s.overrides:
        return 0.0
    sel = OmegaConf.merge(cfg, OmegaConf.from_dotlist(s.overrides[m.name]))
    predicting = len(predicting_runs(sel, all_runs(sel)))
    tta = 2 if sel.infer.tta_lr_swap and m.kind != "fitted once" else 1
    return member_t4_minutes(m, predicting, tta)


def selection_notebook_minutes(plan: Plan, cfgs: list[DictConfig], s: Selection) -> float:
    by_name = {str(c.name): c for c in cfgs}
    return notebook_prepare_minutes() + sum(selected_t4_minutes(m, by_name[m.name], s) for m in plan.members)


def notebook_choices(plan: Plan, cfgs: list[DictConfig], s: Selection) -> None:
    """While the notebook's estimate is over its limit, take the choice that cuts it, members with
    the most notebook minutes first: the full fits alone predict the test (train.test_runs=full,
    where a member has full fits), then no left/right TTA (infer.tta_lr_swap=false)."""
    by_name = {str(c.name): c for c in cfgs}
    for key, value, applies in (("train.test_runs", "full", lambda c: c.train.get("test_runs", "all") == "all"
                                 and n_full_fits(OmegaConf.merge(c, OmegaConf.from_dotlist(s.overrides[c.name]))) > 0),
                                ("infer.tta_lr_swap", "false", lambda c: bool(c.infer.tta_lr_swap))):
        for m in sorted((m for m in plan.members if m.name in s.overrides and m.kind != "fitted once"),
                        key=lambda m: -selected_t4_minutes(m, by_name[m.name], s)):
            if selection_notebook_minutes(plan, cfgs, s) <= s.notebook_limit:
                return
            if applies(by_name[m.name]) and f"{key}={value}" not in s.overrides[m.name]:
                s.overrides[m.name].append(f"{key}={value}")
                s.notebook_choices.append(f"{m.name}: {key}={value}")


def budget_lines(plan: Plan, cfgs: list[DictConfig], s: Selection) -> list[str]:
    budget = "all (--hours all)" if s.hours is None else f"{s.hours:g} h"
    n = plan.gpus if plan.here_is_gpu or s.on_gpu else 1
    where = f"{n} x {plan.gpu_device} (--on-gpu)" if s.on_gpu else f"this device ({plan.device}" + (
        f", {n} GPUs)" if n > 1 else ", one process)")
    lines = [f"[hms plan] budget {budget} on {where}; order: each member's seed 0 over every fold by value per hour "
             f"(value = {UNIFORM_KL} - its published KL), then full fits, then further seeds; a member is trained "
             "whole or left out; hours: what each unit adds"]
    lines += [f"    {'train    ' if u in s.chosen else 'leave out'} {u.label}: {hours_text(u.hours)} "
              f"(value {u.value:.3f})" for u in s.order]
    used = selection_hours(plan, [r for u in s.chosen for r in u.runs], s.on_gpu)
    if not s.chosen:
        cheapest = min(selection_hours(plan, member_units(m, 0)[0].runs, s.on_gpu) for m in plan.members)
        lines.append(f"[hms plan] nothing fits: the budget {budget} is below the cheapest member's seed 0 "
                     f"({hours_text(cheapest)} here): nothing to train "
                     f"(--hours {math.ceil(cheapest * 10) / 10:g} or more)")
    else:
        lines.append(f"[hms plan] budget: {len(s.members)} members, {sum(len(u.runs) for u in s.chosen)} runs, "
                     f"{hours_text(used)} on {where.split(' (')[0]}; left out {len(s.left_out)} units")
    minutes = selection_notebook_minutes(plan, cfgs, s)
    lines.append(f"[hms plan] Kaggle notebook of this selection: ~{minutes:.0f} min against the limit "
                 f"{s.notebook_limit:g} min (--notebook-minutes)"
                 + (f"; choices to fit it: {', '.join(s.notebook_choices)}" if s.notebook_choices else "")
                 + ("; STILL OVER: leave a member out or raise the limit" if minutes > s.notebook_limit else ""))
    return lines


def budget_summary(plan: Plan, cfgs: list[DictConfig], s: Selection) -> dict:
    return {"budget_hours": s.hours, "chosen": [u.label for u in s.chosen], "left_out": [u.label for u in s.left_out],
            "budget_used_hours": round(selection_hours(plan, [r for u in s.chosen for r in u.runs], s.on_gpu), 2),
            "member_overrides": s.overrides, "notebook_limit_minutes": s.notebook_limit,
            "notebook_minutes": round(selection_notebook_minutes(plan, cfgs, s), 1),
            "notebook_choices": s.notebook_choices}


def print_plan(plan: Plan, cfgs: list[DictConfig], selection: Selection) -> None:
    """The plan's lines (plan.plan_lines), then what the budget trains and leaves out; last the
    JSON line: the plan's summary with the selection's budget_hours, chosen, left_out, ..."""
    for line in plan_lines(plan) + budget_lines(plan, cfgs, selection):
        print(line)
    print(json.dumps({**plan.summary(), **budget_summary(plan, cfgs, selection)}), flush=True)


def parse_hours(text: str | None) -> float | None:
    """--hours: a positive number, or `all` (None: no budget)."""
    if text is None or str(text).lower() == "all":
        return None
    try:
        hours = float(text)
    except ValueError:
        raise C.ConfigError(f"--hours takes a number of hours or 'all', got {text!r}") from None
    if not hours > 0:
        raise C.ConfigError(f"--hours must be positive, got {text!r}")
    return hours


class NothingFits(PlanTooLong):
    """The budget is below the cheapest member's seed 0: nothing to train."""


def packaged_notebook_minutes(cfg: DictConfig, experiments: list[str]) -> tuple[float, str]:
    """The notebook's estimate for these trained experiments (every run that predicts, as the
    notebook loads them: models.runs.run_dirs; each run's own config for TTA and network) on the
    Kaggle T4 (plan.kaggle_t4_minutes), and the choice that cuts it most, for `hms kaggle package`."""
    table = throughput_table()
    refs = references(cfg, table["gpu_reference"], table)
    minutes, cuts = notebook_prepare_minutes(), []
    for name in experiments:
        dirs = run_dirs(C.work_dir(cfg) / name)
        m = trained_member_plan(name, C.load_run_config(dirs[0]), len(dirs), refs, table)
        mine = kaggle_t4_minutes(m)
        minutes += mine
        cuts += notebook_cuts(m, mine, dirs)
    best = max(cuts, key=lambda c: c[0])[1] if cuts else "nothing to cut"
    return minutes, best


def notebook_cuts(m: MemberPlan, minutes: float, dirs: list[Path]) -> list[tuple[float, str]]:
    """(minutes saved, how) for each way to cut one trained member's `minutes` in the notebook."""
    cuts, full = [], [d for d in dirs if d.name.startswith("full")]
    if full and len(full) < len(dirs):
        saved = minutes * (1 - len(full) / len(dirs))
        cuts.append((saved, f"{m.name}: train.test_runs=full (its {len(full)} full fits alone predict; `hms train "
                            f"CONFIG train.test_runs=full` re-collects its finished runs, then `hms ensemble`) "
                            f"saves ~{saved:.0f} min"))
    if m.tta == 2:
        cuts.append((minutes / 2, f"{m.name}: infer.tta_lr_swap=false (no left/right TTA) "
                                  f"saves ~{minutes / 2:.0f} min"))
    cuts.append((minutes, f"{m.name}: leaving it out of the ensemble saves ~{minutes:.0f} min"))
    return cuts
