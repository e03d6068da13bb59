"""Wavelet denoising with PyWavelets, the seed notebooks' recipe: full decomposition, a
noise estimate from one detail level, every detail level thresholded, reconstruction."""
from __future__ import annotations

import numpy as np
import pywt

THRESHOLDS = ("universal", "bayes")


def _noise_sigma(detail: np.ndarray) -> np.ndarray:
    # Median absolute deviation: robust to the (sparse) signal in the detail coefficients.
    return np.median(np.abs(detail - np.median(detail, axis=-1, keepdims=True)), axis=-1, keepdims=True) / 0.6745


def wavelet_denoise(x: np.ndarray, wavelet: str = "db8", level: int = 1,
                    threshold: str = "universal", mode: str = "soft") -> np.ndarray:
    """Denoise along the last axis. `level` picks the detail level the noise sigma comes
    from (1 = finest). universal = VisuShrink sigma*sqrt(2 log n); bayes = BayesShrink."""
    if threshold not in THRESHOLDS:
        raise ValueError(f"denoise.threshold must be one of {THRESHOLDS}, got {threshold!r}")
    n = x.shape[-1]
    coeffs = pywt.wavedec(x, wavelet, mode="periodization", axis=-1)
    sigma = _noise_sigma(coeffs[-min(max(level, 1), len(coeffs) - 1)])
    for i in range(1, len(coeffs)):
        if threshold == "universal":
            thr = sigma * np.sqrt(2 * np.log(n))
        else:
            sigma_x = np.sqrt(np.maximum(coeffs[i].var(axis=-1, keepdims=True) - sigma**2, 1e-12))
            thr = sigma**2 / sigma_x
        coeffs[i] = pywt.threshold(coeffs[i], thr, mode=mode)
    return pywt.waverec(coeffs, wavelet, mode="periodization", axis=-1)[..., :n].astype(np.float32)
