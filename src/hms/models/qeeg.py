"""Fixed quantitative-EEG features of the cleaned 50 s window: what a clinician reads off a
montage, as numbers a gradient-boosted tree model can split on (models/trees.py).

Per signal (12 numbers): log total power in 0.5-20 Hz; the log share of each band (slow delta
0.5-2, delta 2-4, theta 4-8, alpha 8-13, beta 13-20 Hz); log line length; log power of the
central 10 s (the part the label describes) over the window's; periodicity (peak of the
amplitude envelope's autocorrelation at 0.3-4 s lags, and that lag in seconds: periodic
discharges repeat every 0.5-3 s); log kurtosis (sharp discharges); spectral centroid (Hz).
They are then summarised the ways the classes differ (ACNS terms):
  location    their mean over each chain (LL, RL, LP, RP, and midline/EKG when present)
  laterality  |left - right| (LL+LP against RL+RP)
  spread      their standard deviation over the 16 double-banana signals
  synchrony   mean |correlation| over all pairs of the 16, and between mirrored LL/RL pairs
Computed in float64 (trees compare them with exact thresholds), never under autocast.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hms.data import schema

BANDS_HZ: tuple[tuple[str, float, float], ...] = (
    ("slow_delta", 0.5, 2.0), ("delta", 2.0, 4.0), ("theta", 4.0, 8.0), ("alpha", 8.0, 13.0), ("beta", 13.0, 20.0))
PER_SIGNAL: tuple[str, ...] = ("log_power", *(f"log_share_{b}" for b, _, _ in BANDS_HZ), "log_line_length",
                               "log_centre_power", "periodicity", "period_s", "log_kurtosis", "centroid_hz")
CENTRE_SECONDS = schema.EEG_CENTER_SECONDS
PERIOD_LAGS_S = (0.3, 4.0)
ENVELOPE_SECONDS = 0.1  # the moving average smoothing |x| before its autocorrelation
EPS = 1e-9
N_BIPOLAR = len(schema.BIPOLAR_NAMES)
MIRROR_SIGNALS = schema.MIRROR_SIGNALS


def chain_signals(chain: str) -> list[int]:
    """Positions of a chain's 4 pairs among the 16 double-banana signals."""
    start = schema.CHAIN_NAMES.index(chain) * schema.PAIRS_PER_CHAIN
    return list(range(start, start + schema.PAIRS_PER_CHAIN))


LEFT_SIGNALS = chain_signals("LL") + chain_signals("LP")
RIGHT_SIGNALS = [MIRROR_SIGNALS[i] for i in LEFT_SIGNALS]  # the same pairs' mirrors, in order
TEMPORAL_LEFT = chain_signals("LL")  # against its mirror RL for synchrony
TEMPORAL_RIGHT = [MIRROR_SIGNALS[i] for i in TEMPORAL_LEFT]


def location_groups(signal_names: list[str]) -> list[tuple[str, list[int]]]:
    """(name, signal positions) of each location group: the 4 chains, then the extras."""
    groups = [(c, chain_signals(c)) for c in schema.CHAIN_NAMES]
    midline = [i for i, n in enumerate(signal_names) if n in {f"{a}-{b}" for a, b in schema.MIDLINE_PAIRS}]
    if midline:
        groups.append(("midline", midline))
    if schema.EKG_CHANNEL in signal_names:
        groups.append(("ekg", [signal_names.index(schema.EKG_CHANNEL)]))
    return groups


