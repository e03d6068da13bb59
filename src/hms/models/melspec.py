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
"""
from __future__ import annotations

import torch
from torch import nn

from hms.data.schema import SAMPLING_RATE

AMIN = 1e-10  # librosa.power_to_db's default floor before log10


def mel_filter_bank(sr: float, n_fft: int, n_mels: int, fmin: float, fmax: float) -> torch.Tensor:
    """librosa's Slaney-style mel filter bank, (n_mels, n_fft // 2 + 1), float32."""
    import librosa  # lazy: librosa's import is slow and only needed once per model

    fb = librosa.filters.mel(
        sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=False, norm="slaney"
    )
    return torch.from_numpy(fb).float()


def power_to_db(power: torch.Tensor, top_db: float | None = 80.0, inplace: bool = False) -> torch.Tensor:
    """librosa.power_to_db(ref=np.max) per spectrogram (max over the last two axes).
    inplace=True reuses `power`'s memory (the mel path owns a fresh tensor)."""
    db = power.clamp_min_(AMIN) if inplace else power.clamp(min=AMIN)
    db = db.log10_().mul_(10.0)
    db = db.sub_(db.amax(dim=(-2, -1), keepdim=True))  # ref=np.max: the loudest bin is 0 dB
    if top_db is not None:
        db = db.clamp_min_(-float(top_db))  # after max-referencing, max - top_db == -top_db
    return db


class TorchMelSpectrogram(nn.Module):
    """(..., T) signals -> (..., n_mels, frames) log-mel power in dB (max = 0 dB).

    hop_length, when None, is T // hop_divisor at call time (the starter's len//256),
    so the same module serves 50 s and shorter crops. frames = 1 + T // hop.
    """

    def __init__(
        self,
        sr: float = SAMPLING_RATE,
        n_fft: int = 1024,
        win_length: int = 128,
        hop_length: int | None = None,
        hop_divisor: int = 256,
        n_mels: int = 128,
        fmin: float = 0.0,
        fmax: float = 20.0,
        top_db: float | None = 80.0,
        to_db: bool = True,
    ):
        super().__init__()
        if win_length > n_fft:
            raise ValueError(f"win_length ({win_length}) must be <= n_fft ({n_fft})")
        self.n_fft, self.win_length = n_fft, win_length
        self.hop_length, self.hop_divisor = hop_length, hop_divisor
        self.top_db, self.to_db = top_db, to_db
        # periodic Hann == scipy get_window('hann', fftbins=True), which librosa uses;
        # torch.stft centres it inside n_fft exactly like librosa.util.pad_center
        self.register_buffer("window", torch.hann_window(win_length, periodic=True), persistent=False)
        fb = mel_filter_bank(sr, n_fft, n_mels, fmin, fmax)
        # With fmax=20 Hz only ~1/5 of the n_fft//2+1 bins carry weight; dropping the
        # all-zero tail makes the (n_mels x bins) @ (bins x frames) product 5x cheaper.
        nonzero = torch.nonzero(fb.abs().sum(dim=0) > 0)
        self.n_bins = int(nonzero.max()) + 1 if len(nonzero) else fb.shape[1]
        self.register_buffer("mel_fb", fb[:, : self.n_bins].contiguous(), persistent=False)
        self.register_buffer("dft", self._windowed_dft(), persistent=False)

    def _windowed_dft(self) -> torch.Tensor:
        """(win_length, 2 * n_bins): Hann-windowed cos/sin rows of the n_fft-point DFT for the
        bins the mel bank uses. The window is zero outside its win_length samples centred in
        n_fft, so this band-limited DFT equals the STFT's kept bins (up to a phase that power
        ignores) at a fraction of the cost of a zero-padded n_fft FFT."""
        n = torch.arange(self.win_length, dtype=torch.float64) + (self.n_fft - self.win_length) // 2
        k = torch.arange(self.n_bins, dtype=torch.float64)
        phase = 2 * torch.pi * n[:, None] * k[None, :] / self.n_fft
        w = self.window.double()[:, None]
        return torch.cat([w * torch.cos(phase), w * torch.sin(phase)], dim=1).float()

    def hop_for(self, n_samples: int) -> int:
        hop = self.hop_length or n_samples // self.hop_divisor
        if hop < 1:
            raise ValueError(
                f"signal of {n_samples} samples is too short for hop_divisor={self.hop_divisor}"
            )
        return hop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead, n_samples = x.shape[:-1], x.shape[-1]
        hop = self.hop_for(n_samples)
        # STFT in fp32 even under autocast: fp16 FFTs lose the quiet mel bins
        with torch.autocast(device_type=x.device.type, enabled=False):
            mel = self._mel_power(x.reshape(-1, n_samples).float(), hop)  # (N, mels, frames)
            out = power_to_db(mel, self.top_db, inplace=True) if self.to_db else mel
        return out.reshape(*lead, *out.shape[-2:])

    def _mel_power(self, x: torch.Tensor, hop: int) -> torch.Tensor:
        """(N, T) -> (N, n_mels, 1 + T // hop frames) mel power. Frames follow librosa's
        center=True STFT: frame j's window covers samples j*hop - win_length//2 onwards
        (zeros past the ends)."""
        half = self.win_length // 2
        padded = torch.nn.functional.pad(x, (half, half + self.win_length))
        n_frames = 1 + x.shape[-1] // hop
        frames = padded.unfold(-1, self.win_length, hop)[:, :n_frames]  # (N, frames, win)
        spec = (frames @ self.dft).square_()  # (N, frames, 2 * n_bins): re^2, im^2
        power = spec[..., : self.n_bins].add_(spec[..., self.n_bins:])
        return torch.matmul(self.mel_fb, power.transpose(1, 2))  # strided view: no copy

    def extra_repr(self) -> str:
        hop = self.hop_length or f"T//{self.hop_divisor}"
        return (f"n_fft={self.n_fft}, win_length={self.win_length}, hop={hop}, "
                f"n_mels={self.mel_fb.shape[0]}, top_db={self.top_db}")
