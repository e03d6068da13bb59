"""Cleaning: NaN fill (with a mask of what was missing), zero-phase Butterworth band-pass,
60 Hz notch, clipping and scaling. Parameters come from the config's `signal` section."""
from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
from scipy import signal as sps

from hms.data import schema


def fill_nan(x: np.ndarray, how: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """Fill NaN per channel (last axis = time). Returns (filled, missing mask).
    An all-NaN channel becomes zeros: its mask says so."""
    mask = np.isnan(x)
    if not mask.any():
        return x, mask
    if how == "mean":
        with warnings.catch_warnings():  # an all-NaN channel warns; it is zero-filled below
            warnings.simplefilter("ignore", RuntimeWarning)
            fill = np.nanmean(x, axis=-1, keepdims=True)
        fill = np.nan_to_num(fill, nan=0.0)
    elif how == "zero":
        fill = np.zeros(x.shape[:-1] + (1,), dtype=x.dtype)
    else:
        raise ValueError(f"signal.fill_nan must be 'mean' or 'zero', got {how!r}")
    return np.where(mask, fill, x), mask


@lru_cache(maxsize=32)
def bandpass_sos(low: float, high: float, order: int, fs: float = schema.SAMPLING_RATE) -> np.ndarray:
    nyquist = fs / 2
    if not 0 < low < high < nyquist:
        raise ValueError(f"band-pass edges must satisfy 0 < low < high < {nyquist} Hz, got {low}, {high}")
    return sps.butter(order, [low, high], btype="bandpass", fs=fs, output="sos")


@lru_cache(maxsize=8)
def notch_ba(freq: float, q: float, fs: float = schema.SAMPLING_RATE) -> tuple[np.ndarray, np.ndarray]:
    return sps.iirnotch(freq, q, fs=fs)


def bandpass(x: np.ndarray, low: float, high: float, order: int = 4) -> np.ndarray:
    """Zero-phase Butterworth band-pass along the last axis."""
    return sps.sosfiltfilt(bandpass_sos(float(low), float(high), int(order)), x, axis=-1).astype(np.float32)


def notch(x: np.ndarray, freq: float = 60.0, q: float = 30.0) -> np.ndarray:
    b, a = notch_ba(float(freq), float(q))
    return sps.filtfilt(b, a, x, axis=-1).astype(np.float32)


def prepare_window(x: np.ndarray, cfg) -> np.ndarray:
    """What the dataset does to one raw 50 s window (..., n_signals, n_samples) before the
    model's device-side cleaning (hms.signal.cleaner): NaN filled from this window alone, then
    the optional wavelet denoising. Same dtype out as in."""
    from hms.signal.denoise import wavelet_denoise

    if not cfg.denoise.enabled and not np.isnan(x).any():
        return x
    out, _ = fill_nan(np.asarray(x, dtype=np.float32), cfg.fill_nan)
    if cfg.denoise.enabled:
        out = wavelet_denoise(out, cfg.denoise.wavelet, cfg.denoise.level, cfg.denoise.threshold, cfg.denoise.mode)
    return out.astype(x.dtype)


def clean(x: np.ndarray, cfg) -> tuple[np.ndarray, np.ndarray]:
    """The configured chain on (..., n_signals, n_samples) with scipy's filters: fill NaN,
    band-pass, notch, wavelet denoise, clip, scale. Returns (clean float32, NaN mask). The
    viewer's traces and the tests' reference; models clean with hms.signal.cleaner."""
    from hms.signal.denoise import wavelet_denoise

    x, mask = fill_nan(np.asarray(x, dtype=np.float32), cfg.fill_nan)
    if cfg.bandpass:
        x = bandpass(x, *cfg.bandpass, order=cfg.filter_order)
    if cfg.notch_hz:
        x = notch(x, cfg.notch_hz, cfg.notch_q)
    if cfg.denoise.enabled:
        x = wavelet_denoise(x, cfg.denoise.wavelet, cfg.denoise.level, cfg.denoise.threshold, cfg.denoise.mode)
    if cfg.clip_uv:
        x = np.clip(x, -cfg.clip_uv, cfg.clip_uv)
    return (x / cfg.scale).astype(np.float32), mask
