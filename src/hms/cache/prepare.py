"""`hms prepare`: validate the dataset, then build or reuse every cache the models read."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from hms import config as C
from hms.cache.store import build_cache
from hms.data.tables import ensure_dataset, load_test, train_table
from hms.data.validate import preflight


def prepare(cfg: DictConfig, splits: tuple[str, ...] = ("train", "test"), workers: int | None = None,
            progress: bool = True) -> dict[str, dict[str, Path]]:
    """Validate the dataset (`hms validate`; stops on bad train files unless validate.skip_bad),
    then build or reuse every cache the models read: {split: {'eeg': dir, 'spec': dir}}."""
    data_dir = ensure_dataset(cfg)
    preflight(data_dir, C.work_dir(cfg), skip_bad=bool(cfg.validate.skip_bad), quiet=not progress)
    out: dict[str, dict[str, Path]] = {}
    for split in splits:
        table = train_table(cfg) if split == "train" else load_test(cfg)
        out[split] = {kind: build_cache(cfg, data_dir, split, kind, table, workers, progress)
                      for kind in ("eeg", "spec")}
    return out
