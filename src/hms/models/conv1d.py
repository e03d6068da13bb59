"""1D models on raw bipolar signals (B, S, T): S = 16 double-banana pairs (+ extras).

All sizes are arguments so that the same classes give tiny CPU demo models and full
GPU models. Every model returns (B, n_classes) logits and exposes
gradcam_target_layer(): a module whose output is the last temporal feature map.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from hms.data.schema import N_CLASSES
from hms.models.pooling import GeM, mean_max_pool1d
from hms.models.registry import register


def signal_groups(n_signals: int, chain_size: int) -> list[int]:
    """Consecutive group sizes: full chains of `chain_size` pairs, then any extras
    (midline, EKG) as one last group, so 16, 18 or 19 signals all work."""
    sizes = [chain_size] * (n_signals // chain_size)
    return sizes + ([n_signals % chain_size] if n_signals % chain_size else [])


def _check_odd(kernel_sizes: Sequence[int]) -> None:
    # odd kernels with padding k//2 keep every parallel branch at the same length
    if any(k % 2 == 0 for k in kernel_sizes):
        raise ValueError(f"kernel sizes must be odd, got {tuple(kernel_sizes)}")


def conv_bn_act(c_in: int, c_out: int, k: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k - 1) // 2
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, k, stride=stride, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm1d(c_out),
        nn.SiLU(inplace=True),
    )


def classifier_head(n_in: int, hidden: int, drop_rate: float, n_classes: int) -> nn.Sequential:
    if hidden <= 0:
        return nn.Sequential(nn.Dropout(drop_rate), nn.Linear(n_in, n_classes))
    return nn.Sequential(
        nn.Dropout(drop_rate), nn.Linear(n_in, hidden), nn.SiLU(inplace=True),
        nn.Dropout(drop_rate), nn.Linear(hidden, n_classes),
    )


def _global_pool(kind: str, channels: int) -> tuple[nn.Module | None, int]:
    """Returns (module or None for mean+max, pooled feature width)."""
    if kind == "gem":
        return GeM(), channels
    if kind == "avg":
        return nn.AdaptiveAvgPool1d(1), channels
    if kind == "meanmax":
        return None, 2 * channels
    raise ValueError(f"pooling {kind!r} not in ('avg', 'gem', 'meanmax')")


def _apply_pool(pool: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    return mean_max_pool1d(x) if pool is None else pool(x).flatten(1)


# ----------------------------------------------------------------------------------------
# Parallel (grouped) 1D CNN


class SpatialBlock(nn.Module):
    """Channel mixing before any temporal filtering: a 1x1 conv over all pairs (global
    montage view) beside one 1x1 conv per chain (local view, kept apart per chain)."""

    def __init__(self, n_signals: int, chain_size: int, mix_channels: int, chain_channels: int):
        super().__init__()
        self.group_sizes = signal_groups(n_signals, chain_size)
        self.mix = nn.Conv1d(n_signals, mix_channels, 1, bias=False)
        self.chains = nn.ModuleList(nn.Conv1d(g, chain_channels, 1, bias=False) for g in self.group_sizes)
        self.out_channels = mix_channels + chain_channels * len(self.group_sizes)
        self.norm = nn.Sequential(nn.BatchNorm1d(self.out_channels), nn.SiLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = torch.split(x, self.group_sizes, dim=1)
        local = [conv(g) for conv, g in zip(self.chains, groups)]
        return self.norm(torch.cat([self.mix(x), *local], dim=1))


class MultiKernelBlock(nn.Module):
    """Strided convs with several kernel sizes in parallel (short kernels see spikes,
    long ones see delta rhythms), concatenated, BN+SiLU, 1x1 fuse, residual, max-pool."""

    def __init__(self, c_in: int, c_out: int, kernel_sizes: Sequence[int], stride: int, pool: int):
        super().__init__()
        n = len(kernel_sizes)
        widths = [c_out // n + (1 if i < c_out % n else 0) for i in range(n)]
        self.branches = nn.ModuleList(
            nn.Conv1d(c_in, w, k, stride=stride, padding=k // 2, bias=False)
            for w, k in zip(widths, kernel_sizes)
        )
        self.act = nn.Sequential(nn.BatchNorm1d(c_out), nn.SiLU(inplace=True))
        self.fuse = nn.Sequential(nn.Conv1d(c_out, c_out, 1, bias=False), nn.BatchNorm1d(c_out))
        self.skip = nn.Sequential(nn.Conv1d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm1d(c_out))
        self.out = nn.Sequential(nn.SiLU(inplace=True), nn.MaxPool1d(pool) if pool > 1 else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(torch.cat([b(x) for b in self.branches], dim=1))
        return self.out(self.fuse(y) + self.skip(x))


@register("conv1d")
class ParallelConv1DNet(nn.Module):
    """Spatial block -> stages of multi-kernel strided convs -> global pool -> head."""

    input_kind = "signal"

    def __init__(
        self,
        n_signals: int = 16,
        chain_size: int = 4,
        mix_channels: int = 32,
        chain_channels: int = 8,
        stage_channels: Sequence[int] = (64, 96, 128, 192),
        kernel_sizes: Sequence[int] = (3, 7, 15, 31),
        strides: Sequence[int] | int = 2,
        pools: Sequence[int] | int = 2,
        pooling: str = "meanmax",
        head_hidden: int = 0,
        drop_rate: float = 0.2,
        n_classes: int = N_CLASSES,
    ):
        super().__init__()
        _check_odd(kernel_sizes)
        n_stages = len(stage_channels)
        strides = [strides] * n_stages if isinstance(strides, int) else list(strides)
        pools = [pools] * n_stages if isinstance(pools, int) else list(pools)
        if not len(strides) == len(pools) == n_stages:
            raise ValueError("strides and pools need one entry per stage_channels entry")
        self.spatial = SpatialBlock(n_signals, chain_size, mix_channels, chain_channels)
        c_in, stages = self.spatial.out_channels, []
        for c_out, s, p in zip(stage_channels, strides, pools):
            stages.append(MultiKernelBlock(c_in, c_out, kernel_sizes, s, p))
            c_in = c_out
        self.temporal = nn.Sequential(*stages)
        self.feature_tap = nn.Identity()
        self.pool, width = _global_pool(pooling, c_in)
        self.head = classifier_head(width, head_hidden, drop_rate, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.feature_tap(self.temporal(self.spatial(x)))
        return self.head(_apply_pool(self.pool, feats))

    def gradcam_target_layer(self) -> nn.Module:
        """Output: the last temporal feature map (B, C, T')."""
        return self.feature_tap


# ----------------------------------------------------------------------------------------
# WaveNet


class WaveBlock(nn.Module):
    """1x1 in-projection, then gated dilated convs (dilation 1, 2, 4, ...) whose outputs
    are summed into a residual stream, as in the public HMS/ventilator WaveNet."""

    def __init__(self, c_in: int, c_out: int, n_dilations: int, kernel_size: int):
        super().__init__()
        self.inp = nn.Conv1d(c_in, c_out, 1)
        dil = [2**i for i in range(n_dilations)]
        pad = [d * (kernel_size - 1) // 2 for d in dil]
        self.filters = nn.ModuleList(nn.Conv1d(c_out, c_out, kernel_size, padding=p, dilation=d)
                                     for d, p in zip(dil, pad))
        self.gates = nn.ModuleList(nn.Conv1d(c_out, c_out, kernel_size, padding=p, dilation=d)
                                   for d, p in zip(dil, pad))
        self.res = nn.ModuleList(nn.Conv1d(c_out, c_out, 1) for _ in dil)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        out = x
        for filt, gate, res in zip(self.filters, self.gates, self.res):
            x = res(torch.tanh(filt(x)) * torch.sigmoid(gate(x)))
            out = out + x
        return out


@register("wavenet")
class WaveNet1D(nn.Module):
    """One WaveNet encoder shared by every pair (B*S, 1, T); pair features are pooled over
    time, averaged within each chain, and the chain vectors concatenated for the head.
    Sharing weights across pairs makes the model indifferent to which hemisphere a
    pattern is on, and the concatenation keeps where it was."""

    input_kind = "signal"

    def __init__(
        self,
        n_signals: int = 16,
        chain_size: int = 4,
        channels: Sequence[int] = (8, 16, 32, 64),
        dilation_levels: Sequence[int] = (12, 8, 4, 1),
        kernel_size: int = 3,
        pool: int = 1,
        norm: bool = True,
        pooling: str = "avg",
        head_hidden: int = 64,
        drop_rate: float = 0.2,
        n_classes: int = N_CLASSES,
    ):
        super().__init__()
        _check_odd([kernel_size])
        if len(channels) != len(dilation_levels):
            raise ValueError("channels and dilation_levels need the same length")
        self.group_sizes = signal_groups(n_signals, chain_size)
        layers, c_in = [], 1
        for i, (c_out, levels) in enumerate(zip(channels, dilation_levels)):
            layers.append(WaveBlock(c_in, c_out, levels, kernel_size))
            if norm:
                layers.append(nn.BatchNorm1d(c_out))
            if pool > 1 and i < len(channels) - 1:
                layers.append(nn.MaxPool1d(pool))
            c_in = c_out
        self.encoder = nn.Sequential(*layers)
        self.feature_tap = nn.Identity()
        self.pool, width = _global_pool(pooling, c_in)
        self.head = classifier_head(width * len(self.group_sizes), head_hidden, drop_rate, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, t = x.shape
        feats = self.feature_tap(self.encoder(x.reshape(b * s, 1, t)))
        pooled = _apply_pool(self.pool, feats).reshape(b, s, -1)
        chains = [g.mean(dim=1) for g in torch.split(pooled, self.group_sizes, dim=1)]
        return self.head(torch.cat(chains, dim=1))

    def gradcam_target_layer(self) -> nn.Module:
        """Output: per-pair feature maps (B * S, C, T'), pairs in input order."""
        return self.feature_tap


# ----------------------------------------------------------------------------------------
# CNN + GRU


class ConvStage(nn.Module):
    """Strided conv that shortens time, then a residual same-length conv."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int):
        super().__init__()
        self.down = conv_bn_act(c_in, c_out, kernel_size, stride=stride)
        self.body = nn.Sequential(
            nn.Conv1d(c_out, c_out, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm1d(c_out),
        )
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        return self.act(x + self.body(x))


class AttentionPool(nn.Module):
    """Softmax-weighted mean over time: lets a few seconds of discharge dominate."""

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, max(dim // 2, 1)), nn.Tanh(), nn.Linear(max(dim // 2, 1), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, D)
        weights = torch.softmax(self.score(x).float(), dim=1).to(x.dtype)
        return (weights * x).sum(dim=1)


@register("cnn_gru")
class CNNGRU(nn.Module):
    """Conv feature extractor (time / prod(strides)) -> bidirectional GRU or LSTM ->
    attention or mean+max pooling over time -> head."""

    input_kind = "signal"

    def __init__(
        self,
        n_signals: int = 16,
        channels: Sequence[int] = (32, 64, 128),
        kernel_size: int = 7,
        strides: Sequence[int] | int = 4,
        rnn: str = "gru",
        hidden: int = 128,
        rnn_layers: int = 2,
        bidirectional: bool = True,
        pooling: str = "attention",
        head_hidden: int = 0,
        drop_rate: float = 0.2,
        n_classes: int = N_CLASSES,
    ):
        super().__init__()
        _check_odd([kernel_size])
        strides = [strides] * len(channels) if isinstance(strides, int) else list(strides)
        if len(strides) != len(channels):
            raise ValueError("strides need one entry per channels entry")
        if rnn not in ("gru", "lstm"):
            raise ValueError(f"rnn {rnn!r} not in ('gru', 'lstm')")
        if pooling not in ("attention", "meanmax"):
            raise ValueError(f"pooling {pooling!r} not in ('attention', 'meanmax')")
        stages, c_in = [], n_signals
        for c_out, s in zip(channels, strides):
            stages.append(ConvStage(c_in, c_out, kernel_size, s))
            c_in = c_out
        self.features = nn.Sequential(*stages)
        self.feature_tap = nn.Identity()
        rnn_cls = nn.GRU if rnn == "gru" else nn.LSTM
        self.rnn = rnn_cls(c_in, hidden, num_layers=rnn_layers, batch_first=True,
                           bidirectional=bidirectional, dropout=drop_rate if rnn_layers > 1 else 0.0)
        dim = hidden * (2 if bidirectional else 1)
        self.attention = AttentionPool(dim) if pooling == "attention" else None
        width = dim if pooling == "attention" else 2 * dim
        self.head = classifier_head(width, head_hidden, drop_rate, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.feature_tap(self.features(x))  # (B, C, T')
        seq, _ = self.rnn(feats.transpose(1, 2))  # (B, T', D)
        pooled = self.attention(seq) if self.attention is not None else mean_max_pool1d(seq.transpose(1, 2))
        return self.head(pooled)

    def gradcam_target_layer(self) -> nn.Module:
        """Output: the conv extractor's feature map (B, C, T') fed to the RNN."""
        return self.feature_tap
