"""An experiment set: its configs loaded and named, teachers before their students, and what they
need built once before any of them trains. `hms train`, `hms plan`, the main job and every
scheduled fold process load their experiments here, without importing the main job."""
from __future__ import annotations

from omegaconf import DictConfig

from hms import config as C
from hms.models.runs import pseudo_teachers
from hms.models.workdir import experiment_name
from hms.training.experiment import prepare_experiment


def experiment_configs(config_paths: list[str], overrides: list[str]) -> list[DictConfig]:
    return [cfg for cfg, _ in experiment_sources(config_paths, overrides)]


def experiment_sources(config_paths: list[str], overrides: list[str],
                       member_overrides: dict[str, list[str]] | None = None) -> list[tuple[DictConfig, str]]:
    """(config, its file) per experiment, teachers first; member_overrides: more key=value for
    the experiment of that name (a budget's selection: budget.select)."""
    cfgs, files = [], {}
    for path in config_paths:
        cfg = C.load_config([path], overrides)
        cfg.name = experiment_name(cfg, path)
        if (member_overrides or {}).get(cfg.name):
            name = cfg.name
            cfg = C.load_config([path], [*overrides, *member_overrides[name]])
            cfg.name = name
        cfgs.append(cfg)
        files[cfg.name] = path
    names = [c.name for c in cfgs]
    if len(set(names)) != len(names):
        raise C.ConfigError(f"experiment names must differ, got {names}")
    return [(cfg, files[cfg.name]) for cfg in teachers_first(cfgs)]


def teachers_first(cfgs: list[DictConfig]) -> list[DictConfig]:
    """The experiments in the given order, except that one whose pseudo-labels come from
    others (labels.pseudo.from) trains after them; sources outside this run must be trained
    already (checked when the student starts)."""
    ordered, placed = [], set()
    pending = list(cfgs)
    while pending:
        ready = [c for c in pending if all(s in placed or s not in {p.name for p in cfgs} for s in pseudo_teachers(c))]
        if not ready:
            raise C.ConfigError("labels.pseudo.from forms a cycle among "
                                f"{[c.name for c in pending]}: an experiment cannot learn from itself")
        ordered.append(ready[0])
        placed.add(ready[0].name)
        pending.remove(ready[0])
    return ordered


def build_once(cfgs: list[DictConfig]) -> dict[str, tuple]:
    """Every experiment's validate report, caches (train and test) and the folds, built before
    any parallel work: the jobs then only read them. Returns what each experiment prepared
    (name -> (caches, train table)), which train_experiment takes instead of preparing again."""
    return {cfg.name: prepare_experiment(cfg) for cfg in cfgs}
