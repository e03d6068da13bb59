"""Per-item transforms a training dataset applies on the CPU, configured by the experiment's
`augment` section (the per-batch ones act on the device: hms.training.augment)."""
from __future__ import annotations

import os

import numpy as np


class PanelMasking:
    """albumentations XY masking on (4, 100, 300) panels. The transform keeps its own random
    generators: `reseed` (called per loader worker) gives each worker and epoch its own masks."""

    def __init__(self, p: float):
        # its import asks PyPI for a newer release (2 s timeout): a network call the offline
        # Kaggle notebook and tests must not make
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        import albumentations as A

        # NaN fill: the panels are normalised later and NaN becomes the mean there
        self.mask = A.XYMasking(num_masks_x=(1, 2), num_masks_y=(1, 2), mask_x_length=(5, 30),
                                mask_y_length=(3, 15), fill=float("nan"), p=float(p))

    def reseed(self, seed: int) -> None:
        self.mask.set_random_seed(int(seed))

    def __call__(self, panels: np.ndarray) -> np.ndarray:
        image = panels.astype(np.float32).transpose(1, 2, 0)  # albumentations wants float32 HWC
        return np.ascontiguousarray(self.mask(image=image)["image"].transpose(2, 0, 1), dtype=panels.dtype)


def spec_panel_transform(cfg):
    """PanelMasking of the Kaggle panels, or None when disabled."""
    return PanelMasking(cfg.spec_xymask) if cfg.get("spec_xymask", 0) else None
