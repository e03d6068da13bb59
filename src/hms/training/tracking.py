"""Experiment tracking for the fold loop. Every run writes log.csv; `train.logger` adds
TensorBoard (`<fold>/tensorboard/`, `tensorboard --logdir working/`) or Weights & Biases
(offline unless WANDB_MODE says otherwise: `wandb sync` uploads later). Only rank 0 logs."""
from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from hms.config import ConfigError

LOGGERS = ("csv", "tensorboard", "wandb")
SCALARS = ("train_loss", "val_kl", "val_kl_high")


class EpochLogger:
    """One row per epoch into the configured tracker (log.csv itself is the loop's)."""

    def __init__(self, cfg: DictConfig, fold_dir: Path, fold: int, enabled: bool = True):
        kind = str(cfg.train.get("logger", "csv"))
        if kind not in LOGGERS:
            raise ConfigError(f"train.logger must be one of {list(LOGGERS)}, got {kind!r}")
        self.kind, self.writer, self.run = kind, None, None
        if not enabled or kind == "csv":
            return
        if kind == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ConfigError("train.logger=tensorboard needs the tensorboard package: "
                                  "pip install tensorboard") from exc
            self.writer = SummaryWriter(log_dir=str(Path(fold_dir) / "tensorboard"))
            return
        try:
            import wandb
        except ImportError as exc:
            raise ConfigError("train.logger=wandb needs the wandb package: pip install wandb") from exc
        self.run = wandb.init(project=str(cfg.train.get("wandb_project", "hms")), name=f"{cfg.name}-fold{fold}",
                              dir=str(fold_dir), mode=os.environ.get("WANDB_MODE", "offline"),
                              config=OmegaConf.to_container(cfg, resolve=True), reinit=True)

    def log(self, row: dict, step: int) -> None:
        values = {k: float(row[k]) for k in SCALARS if k in row}
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)
            self.writer.flush()
        if self.run is not None:
            self.run.log({**values, "stage": row.get("stage"), "epoch": row.get("epoch")}, step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.run is not None:
            self.run.finish()
