"""Where an experiment's runs live: $HMS_WORK_DIR/<exp>/<run>/ (see hms.training.runs), and
when a run counts as finished. Shared by the fold loop, pseudo-label teachers, the
experiment's orchestration and the scheduler."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from hms import config as C

TRAIN_LOG = "train.log"  # a scheduled run's output (hms run with several devices)


def experiment_name(cfg: DictConfig, config_path: str | None = None) -> str:
    if cfg.get("name"):
        return str(cfg.name)
    if config_path:
        return Path(config_path).stem
    raise ValueError("the experiment has no name: set `name:` in its config")


def exp_dir(cfg: DictConfig) -> Path:
    return C.work_dir(cfg) / str(cfg.name)


def is_complete(fold_dir: Path) -> bool:
    metrics = fold_dir / "metrics.json"
    return metrics.is_file() and '"complete": true' in metrics.read_text()
