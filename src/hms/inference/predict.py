"""Predictions from trained folds: the same code serves validation, `hms predict` and the
Kaggle notebook."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hms import config as C
from hms.augment import MIRROR_PANELS, mirror_order
from hms.data import schema
from hms.dataset import widened


def to_device(batch: dict, device) -> dict:
    """Moves a loader batch to the device, widening its float16 inputs to float32 there."""
    return widened({k: v.to(device, non_blocking=True) for k, v in batch.items()})


def mirrored(batch: dict) -> dict:
    """The left/right-swapped copy of a batch (test-time augmentation)."""
    out = dict(batch)
    out["signal"] = batch["signal"][:, mirror_order(batch["signal"].shape[1])]
    out["spec"] = batch["spec"][:, MIRROR_PANELS]
    return out


@torch.no_grad()
def predict_probs(net: torch.nn.Module, loader: DataLoader, device, tta_lr_swap: bool = False,
                  amp: bool = False, progress: bool = False, desc: str = "predict") -> np.ndarray:
    """Softmax probabilities (n, 6) float64, in the loader's order."""
    net.eval()
    out = []
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        batch = to_device(batch, device)
        with torch.autocast(device_type=torch.device(device).type, enabled=amp):
            probs = torch.softmax(net(batch).float(), dim=1)
            if tta_lr_swap:
                probs = (probs + torch.softmax(net(mirrored(batch)).float(), dim=1)) / 2
        out.append(probs.cpu().double().numpy())
    return np.concatenate(out) if out else np.zeros((0, 6))


# ---------------------------------------------------------------- test predictions

def test_inputs(cfg, progress: bool = False):
    """(test table, eeg cache, spec cache, rows that can be predicted): missing or unreadable
    test files are marked in the caches instead of stopping the run."""
    from hms.cache import build_cache, open_cache
    from hms.data import io
    from hms.network import uses_kaggle_spec

    data_dir = C.data_dir(cfg)
    test = io.read_test_csv(data_dir / schema.TEST_CSV)
    eeg, spec = (open_cache(build_cache(cfg, data_dir, "test", kind, test, progress=progress, skip_bad=True))
                 for kind in ("eeg", "spec"))
    bad = test.eeg_id.isin(eeg.bad_ids())
    if uses_kaggle_spec(cfg):
        bad |= test.spectrogram_id.isin(spec.bad_ids())
    return test, eeg, spec, ~bad.to_numpy()


MAX_FALLBACK_SHARE = 0.05  # more test rows than this without readable files is a format bug


def check_fallback(test: pd.DataFrame, ok: np.ndarray, caches: list) -> None:
    """Stop when every row, or more than MAX_FALLBACK_SHARE of them, would get the prior: a
    submission of priors looks valid and wastes a day's submission."""
    from hms.data.io import HMSDataError

    n_bad = int((~ok).sum())
    if n_bad and (n_bad == len(ok) or n_bad > MAX_FALLBACK_SHARE * len(ok)):
        reasons = {}
        for cache in caches:
            reasons.update(cache.bad_reasons())
        examples = list(dict.fromkeys(reasons.values()))[:3]
        raise HMSDataError(
            f"{n_bad} of {len(ok)} test rows have missing or unreadable files (more than "
            f"{MAX_FALLBACK_SHARE:.0%}: a data format problem, not bad luck); causes: {examples}")


def predict_test(cfg, nets: list, device, prior=None, amp: bool = False, progress: bool = False) -> pd.DataFrame:
    """Mean probabilities of `nets` (folds sharing one input config) for every test.csv row, in
    its order; rows whose files are missing or unreadable get `prior` (uniform if None) and a
    warning naming them, up to MAX_FALLBACK_SHARE of the rows (beyond that: an error)."""
    from hms.dataset import HMSDataset, make_loader
    from hms.network import uses_kaggle_spec

    test, eeg, spec, ok = test_inputs(cfg, progress)
    check_fallback(test, ok, [eeg, spec] if uses_kaggle_spec(cfg) else [eeg])
    probs = np.tile(np.asarray(prior if prior is not None else np.full(6, 1 / 6), dtype=np.float64), (len(test), 1))
    if (~ok).any():
        warnings.warn(f"{(~ok).sum()} test rows have missing or unreadable files and get the prior: "
                      f"eeg_id {test.eeg_id[~ok].tolist()[:20]}", stacklevel=2)
    if ok.any():
        ds = HMSDataset(test[ok], eeg, spec, cfg.input, train=False, use_spec=uses_kaggle_spec(cfg),
                        signal_cfg=cfg.signal)
        loader = make_loader(ds, cfg, shuffle=False)
        probs[ok] = np.mean([predict_probs(net, loader, device, tta_lr_swap=bool(cfg.infer.tta_lr_swap), amp=amp,
                                           progress=progress, desc=f"predict {cfg.name}") for net in nets], axis=0)
    out = pd.DataFrame(probs, columns=list(schema.VOTE_COLUMNS))
    out.insert(0, "eeg_id", test["eeg_id"].to_numpy())
    return out


def fold_dirs(exp_dir: Path) -> list[Path]:
    """Finished folds of an experiment (fold0, fold1, ...; set-aside `.old-*` copies excluded)."""
    dirs = [d for d in sorted(Path(exp_dir).glob("fold*")) if d.name[4:].isdigit() and (d / "best.pt").is_file()]
    if not dirs:
        raise FileNotFoundError(f"{exp_dir}: no fold*/best.pt checkpoints (train the experiment first)")
    return dirs


def load_fold_network(fold_dir: Path, overrides: dict, device="cpu") -> tuple[DictConfig, torch.nn.Module]:
    """(resolved config.yaml merged with `overrides`, network from best.pt in eval mode)."""
    from hms.network import build_network

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
    """Each fold's config + network; `overrides` (paths, device, tta) apply to all."""
    loaded = [load_fold_network(d, overrides, device) for d in fold_dirs(exp_dir)]
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
