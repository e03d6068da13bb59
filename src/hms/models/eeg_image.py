"""2nd place's raw EEG as an image: each bipolar signal cut into consecutive rows, the rows
of all signals stacked into one single-channel image for a timm 2D backbone (16 x 10,000
samples at 200 Hz -> 160 x 1,000 pixels). The convolution sees a row's waveform along x and,
along y, the same signal 5 s later or the neighbouring pair of its chain."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hms.data.schema import N_CLASSES
from hms.models.registry import register
from hms.models.timm2d import TimmSpectrogramNet


@register("eeg_image")
class RawEEGImageNet(nn.Module):
    """(B, S, T) cleaned signals -> (B, 1, S * rows_per_signal, T // rows_per_signal) -> timm
    backbone -> (B, 6). Samples past the last full row (T % rows_per_signal) are dropped.
    image_size: [H, W] to resize the image (None: the native 160 x 1,000)."""

    input_kind = "signal"

    def __init__(
        self,
        backbone: str = "efficientnet_b0",
        n_signals: int = 16,
        rows_per_signal: int = 10,
        image_size: list[int] | None = None,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        drop_rate: float = 0.2,
        drop_path_rate: float = 0.0,
        gem_p: float = 3.0,
        gem_trainable: bool = True,
        n_classes: int = N_CLASSES,
        backbone_kwargs: dict | None = None,
    ):
        super().__init__()
        if rows_per_signal < 1:
            raise ValueError(f"rows_per_signal must be >= 1, got {rows_per_signal}")
        self.n_signals, self.rows = n_signals, rows_per_signal
        self.image_size = tuple(image_size) if image_size else None
        self.net = TimmSpectrogramNet(
            backbone=backbone, in_chans=1, pretrained=pretrained, checkpoint_path=checkpoint_path,
            drop_rate=drop_rate, drop_path_rate=drop_path_rate, gem_p=gem_p, gem_trainable=gem_trainable,
            n_classes=n_classes, backbone_kwargs=backbone_kwargs,
        )

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.signals_to_image(x))

    def gradcam_target_layer(self) -> nn.Module:
        return self.net.gradcam_target_layer()
