"""The tables every stage reads: find or make the dataset, train.csv less what validation left
out, with targets and the shared folds; test.csv."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from hms import config as C
from hms.data import io, labels, schema
from hms.data.folds import attach_folds, load_or_make_folds


def ensure_dataset(cfg: DictConfig) -> Path:
    """The configured dataset; the embedded one is generated when nothing else is there."""
    data_dir = C.data_dir(cfg)
    if not (data_dir / schema.TRAIN_CSV).is_file() and data_dir == C.synthetic_data_dir():
        from hms.data.synthetic import generate

        print(f"[hms] no competition data found: generating the embedded dataset in {data_dir}")
        generate(data_dir, n_eegs=cfg.synth.n_eegs, n_test_eegs=cfg.synth.n_test_eegs, seed=cfg.synth.seed)
    return io.require_dataset(data_dir)


def folds_path(cfg: DictConfig) -> Path:
    return C.work_dir(cfg) / "folds.csv"


def train_table(cfg: DictConfig) -> pd.DataFrame:
    """train.csv, less the rows whose files `validate.skip_bad` left out."""
    from hms.data.validate import drop_excluded_rows

    return drop_excluded_rows(io.read_train_csv(ensure_dataset(cfg) / schema.TRAIN_CSV), C.work_dir(cfg))


def ensure_folds(cfg: DictConfig, train: pd.DataFrame | None = None) -> pd.DataFrame:
    """folds.csv for these train rows (default: train_table), reused or rebuilt per folds.*."""
    train = train_table(cfg) if train is None else train
    return load_or_make_folds(train, folds_path(cfg), cfg.folds.n_folds, cfg.folds.seed,
                              cfg.folds.get("method", "group"))


def load_train(cfg: DictConfig) -> pd.DataFrame:
    """train.csv with targets (normalised votes, total_votes) and the shared folds."""
    train = train_table(cfg)
    return attach_folds(labels.add_targets(train), ensure_folds(cfg, train))


def load_test(cfg: DictConfig) -> pd.DataFrame:
    return io.read_test_csv(ensure_dataset(cfg) / schema.TEST_CSV)