class EEGFeatures(nn.Module):
    """(B, S, T) cleaned signals at `fs` Hz, the 16 double-banana ones first -> (B, n_features)
    float64; `names` labels each column."""

    def __init__(self, signal_names: list[str], fs: float):
        super().__init__()
        if list(signal_names[:N_BIPOLAR]) != list(schema.BIPOLAR_NAMES):
            raise ValueError(f"EEGFeatures needs the 16 double-banana signals first, got {signal_names[:N_BIPOLAR]}")
        self.fs, self.groups = float(fs), location_groups(list(signal_names))
        self.names = ([f"{g}_{f}" for g, _ in self.groups for f in PER_SIGNAL]
                      + [f"asym_{f}" for f in PER_SIGNAL] + [f"spread_{f}" for f in PER_SIGNAL]
                      + ["sync_all", "sync_left_right"])

    @property
    def n_features(self) -> int:
        return len(self.names)

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=signal.device.type, enabled=False):
            x = signal.double()
            per = self.per_signal(x)  # (B, S, 12)
            location = [per[:, idx].mean(1) for _, idx in self.groups]
            asym = (per[:, LEFT_SIGNALS].mean(1) - per[:, RIGHT_SIGNALS].mean(1)).abs()
            spread = per[:, :N_BIPOLAR].std(1, unbiased=False)
            return torch.cat([*location, asym, spread, self.synchrony(x[:, :N_BIPOLAR])], dim=1)

    def per_signal(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-1]
        hz = torch.fft.rfftfreq(n, 1 / self.fs, device=x.device, dtype=x.dtype)
        window = torch.hann_window(n, periodic=False, dtype=x.dtype, device=x.device)
        power = torch.fft.rfft(x * window).abs().square()
        bands = torch.stack([power[..., (hz >= lo) & (hz < hi)].sum(-1) for _, lo, hi in BANDS_HZ], -1) + EPS
        total = bands.sum(-1)
        in_range = (hz >= BANDS_HZ[0][1]) & (hz < BANDS_HZ[-1][2])
        centroid = (power[..., in_range] * hz[in_range]).sum(-1) / (power[..., in_range].sum(-1) + EPS)
        half = int(round(CENTRE_SECONDS * self.fs / 2))
        centre = x[..., n // 2 - half: n // 2 + half]
        centre_power = torch.log(centre.square().mean(-1) + EPS) - torch.log(x.square().mean(-1) + EPS)
        line_length = torch.log(x.diff(dim=-1).abs().mean(-1) + EPS)
        centred = x - x.mean(-1, keepdim=True)
        var = centred.square().mean(-1)
        kurtosis = torch.log(centred.pow(4).mean(-1) / (var.square() + EPS) + EPS)
        periodicity, period = self.periodicity(x)
        return torch.stack([torch.log(total), *torch.log(bands / total[..., None]).unbind(-1), line_length,
                            centre_power, periodicity, period, kurtosis, centroid], dim=-1)

    def periodicity(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Peak normalised autocorrelation of the smoothed amplitude envelope over PERIOD_LAGS_S,
        and its lag in seconds."""
        b, s, n = x.shape
        k = max(1, int(round(ENVELOPE_SECONDS * self.fs)) | 1)  # odd: a centred moving average
        env = F.conv1d(x.abs().reshape(b * s, 1, n), torch.full((1, 1, k), 1 / k, dtype=x.dtype, device=x.device),
                       padding=k // 2).reshape(b, s, n)
        env = env - env.mean(-1, keepdim=True)
        spectrum = torch.fft.rfft(env, n=2 * n)
        acf = torch.fft.irfft(spectrum.abs().square(), n=2 * n)[..., :n]
        acf = acf / (acf[..., :1] + EPS)
        lo, hi = (int(t * self.fs) for t in PERIOD_LAGS_S)
        peak, lag = acf[..., lo:hi].max(-1)
        return peak, (lag + lo).to(x.dtype) / self.fs

    @staticmethod
    def synchrony(x: torch.Tensor) -> torch.Tensor:
        z = (x - x.mean(-1, keepdim=True)) / (x.std(-1, unbiased=False, keepdim=True) + EPS)
        corr = (z @ z.transpose(1, 2) / x.shape[-1]).abs()  # (B, 16, 16)
        upper = torch.triu_indices(x.shape[1], x.shape[1], offset=1, device=x.device)
        pairs = corr[:, upper[0], upper[1]].mean(1)
        left_right = corr[:, TEMPORAL_LEFT, TEMPORAL_RIGHT].mean(1)
        return torch.stack([pairs, left_right], dim=1)
