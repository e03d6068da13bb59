"""Test predictions from trained folds: `hms predict` and the Kaggle notebook both call
predict_experiment."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from hms.training.predict import predict_test
from hms.training.runs import run_dirs


def load_fold_network(fold_dir: Path, overrides: dict, device="cpu") -> tuple[DictConfig, torch.nn.Module]:
    """(resolved config.yaml merged with `overrides`, network from best.pt in eval mode)."""
    from hms.training.network import build_network

    fold_dir = Path(fold_dir)
    if not (fold_dir / "best.pt").is_file():
        raise FileNotFoundError(f"{fold_dir}/best.pt: this fold is not trained")
    cfg = OmegaConf.merge(OmegaConf.load(fold_dir / "config.yaml"), overrides)
    if "pretrained" in cfg.model:
        cfg.model.pretrained = False  # the weights come from best.pt; never fetch ImageNet ones here
    net = build_network(cfg).to(device)
    net.load_state_dict(torch.load(fold_dir / "best.pt", map_location=device, weights_only=True))
    return cfg, net.eval()


def load_folds(exp_dir: Path, overrides: dict, device) -> tuple[DictConfig, list[torch.nn.Module]]:
    """Each run's config + network (CV folds, their seeds, full fits); `overrides` (paths, device,
    tta) apply to all."""
    loaded = [load_fold_network(d, overrides, device) for d in run_dirs(exp_dir)]
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
    return predict_test(cfg, nets, device, prior=prior, amp=device.startswith("cuda"), progress=progress)
