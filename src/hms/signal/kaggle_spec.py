"""The competition's 10-minute spectrograms: log-clip, window extraction, panels."""
from __future__ import annotations

import numpy as np

from hms.data import schema


def log_power(power: np.ndarray, log_clip: tuple[float, float]) -> np.ndarray:
    """log(clip(power, exp(lo), exp(hi))); NaN stays NaN so windows can be normalised NaN-safely."""
    lo, hi = log_clip
    with np.errstate(invalid="ignore"):
        return np.log(np.clip(power, np.exp(lo), np.exp(hi))).astype(np.float32)


def read_log_window(path, offset: float, n_frames: int, log_clip: tuple[float, float]) -> np.ndarray:
    """(n_frames, 400) log power of a spectrogram file from `offset` on (NaN past its ends)."""
    return read_log_window_timed(path, offset, n_frames, log_clip)[0]


def read_log_window_timed(path, offset: float, n_frames: int,
                          log_clip: tuple[float, float]) -> tuple[np.ndarray, float]:
    """read_log_window and the time of its first frame: the file's first frame at or after
    `offset`, which is not `offset` itself (real frames sit at odd seconds: 1, 3, 5, ...)."""
    from hms.data import io

    df = io.read_spectrogram(path)
    first_time = float(df[schema.SPEC_TIME_COLUMN].iloc[0])
    start = window_start(first_time, offset)
    window = log_power(take_window(df[list(schema.SPEC_COLUMNS)].to_numpy(), start, n_frames), log_clip)
    return window, first_time + start * schema.SPEC_STEP_SECONDS


def window_start(first_time: float, offset: float) -> int:
    """Index of the first frame inside [offset, offset + 600), frames at first_time + 2k."""
    return int(np.ceil((offset - first_time) / schema.SPEC_STEP_SECONDS - 1e-6))


def take_window(frames: np.ndarray, start: int, n: int = schema.SPEC_WINDOW_FRAMES,
                dtype=np.float32) -> np.ndarray:
    """frames[start:start+n] with NaN rows where the window runs past either end."""
    out = np.empty((n, frames.shape[1]), dtype=dtype)  # only the edges need the NaN fill
    lo, hi = max(start, 0), min(start + n, len(frames))
    if hi <= lo:
        out[:] = np.nan
        return out
    out[: lo - start] = np.nan
    out[lo - start: hi - start] = frames[lo:hi]
    out[hi - start:] = np.nan
    return out


def raw_panels(window: np.ndarray, dtype=np.float32) -> np.ndarray:
    """(frames, 400) -> (4 chains, 100 freqs low->high, frames), NaN kept."""
    panels = np.ascontiguousarray(window.T, dtype=dtype)
    return panels.reshape(len(schema.CHAIN_NAMES), schema.SPEC_N_FREQS, -1)


def normalize_batch(panels, normalize: str = "panel"):
    """Torch, batched: (B, 4, F, T) log-power with NaN -> standardised per sample over its
    finite values, NaN -> 0 (the mean). Same result as to_panels, on the device."""
    import torch

    finite = torch.isfinite(panels)
    if normalize == "panel":
        count = finite.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1)
        zeroed = torch.where(finite, panels, torch.zeros_like(panels))
        mean = zeroed.sum(dim=(1, 2, 3), keepdim=True) / count
        centred = torch.where(finite, panels - mean, torch.zeros_like(panels))
        std = (centred.square().sum(dim=(1, 2, 3), keepdim=True) / count).sqrt()
        return centred / (std + 1e-6)
    if normalize != "none":
        raise ValueError(f"kaggle_spec.normalize must be 'panel' or 'none', got {normalize!r}")
    return torch.where(finite, panels, torch.zeros_like(panels))


def to_panels(window: np.ndarray, normalize: str = "panel") -> np.ndarray:
    """(300 frames, 400) log-power -> (4 chains, 100 freqs low->high, 300 frames), normalised,
    NaN -> 0 (the normalised mean) as in the starter notebook."""
    panels = raw_panels(window)
    if normalize == "panel":
        mean = np.nanmean(panels) if np.isnan(panels).any() else panels.mean()
        if np.isfinite(mean):  # an all-NaN window stays NaN and becomes zeros below
            panels -= mean
            panels /= np.sqrt(np.nanmean(panels * panels)) + 1e-6
    elif normalize != "none":
        raise ValueError(f"kaggle_spec.normalize must be 'panel' or 'none', got {normalize!r}")
    return np.nan_to_num(panels, nan=0.0)
