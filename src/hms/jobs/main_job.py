"""What `hms run` and `hms plan` do without configs: the competition recipe on a CUDA device with
the real data, trained to a budget (one night unless --hours says), else the demo, which stops
before building anything when its plan is over STOP_HOURS on this device. The job itself runs in
jobs/run.py; this choice is apart so that `hms plan` makes it without importing the job."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hms import config as C
from hms.data import schema
from hms.jobs.budget import parse_hours
from hms.jobs.plan import Plan, PlanTooLong, hours_text
from hms.jobs.throughput import device_name

RECIPE_DIR = Path("configs/recipe")  # the competition recipe: the no-argument main job on a CUDA device
DEMO_DIR = Path("configs/demo")  # the CPU demo: the no-argument main job without one
STOP_HOURS = 3.0  # the no-argument main job stops before training when its plan exceeds this
NIGHT_HOURS = 10.0  # the no-argument main job's default budget on a CUDA device with the real data


def is_simulated(data_dir: Path) -> bool:
    """The embedded dataset (input/synthetic, made by the main job when nothing else is there) or
    any simulated one (`hms synth`, --like-kaggle too): the simulator writes its hidden answers
    beside the tables (schema.ANSWERS_DIR), which the competition's data never has."""
    return Path(data_dir).resolve() == C.synthetic_data_dir().resolve() or (Path(data_dir) / schema.ANSWERS_DIR).is_dir()


@dataclass
class MainJob:
    """What the no-argument main job trains, and how far: its first line says which and why."""
    files: list[str]
    line: str
    hours: float | None  # the budget (budget.select); None: everything
    stop: bool  # stop when the plan is over STOP_HOURS here (check_budget)


def main_job_configs(device: str, data_dir: Path, hours: str | None = None, yes: bool = False) -> MainJob:
    """The competition recipe (RECIPE_DIR) with a CUDA device and the real data, trained to a
    budget: NIGHT_HOURS unless --hours says (--hours all or --yes: the whole recipe). Else the
    demo (DEMO_DIR): on simulated data on any device (the recipe waits for `hms download`), and on
    a CPU, where it stops over STOP_HOURS (--yes goes on, --hours H trains what fits in H)."""
    recipe = sorted(str(p) for p in RECIPE_DIR.glob("*.yaml"))
    cuda, simulated = device.startswith("cuda"), is_simulated(data_dir)
    if cuda and recipe and not simulated:
        return recipe_job(recipe, device, data_dir, hours, yes)
    why = (f"the simulated dataset {data_dir} (the recipe waits for the real data: `hms download`)" if simulated else
           f"no {RECIPE_DIR}/ here" if cuda else f"no CUDA device (device {device})")
    return demo_job(why, hours, yes)


def recipe_job(recipe: list[str], device: str, data_dir: Path, hours: str | None, yes: bool) -> MainJob:
    budget = None if yes else parse_hours(hours) if hours is not None else NIGHT_HOURS
    said = ("the whole recipe" + (" (--yes)" if yes else " (--hours all)") if budget is None else
            f"to a budget of {budget:g} h" + ("" if hours is not None else " (one night)"))
    return MainJob(recipe, f"[hms] CUDA device {device_name(device)} and the real data in {data_dir}: training "
                           f"the competition recipe ({RECIPE_DIR}/, {len(recipe)} experiments) {said}, its most "
                           "valuable members first; change it with --hours H, or --hours all for the whole "
                           "recipe", budget, False)


def demo_job(why: str, hours: str | None, yes: bool) -> MainJob:
    demo = sorted(str(p) for p in DEMO_DIR.glob("*.yaml"))
    budget = parse_hours(hours)
    limit = (f"to a budget of {budget:g} h (--hours)" if budget is not None else
             "to the end (--yes)" if yes else f"stopping first if its plan is over {STOP_HOURS:g} h here "
             "(--yes trains it anyway, --hours H the part that fits in H hours)")
    return MainJob(demo, f"[hms] {why}: training the demo ({DEMO_DIR}/, {len(demo)} experiments) {limit}; "
                         "name configs to train others, e.g. `hms run configs/recipe/*.yaml`",
                   budget, not yes and budget is None)


def main_job(overrides: list[str], hours: str | None = None, yes: bool = False) -> MainJob:
    """The no-argument main job for this machine and dataset; prints its first line."""
    cfg = C.load_config([], list(overrides))
    job = main_job_configs(C.resolve_device(cfg), C.data_dir(cfg), hours, yes)
    print(job.line, flush=True)
    return job


def check_budget(plan: Plan, limit_hours: float = STOP_HOURS) -> None:
    """Raise PlanTooLong, saying the ways on, when the plan's hours here are over the limit."""
    if plan.hours_here <= limit_hours:
        return
    raise PlanTooLong(
        f"the plan's estimate on this device ({plan.device}) is {hours_text(plan.hours_here)} for {plan.runs} runs, "
        f"over the main job's {limit_hours:g} h: stopped before building caches or training. Ways on:\n"
        "  --yes: train this plan anyway (`hms run --yes`, `bash scripts/train_all_folds.sh --yes`)\n"
        "  --hours H: train its most valuable whole members that fit in H hours here\n"
        "  explicit configs: train the experiments you name, no limit (`hms run CONFIG.yaml ...`, e.g. "
        f"`bash scripts/train_all_folds.sh {DEMO_DIR}/conv1d.yaml`)")
