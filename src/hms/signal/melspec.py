"""Log-mel spectrograms in torch, numerically matching librosa.

`TorchMelSpectrogram` reproduces

    S = librosa.feature.melspectrogram(y=x, sr=sr, n_fft=n_fft, hop_length=hop,
                                       win_length=win_length, n_mels=n_mels,
                                       fmin=fmin, fmax=fmax)   # power=2, center=True,
                                                              # pad_mode='constant', hann
    librosa.power_to_db(S, ref=np.max, top_db=top_db)

for every trailing signal of a batch, on whatever device the module lives on. It exists
so that spectrograms of the 16 bipolar pairs can be made on the GPU inside the model
(CPU librosa was the bottleneck users reported) while librosa stays the reference.

torchaudio's MelSpectrogram + AmplitudeToDB (3rd place's MixNet) is the same module with
mel_scale="htk", norm=None, pad_mode="reflect" and reference="absolute" (dB re power 1,
librosa.power_to_db(ref=1.0)): its defaults, which librosa reaches with htk=True, norm=None,
pad_mode="reflect".
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


AMIN = 1e-10  # librosa.power_to_db's default floor before log10
# Slaney's mel scale: 200/3 Hz per mel up to 1 kHz, then log-spaced with 27 mels per factor 6.4
SLANEY_HZ_PER_MEL = 200.0 / 3
SLANEY_LOG_HZ = 1000.0
SLANEY_LOG_MEL = SLANEY_LOG_HZ / SLANEY_HZ_PER_MEL
SLANEY_LOG_STEP = np.log(6.4) / 27.0
# ~4k frames per CPU chunk: a chunk's DFT output (<1 MB) stays in a core's L2 cache
# (2k-4k measured fastest for 50 s EEGs on a 2-core CPU; 64k, a whole EEG batch, 1.5x slower)
CPU_CHUNK_FRAMES = 4096
# filters up to this many bins wide go through a banded sum (2 bins for the starter's 128 mels:
# 1.3x faster); wider ones (5-7 bins for 32-64 mels) through the dense matmul, faster there
MAX_BAND = 4


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, log above."""
    hz = np.asarray(hz, np.float64)
    linear = hz / SLANEY_HZ_PER_MEL
    with np.errstate(divide="ignore"):  # log(0) in the branch np.where discards
        log = SLANEY_LOG_MEL + np.log(hz / SLANEY_LOG_HZ) / SLANEY_LOG_STEP
    return np.where(hz >= SLANEY_LOG_HZ, log, linear)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, np.float64)
    log = SLANEY_LOG_HZ * np.exp(SLANEY_LOG_STEP * (mel - SLANEY_LOG_MEL))
    return np.where(mel >= SLANEY_LOG_MEL, log, mel * SLANEY_HZ_PER_MEL)


