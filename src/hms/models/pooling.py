"""Pooling layers shared by the 2D and 1D models."""
from __future__ import annotations

import torch
from torch import nn


class GeM(nn.Module):
    """Generalised-mean pooling over every axis after the channel axis.

    p=1 is average pooling and p -> inf approaches max pooling; a trainable p lets the
    network pick how peaky the pooling is (sharp discharges vs diffuse rhythms).
    Works on (B, C, H, W) and (B, C, T) alike; returns (B, C).
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, trainable: bool = True):
        super().__init__()
        p_tensor = torch.full((1,), float(p))
        if trainable:
            self.p = nn.Parameter(p_tensor)
        else:
            self.register_buffer("p", p_tensor)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 because x**p overflows fp16 under autocast for activations above ~40
        dims = tuple(range(2, x.ndim))
        p = self.p.float()
        pooled = x.float().clamp(min=self.eps).pow(p).mean(dim=dims).pow(1.0 / p)
        return pooled.to(x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p.item():.3f}, eps={self.eps}"


def mean_max_pool1d(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T) -> (B, 2C): mean keeps the background level, max keeps brief events."""
    return torch.cat([x.mean(dim=-1), x.amax(dim=-1)], dim=1)
