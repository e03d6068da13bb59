"""Augmentations, all configured by the experiment's `augment` section.

Per-sample, on CPU in the dataset (hms.inputs): left/right hemisphere swap and albumentations XY
masking of the Kaggle spectrogram panels.
Per-batch, on the device: mixup of inputs and targets in the training step (on the raw
windows: the model's filters are linear, so mixing before cleaning equals mixing after); inside
the network, after the window is cleaned: time shift, channel dropout and sign flip (signals),
then SpecAugment time/frequency masking and time warp (images).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _coin(n: int, p: float, device) -> torch.Tensor:
    return torch.rand(n, device=device) < p


def time_shift(signal: torch.Tensor, max_fraction: float) -> torch.Tensor:
    """Circular shift by up to max_fraction of the window, per sample."""
    if max_fraction <= 0:
        return signal
    n, _, t = signal.shape
    shifts = torch.randint(-int(t * max_fraction), int(t * max_fraction) + 1, (n,), device=signal.device)
    idx = (torch.arange(t, device=signal.device)[None, :] - shifts[:, None]) % t
    return torch.gather(signal, 2, idx[:, None, :].expand_as(signal))


def channel_dropout(signal: torch.Tensor, p: float) -> torch.Tensor:
    if p <= 0:
        return signal
    keep = (torch.rand(signal.shape[:2], device=signal.device) >= p).to(signal.dtype)
    return signal * keep[:, :, None]


def sign_flip(signal: torch.Tensor, p: float) -> torch.Tensor:
    if p <= 0:
        return signal
    sign = torch.where(_coin(signal.shape[0], p, signal.device), -1.0, 1.0).to(signal.dtype)
    return signal * sign[:, None, None]


def spec_augment(image: torch.Tensor, n_time: int, n_freq: int, max_width: float) -> torch.Tensor:
    """SpecAugment masks on (B, C, F, T): n_time time stripes and n_freq frequency stripes."""
    b, _, f, t = image.shape
    out = image.clone()
    for axis, count, size in ((3, n_time, t), (2, n_freq, f)):
        for _ in range(count):
            width = torch.randint(0, max(1, int(size * max_width)) + 1, (b,), device=image.device)
            start = (torch.rand(b, device=image.device) * (size - width)).long()
            pos = torch.arange(size, device=image.device)[None, :]
            stripe = (pos >= start[:, None]) & (pos < (start + width)[:, None])
            shape = (b, 1, 1, size) if axis == 3 else (b, 1, size, 1)
            out = out.masked_fill(stripe.view(shape), 0.0)
    return out


def time_warp(image: torch.Tensor, max_warp: float) -> torch.Tensor:
    """Piecewise-linear warp of the time axis around a random centre (SpecAugment's warp)."""
    if max_warp <= 0:
        return image
    b, _, f, t = image.shape
    centre = 0.2 + 0.6 * torch.rand(b, 1, device=image.device)
    moved = (centre + (torch.rand(b, 1, device=image.device) * 2 - 1) * max_warp).clamp(0.1, 0.9)
    x = torch.linspace(0, 1, t, device=image.device)[None, :]
    src = torch.where(x < moved, x * centre / moved, centre + (x - moved) * (1 - centre) / (1 - moved))
    grid_x = (src * 2 - 1)[:, None, :, None].expand(b, f, t, 1)
    grid_y = torch.linspace(-1, 1, f, device=image.device)[None, :, None, None].expand(b, f, t, 1)
    grid = torch.cat([grid_x, grid_y], dim=-1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


def mixup(batch: dict, alpha: float, p: float) -> None:
    """Convex mix of inputs and soft targets with a shuffled copy of the batch."""
    if alpha <= 0 or torch.rand(()) >= p:
        return
    lam = float(np.random.beta(alpha, alpha))
    perm = torch.randperm(batch["target"].shape[0], device=batch["target"].device)
    for key in ("signal", "spec", "target", "weight"):
        batch[key] = batch[key][perm].lerp_(batch[key], lam)  # lam * x + (1 - lam) * x[perm]


def butterworth_power(ratio: torch.Tensor, order: int = 4) -> torch.Tensor:
    """A Butterworth low-pass at frequency / cutoff = ratio, applied forward and backward: its
    squared magnitude 1 / (1 + ratio^(2 order)) (the analogue prototype; at 200 Hz and cutoffs
    under 25 Hz the digital filter's frequency warping is under 1%)."""
    return 1.0 / (1.0 + ratio ** (2 * order))


def narrow_bandpass(batch_size: int, cfg):
    """A cleaner `extra_gain`: for each window, with probability augment.bandpass_p, a zero-phase
    band-pass with random edges in augment.bandpass_low / bandpass_high (3rd place's random
    filter augmentation), on top of the configured one. None when off."""
    p = float(cfg.get("bandpass_p", 0.0))
    if p <= 0:
        return None

    def gain(freqs: torch.Tensor) -> torch.Tensor:
        device = freqs.device
        (lo_min, lo_max), (hi_min, hi_max) = cfg.bandpass_low, cfg.bandpass_high
        low = lo_min + (lo_max - lo_min) * torch.rand(batch_size, 1, 1, device=device)
        high = hi_min + (hi_max - hi_min) * torch.rand(batch_size, 1, 1, device=device)
        band = butterworth_power(low / freqs.clamp_min(1e-6)) * butterworth_power(freqs / high)
        return torch.where(_coin(batch_size, p, device)[:, None, None], band, torch.ones_like(band))

    return gain


def augment_batch(batch: dict, cfg) -> None:
    """Batch-level augmentations of the raw inputs, in place (the hemisphere swap is per item,
    in the dataset; signal augmentations run inside the network, after cleaning)."""
    mixup(batch, cfg.mixup_alpha, cfg.mixup_p)


class NetworkAugmenter:
    """What the training step hands the network (HMSNet.forward's `augmenter`), so the model
    applies its training-time augmentations without importing the training code: a random
    band-pass for the cleaner, then the signal and image augmentations of the `augment` section."""

    def __init__(self, cfg):
        self.cfg = cfg

    def extra_gain(self, batch_size: int):
        return narrow_bandpass(batch_size, self.cfg)

    def signal(self, signal: torch.Tensor) -> torch.Tensor:
        return augment_signal(signal, self.cfg)

    def image(self, image: torch.Tensor) -> torch.Tensor:
        return augment_image(image, self.cfg)


def augment_signal(signal: torch.Tensor, cfg) -> torch.Tensor:
    """Augmentations of the cleaned signals (the model's input), in training."""
    return sign_flip(channel_dropout(time_shift(signal, cfg.time_shift), cfg.channel_dropout), cfg.sign_flip)


def augment_image(image: torch.Tensor, cfg) -> torch.Tensor:
    """Image-level augmentations for 2D models, applied after the image is built."""
    image = time_warp(image, cfg.time_warp)
    return spec_augment(image, cfg.time_masks, cfg.freq_masks, cfg.mask_max_width)
