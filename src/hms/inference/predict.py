"""Test predictions from trained folds: `hms predict` and the Kaggle notebook both call
predict_experiment."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from hms import config as C
from hms.models.factory import fitted_once
from hms.inference.trees import tree_test_predictions
from hms.models.fingerprint import check_same_runs
from hms.models.network import load_fold_network
from hms.inference.batch import predict_test
from hms.models.runs import run_dirs


def trained_experiments(work_dir: Path) -> list[str]:
    """The experiments in work_dir with at least one run checkpoint (fold*/best.pt, full*/...)."""
    return sorted({p.parent.parent.name for p in Path(work_dir).glob("*/*/best.pt")})


def experiment_dir(work_dir: Path, name: str) -> Path:
    """work_dir/name, or a FileNotFoundError listing the trained experiments there (a typo in
    --exp names what exists instead of a bare path)."""
    exp_dir = Path(work_dir) / name
    if exp_dir.is_dir():
        return exp_dir
    found = trained_experiments(work_dir)
    raise FileNotFoundError(f"no experiment {name!r} in {work_dir}; trained there: "
                            f"{', '.join(found) if found else 'none (run hms train first)'}")


def load_folds(exp_dir: Path, overrides: dict, device) -> tuple[DictConfig, list[torch.nn.Module]]:
    """Each run's config + network (CV folds, their seeds, full fits); `overrides` (paths, device,
    tta) apply to all."""
    dirs = run_dirs(exp_dir)
    check_same_runs(exp_dir, dirs)
    loaded = [load_fold_network(d, overrides, device) for d in dirs]
    return loaded[-1][0], [net for _, net in loaded]


def predict_experiment(exp_dir: Path, data_dir: Path, work_dir: Path, device: str | None = None,
                       tta_lr_swap: bool | None = None, progress: bool = True) -> pd.DataFrame:
    """Test predictions of one experiment from its fold checkpoints: `hms predict` locally and
    the Kaggle notebook both call this."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    overrides = {"paths": {"data_dir": str(data_dir), "work_dir": str(work_dir)}, "device": device}
    if tta_lr_swap is not None:
        overrides["infer"] = {"tta_lr_swap": bool(tta_lr_swap)}
    cfg, nets = load_folds(Path(exp_dir), overrides, device)
    summary = Path(exp_dir) / "summary.json"
    prior = json.loads(summary.read_text()).get("prior") if summary.is_file() else None
    return networks_test_predictions(cfg, nets, device, prior, progress)


def networks_test_predictions(cfg: DictConfig, nets: list, device: str, prior=None,
                              progress: bool = False) -> pd.DataFrame:
    """The mean test predictions of networks sharing cfg (a fitted-once member's from its test
    feature caches, once for all of them)."""
    if fitted_once(cfg):
        return tree_test_predictions(cfg, nets, device, prior=prior, progress=progress)
    return predict_test(cfg, nets, device, prior=prior, amp=str(device).startswith("cuda"), progress=progress)


def run_test_predictions(run_dir: Path, cfg: DictConfig, prior=None) -> pd.DataFrame:
    """One trained run's test predictions from its best.pt, under cfg's paths and device."""
    device = C.resolve_device(cfg)
    overrides = {"paths": OmegaConf.to_container(cfg.paths, resolve=True), "device": device}
    run_cfg, net = load_fold_network(run_dir, overrides, device)
    return networks_test_predictions(run_cfg, [net], device, prior)
