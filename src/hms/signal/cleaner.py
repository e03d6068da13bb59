"""The model-side cleaning chain: one 50 s window at a time, batched, on the model's device.

Every model input is cleaned from its own 50 s window and nothing else, so a window cut from
a long train EEG and the same 50 s in a test file give the same input (filtering a whole
labelled span and then slicing it, as the caches once did, left different edge transients
in train and test: about 36% RMS in the first second).

Order: the dataset fills NaN per window (`filters.prepare_window`, on CPU); here, zero-phase
band-pass and notch, clip, scale, centre crop and decimation. The filters are the configured
Butterworth band-pass and IIR notch applied forward and backward, i.e. their squared magnitude
response, computed in the frequency domain over an odd extension of the window (scipy's
`filtfilt` edge rule): linear and batched, so mixup, sign flip and the hemisphere swap
commute with it, and it costs one FFT pair per signal on a GPU.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import fft as sp_fft
from scipy import signal as sps
from torch import nn

from hms.data import schema
from hms.signal import filters


def zero_phase_gain(n_fft: int, bandpass=None, order: int = 4, notch_hz=None, notch_q: float = 30.0,
                    fs: float = schema.SAMPLING_RATE) -> np.ndarray:
    """|H(f)|^2 of the band-pass and notch at the rfft frequencies of n_fft points: what
    filtering forward and backward does to each frequency."""
    freqs = np.fft.rfftfreq(n_fft, 1 / fs)
    gain = np.ones_like(freqs)
    if bandpass:
        _, h = sps.sosfreqz(filters.bandpass_sos(float(bandpass[0]), float(bandpass[1]), int(order), fs),
                            worN=freqs, fs=fs)
        gain *= np.abs(h) ** 2
    if notch_hz:
        b, a = filters.notch_ba(float(notch_hz), float(notch_q), fs)
        _, h = sps.freqz(b, a, worN=freqs, fs=fs)
        gain *= np.abs(h) ** 2
    return gain


def edge_padding(n_samples: int, bandpass=None, fs: float = schema.SAMPLING_RATE, multiple: int = 1) -> int:
    """Samples of odd extension on each side: two periods of the band's lower edge (4 s at
    0.5 Hz), at least 1 s, a multiple of `multiple`, never more than the window allows."""
    low = float(bandpass[0]) if bandpass else 1.0
    pad = -(-int(max(fs, round(2 * fs / low))) // multiple) * multiple
    return int(min(n_samples - 1, pad))


def odd_extension(x: torch.Tensor, pad: int) -> torch.Tensor:
    """scipy's padtype='odd' along the last axis: 2*x[0] - x[pad:0:-1], x, 2*x[-1] - x[-2:-pad-2:-1]."""
    left = 2 * x[..., :1] - x[..., 1:pad + 1].flip(-1)
    right = 2 * x[..., -1:] - x[..., -pad - 1:-1].flip(-1)
    return torch.cat([left, x, right], dim=-1)


class WindowCleaner(nn.Module):
    """(B, S, 10_000) NaN-filled raw bipolar µV at 200 Hz -> (B, S, signal_seconds * 200 /
    downsample) cleaned model input. Holds no weights: checkpoints are unchanged by it."""

    def __init__(self, signal_cfg: dict, signal_seconds: float = schema.EEG_WINDOW_SECONDS,
                 downsample: int = 1, fs: float = schema.SAMPLING_RATE):
        super().__init__()
        self.bandpass = tuple(signal_cfg.get("bandpass") or ())
        self.order = int(signal_cfg.get("filter_order", 4))
        self.notch_hz, self.notch_q = signal_cfg.get("notch_hz"), float(signal_cfg.get("notch_q", 30.0))
        self.clip_uv, self.scale = signal_cfg.get("clip_uv"), float(signal_cfg.get("scale", 1.0))
        self.crop, self.downsample, self.fs = int(round(signal_seconds * fs)), int(downsample), float(fs)
        self._gains: dict[tuple[int, str], torch.Tensor] = {}

    def gain(self, n_fft: int, device) -> torch.Tensor:
        key = (n_fft, str(device))
        if key not in self._gains:
            g = zero_phase_gain(n_fft, self.bandpass, self.order, self.notch_hz, self.notch_q, self.fs)
            self._gains[key] = torch.as_tensor(g, dtype=torch.float32, device=device)
        return self._gains[key]

    def filtered_crop(self, x: torch.Tensor, extra_gain=None) -> torch.Tensor:
        """Filter, then keep every `downsample`-th sample of the centred crop. Decimation happens
        in the frequency domain (a shorter inverse FFT over the low bins: cheaper, and nothing
        above the new Nyquist frequency aliases back) when the crop's start allows it.
        extra_gain: frequencies (F,) -> per-window gains (B, 1, F) multiplied in (augmentation)."""
        n, d = x.shape[-1], self.downsample
        lo = (n - self.crop) // 2
        if not self.bandpass and not self.notch_hz and extra_gain is None:
            return x[..., lo: lo + self.crop: d]
        pad = edge_padding(n, self.bandpass, self.fs, multiple=d)
        n_fft = d * sp_fft.next_fast_len(-(-(n + 2 * pad) // d), real=True)
        spectrum = torch.fft.rfft(odd_extension(x, pad), n=n_fft) * self.gain(n_fft, x.device)
        if extra_gain is not None:
            spectrum = spectrum * extra_gain(torch.fft.rfftfreq(n_fft, 1 / self.fs, device=x.device))
        if (pad + lo) % d == 0:
            low = spectrum[..., : n_fft // (2 * d) + 1]
            start = (pad + lo) // d
            return torch.fft.irfft(low, n=n_fft // d)[..., start: start + -(-self.crop // d)] / d
        return torch.fft.irfft(spectrum, n=n_fft)[..., pad + lo: pad + lo + self.crop: d]

    def forward(self, signal: torch.Tensor, extra_gain=None) -> torch.Tensor:
        with torch.autocast(device_type=signal.device.type, enabled=False):  # FFTs in float32
            x = self.filtered_crop(signal.float(), extra_gain)
            if self.clip_uv:
                x = x.clamp(-float(self.clip_uv), float(self.clip_uv))
            return (x / self.scale).contiguous()