def htk_hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """HTK's mel scale (torchaudio's default, librosa's htk=True): 2595 log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def htk_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


MEL_SCALES = {"slaney": (hz_to_mel, mel_to_hz), "htk": (htk_hz_to_mel, htk_mel_to_hz)}
MEL_NORMS = ("slaney", None)
PAD_MODES = ("constant", "reflect")  # librosa's default | torchaudio's default
REFERENCES = ("max", "absolute")  # librosa ref=np.max | ref=1.0 (torchaudio AmplitudeToDB)


def mel_filter_bank(sr: float, n_fft: int, n_mels: int, fmin: float, fmax: float,
                    mel_scale: str = "slaney", norm: str | None = "slaney") -> torch.Tensor:
    """librosa.filters.mel(htk=mel_scale == "htk", norm=norm), (n_mels, n_fft // 2 + 1), float32.

    Written out here because importing librosa costs ~2 s, paid by every model build and by
    the viewer's first view; tests hold it to librosa's own bank."""
    if mel_scale not in MEL_SCALES:
        raise ValueError(f"mel_scale {mel_scale!r} not in {tuple(MEL_SCALES)}")
    if norm not in MEL_NORMS:
        raise ValueError(f"mel norm {norm!r} not in {MEL_NORMS}")
    to_mel, to_hz = MEL_SCALES[mel_scale]
    fft_hz = np.fft.rfftfreq(n_fft, d=1.0 / sr)
    edges = to_hz(np.linspace(to_mel(fmin), to_mel(fmax), n_mels + 2))  # n_mels triangles
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    if norm == "slaney":
        weights *= 2.0 / (edges[2:] - edges[:-2])[:, None]  # constant energy per filter
    return torch.from_numpy(weights)


def power_to_db(power: torch.Tensor, top_db: float | None = 80.0, inplace: bool = False,
                reference: str = "max") -> torch.Tensor:
    """librosa.power_to_db per spectrogram (max over the last two axes), ref=np.max
    (reference "max": the loudest bin is 0 dB) or ref=1.0 ("absolute": dB re power 1, the
    floor top_db below the spectrogram's own max, values not shifted).
    inplace=True overwrites `power` (the mel path owns a fresh tensor); inplace=False
    stays differentiable."""
    if reference not in REFERENCES:
        raise ValueError(f"dB reference {reference!r} not in {REFERENCES}")
    if inplace:
        db = power.clamp_min_(AMIN).log10_().mul_(10.0)
    else:
        db = power.clamp(min=AMIN).log10() * 10.0
    if reference == "max":
        peak = db.amax(dim=(-2, -1), keepdim=True)
        db = db.sub_(peak) if inplace else db - peak
        if top_db is None:
            return db
        return db.clamp_min_(-float(top_db)) if inplace else db.clamp(min=-float(top_db))
    return db if top_db is None else floor_db(db, top_db, dims=(-2, -1), inplace=inplace)


def floor_db(db: torch.Tensor, top_db: float, dims: tuple[int, ...], inplace: bool = False) -> torch.Tensor:
    """top_db's floor on dB: every value at least (max over `dims`) - top_db."""
    floor = db.amax(dim=dims, keepdim=True) - float(top_db)
    return torch.maximum(db, floor, out=db) if inplace else torch.maximum(db, floor)


def mel_band(fb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_mels, width) bin indices and weights of each filter's consecutive nonzero bins.

    Mel filters are triangles a few bins wide (at most 2 for the starter's 128 mels over
    0-20 Hz), so a sum over those bins costs a fraction of the dense (n_mels x bins) matmul.
    Filters narrower than the widest are padded with zero weights."""
    nonzero = fb > 0
    width = max(int(nonzero.sum(1).max()), 1)
    first = nonzero.float().argmax(1)
    offsets = first[:, None] + torch.arange(width)
    inside = offsets < fb.shape[1]
    bins = offsets.clamp(max=fb.shape[1] - 1)
    weights = torch.gather(fb, 1, bins) * inside
    return bins, weights.contiguous()


class TorchMelSpectrogram(nn.Module):
    """(..., T) signals -> (..., n_mels, frames) log-mel power in dB (max = 0 dB, or dB re
    power 1 with reference="absolute").

    The numbers (rate, STFT, mels, band, floor) have no defaults here: each kind states its own
    once (base.yaml's `mel:` for the 2D image and the viewer, timm_mel's model keys), and sr is
    the rate of the signals fed (200 Hz / input.downsample). hop_length, when None, is
    T // hop_divisor at call time (the starter's len//256), so the same module serves 50 s and
    shorter crops. frames = 1 + T // hop.
    mel_scale, norm: librosa.filters.mel's htk and norm; pad_mode: what the centred frames
    see past the ends (librosa: constant zeros, torchaudio: reflect). These default to librosa's,
    the reference this module reproduces.
    """

    def __init__(
        self,
        *,
        sr: float,
        n_fft: int,
        win_length: int,
        n_mels: int,
        fmin: float,
        fmax: float,
        top_db: float | None,
        hop_length: int | None = None,
        hop_divisor: int | None = None,
        to_db: bool = True,
        mel_scale: str = "slaney",
        norm: str | None = "slaney",
        pad_mode: str = "constant",
        reference: str = "max",
    ):
        super().__init__()
        if hop_length is None and hop_divisor is None:
            raise ValueError("a mel spectrogram needs hop_length or hop_divisor (hop = T // hop_divisor)")
        if win_length > n_fft:
            raise ValueError(f"win_length ({win_length}) must be <= n_fft ({n_fft})")
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode {pad_mode!r} not in {PAD_MODES}")
        if reference not in REFERENCES:
            raise ValueError(f"dB reference {reference!r} not in {REFERENCES}")
        self.n_fft, self.win_length = n_fft, win_length
        self.hop_length, self.hop_divisor = hop_length, hop_divisor
        self.top_db, self.to_db = top_db, to_db
        self.pad_mode, self.reference = pad_mode, reference
        # periodic Hann == scipy get_window('hann', fftbins=True), which librosa uses;
        # torch.stft centres it inside n_fft exactly like librosa.util.pad_center
        self.register_buffer("window", torch.hann_window(win_length, periodic=True), persistent=False)
        fb = mel_filter_bank(sr, n_fft, n_mels, fmin, fmax, mel_scale, norm)
        # With fmax=20 Hz only ~1/5 of the n_fft//2+1 bins carry weight; dropping the
        # all-zero tail makes the (n_mels x bins) @ (bins x frames) product 5x cheaper.
        nonzero = torch.nonzero(fb.abs().sum(dim=0) > 0)
        self.n_bins = int(nonzero.max()) + 1 if len(nonzero) else fb.shape[1]
        self.register_buffer("mel_fb", fb[:, : self.n_bins].contiguous(), persistent=False)
        dft_even, dft_odd = self._folded_dft()
        # transposed once here so the DFT lands as (bins, frames), the layout the mel step wants
        self.register_buffer("dft_even", dft_even.T.contiguous(), persistent=False)
        self.register_buffer("dft_odd", dft_odd.T.contiguous(), persistent=False)
        band_bins, band_weights = mel_band(self.mel_fb)
        self.register_buffer("band_bins", band_bins, persistent=False)
        self.register_buffer("band_weights", band_weights, persistent=False)

    def _folded_dft(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Hann-windowed cos and sin tables, (win_length - first, n_bins) each, of the n_fft-point
        DFT for the bins the mel bank uses, folded about the window's centre.

        Why band-limited: the window is zero outside its win_length samples centred in n_fft,
        so a DFT over those samples equals the STFT's kept bins (up to a phase that power
        ignores) at a fraction of a zero-padded n_fft FFT's cost.
        Why folded: the periodic Hann window is symmetric (w[n] == w[N - n], w[0] == 0), so
        with phases measured from the centre N/2, sample pairs (n, N - n) share one cosine
        and opposite sines. Adding and subtracting the pairs first halves the multiply-adds."""
        n_win = self.win_length
        n = torch.arange(self.first_folded, n_win, dtype=torch.float64)
        k = torch.arange(self.n_bins, dtype=torch.float64)
        phase = 2 * torch.pi * (n[:, None] - n_win / 2) * k[None, :] / self.n_fft
        w = self.window.double()[self.first_folded:, None]
        cos, sin = w * torch.cos(phase), w * torch.sin(phase)
        if n_win % 2 == 0:
            cos[0] /= 2  # the centre sample pairs with itself: it appears twice in the sum
        return cos.float(), sin.float()

    @property
    def first_folded(self) -> int:
        """First window index of the folded half: the centre for even lengths."""
        return (self.win_length + 1) // 2

    def hop_for(self, n_samples: int) -> int:
        hop = self.hop_length or n_samples // self.hop_divisor
        if hop < 1:
            raise ValueError(
                f"signal of {n_samples} samples is too short for hop_divisor={self.hop_divisor}"
            )
        return hop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., T) signals -> (..., n_mels, frames) dB."""
        return self.mean_db(x.unsqueeze(-2), group=1).squeeze(-3)

    def mean_db(self, x: torch.Tensor, group: int) -> torch.Tensor:
        """(..., S, T) -> (..., S // group, n_mels, frames): the mean dB of each run of `group`
        consecutive signals (the starter averages the 4 pairs of a chain)."""
        *lead, n_signals, n_samples = x.shape
        if n_signals % group:
            raise ValueError(f"{n_signals} signals do not split into groups of {group}")
        hop = self.hop_for(n_samples)
        # STFT in fp32 even under autocast: fp16 FFTs lose the quiet mel bins
        with torch.autocast(device_type=x.device.type, enabled=False):
            flat = x.reshape(-1, n_samples).float()
            if x.requires_grad or not self._fusable(group):
                db = self._log_mel(flat, hop)
                out = db.unflatten(0, (-1, group)).mean(1)
            else:
                out = self._fused_mean_db(flat, hop, group)
        return out.reshape(*lead, n_signals // group, *out.shape[-2:])

    def _fusable(self, group: int) -> bool:
        """Whether a product of `group` floored relative powers stays a normal float32 (each is
        >= 10 ** (-top_db / 10); float32 normals reach 1.2e-38)."""
        return self.to_db and self.reference == "max" and self.top_db is not None \
            and group * float(self.top_db) / 10.0 < 37

    def _log_mel(self, x: torch.Tensor, hop: int) -> torch.Tensor:
        mel = self._mel_power(x, hop)
        if not self.to_db:
            return mel
        return power_to_db(mel, self.top_db, inplace=not x.requires_grad, reference=self.reference)

    def _fused_mean_db(self, x: torch.Tensor, hop: int, group: int) -> torch.Tensor:
        """Mean dB of signal groups without a log per signal.

        With max-referencing and the top_db floor, a signal's dB is 10 * log10(q) with
        q = max(max(p, amin) / max(p_max, amin), 10 ** (-top_db / 10)) in [1e-8, 1], so the mean
        over a group is 10 / group * log10(product of q): one log per group. On a CPU a few
        groups go at a time so frames, DFT and mel power stay in cache (a whole batch would
        be hundreds of MB of memory traffic); a GPU takes the batch at once."""
        n_groups, n_frames = x.shape[0] // group, 1 + x.shape[-1] // hop
        out = x.new_empty(n_groups, self.mel_fb.shape[0], n_frames)
        step = max(1, CPU_CHUNK_FRAMES // (n_frames * group)) if x.device.type == "cpu" else n_groups
        floor = 10.0 ** (-float(self.top_db) / 10.0)
        for g in range(0, n_groups, step):
            q = self._mel_power(x[g * group: (g + step) * group], hop).clamp_min_(AMIN)
            q = q.div_(q.amax(dim=(-2, -1), keepdim=True)).clamp_min_(floor)
            torch.log10(q.unflatten(0, (-1, group)).prod(1), out=out[g: g + step]).mul_(10.0 / group)
        return out

    def _mel_power(self, x: torch.Tensor, hop: int) -> torch.Tensor:
        """(N, T) -> (N, n_mels, 1 + T // hop frames) mel power. Frames follow librosa's
        center=True STFT: frame j's window covers samples j*hop - lead onwards
        (zeros past the ends)."""
        n_win, first = self.win_length, self.first_folded
        if self.pad_mode == "reflect":  # torchaudio: reflect n_fft//2 each side, window centred
            padded = torch.nn.functional.pad(x.unsqueeze(1), (self.n_fft // 2,) * 2, mode="reflect")
            padded = padded[:, 0, (self.n_fft - n_win) // 2:]
        else:
            lead = self.n_fft // 2 - (self.n_fft - n_win) // 2  # librosa: pad n_fft//2, window centred
            padded = torch.nn.functional.pad(x, (lead, lead + n_win))
        n_frames = 1 + x.shape[-1] // hop
        frames = padded.unfold(-1, n_win, hop)[:, :n_frames]  # (N, frames, win): a view
        upper = frames[..., first:]  # samples N/2 + m ...
        lower = frames[..., 1: n_win - first + 1].flip(-1)  # ... and their mirrors N/2 - m
        real = torch.matmul(self.dft_even, (upper + lower).transpose(1, 2))
        imag = torch.matmul(self.dft_odd, (upper - lower).transpose(1, 2))
        power = real.square() + imag.square()  # (N, n_bins, frames)
        if self.band_bins.shape[1] > MAX_BAND:
            return torch.matmul(self.mel_fb, power)
        mel = power.index_select(1, self.band_bins[:, 0]) * self.band_weights[:, 0, None]
        for j in range(1, self.band_bins.shape[1]):
            mel = torch.addcmul(mel, power.index_select(1, self.band_bins[:, j]), self.band_weights[:, j, None])
        return mel

    def extra_repr(self) -> str:
        hop = self.hop_length or f"T//{self.hop_divisor}"
        return (f"n_fft={self.n_fft}, win_length={self.win_length}, hop={hop}, "
                f"n_mels={self.mel_fb.shape[0]}, top_db={self.top_db}, reference={self.reference}, "
                f"pad_mode={self.pad_mode}")
