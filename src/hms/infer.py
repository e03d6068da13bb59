"""Predictions from trained folds: the same code serves validation, `hms predict` and the
Kaggle notebook."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hms.augment import MIRROR_PANELS, MIRROR_SIGNALS


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def mirrored(batch: dict) -> dict:
    """The left/right-swapped copy of a batch (test-time augmentation)."""
    out = dict(batch)
    signal = batch["signal"].clone()
    signal[:, : len(MIRROR_SIGNALS)] = batch["signal"][:, MIRROR_SIGNALS]
    out["signal"], out["spec"] = signal, batch["spec"][:, MIRROR_PANELS]
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
