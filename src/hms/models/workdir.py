"""Where an experiment's runs live: $HMS_WORK_DIR/<exp>/<run>/ (see hms.models.runs), and
when a run counts as finished. Shared by the fold loop, pseudo-label teachers, the
experiment's orchestration and the scheduler."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from hms import config as C
from hms.data.io import HMSDataError

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


class DamagedFile(HMSDataError):
    """A file the job wrote earlier cannot be read back (truncated or corrupted)."""


DAMAGED_WAY_ON = {  # what to do about a damaged file, by its name
    "best.pt": "retrain the run (`hms train CONFIG --fold K --force`, or `--full I` for a full fit)",
    "last.pt": "delete it to restart the run from its first epoch",
}


def load_checkpoint(path: Path, map_location="cpu"):
    """torch.load(weights_only=True), or DamagedFile naming the file and the way on."""
    import pickle
    import zipfile

    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, PermissionError):
        raise
    except (RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DamagedFile(f"{path} is damaged and cannot be loaded ({detail}): "
                          f"{DAMAGED_WAY_ON.get(Path(path).name, 'delete it and run the command that wrote it again')}"
                          ) from None
