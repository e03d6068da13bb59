"""2nd place's raw EEG as an image: each bipolar signal cut into consecutive rows, the rows
of all signals stacked into one single-channel image for a timm 2D backbone (16 x 10,000
samples at 200 Hz -> 160 x 1,000 pixels). The convolution sees a row's waveform along x and,
along y, the same signal 5 s later or the neighbouring pair of its chain."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from hms.models.registry import register
from hms.models.timm2d import SignalImageNet


@register("eeg_image")
class RawEEGImageNet(SignalImageNet):
    """(B, S, T) cleaned signals -> (B, 1, S * rows_per_signal, T // rows_per_signal) -> the timm
    head (SignalImageNet: backbone, pretrained, drop_rate, ... are TimmSpectrogramNet's keys) ->
    (B, 6). Samples past the last full row (T % rows_per_signal) are dropped.
    image_size: [H, W] to resize the image (None: the native 160 x 1,000)."""

    def __init__(self, n_signals: int = 16, rows_per_signal: int = 10, image_size: list[int] | None = None,
                 **timm):
        if rows_per_signal < 1:
            raise ValueError(f"rows_per_signal must be >= 1, got {rows_per_signal}")
        super().__init__(in_chans=1, **timm)
        self.n_signals, self.rows = n_signals, rows_per_signal
        self.image_size = tuple(image_size) if image_size else None

    def signals_to_image(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, T) -> (B, 1, S * rows, T // rows): signal s, row r holds samples r*W .. (r+1)*W."""
        b, s, t = x.shape
        if s != self.n_signals:
            raise ValueError(f"expected {self.n_signals} signals, got {s}")
        width = t // self.rows
        if width < 1:
            raise ValueError(f"{t} samples do not fill {self.rows} rows per signal")
        image = x[..., : width * self.rows].reshape(b, 1, s * self.rows, width)
        if self.image_size:
            image = F.interpolate(image, size=self.image_size, mode="bilinear", align_corners=False)
        return image
