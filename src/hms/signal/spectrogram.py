"""EEG mel spectrograms: the batched torch path (CPU or GPU) and the librosa reference the
tests and the benchmark compare it with. Panels follow the starter recipe: one mel
spectrogram per bipolar pair, max-referenced dB, (dB + 40) / 40, averaged per chain."""
from __future__ import annotations

import numpy as np
import torch

from hms.data import schema
from hms.signal.melspec import TorchMelSpectrogram

MEL_KEYS = ("n_fft", "win_length", "hop_divisor", "n_mels", "fmin", "fmax", "top_db")


def mel_module(mel_cfg, sr: float = schema.SAMPLING_RATE) -> TorchMelSpectrogram:
    """TorchMelSpectrogram from the config's `mel` section for signals sampled at sr: the raw
    200 Hz windows the viewer, the report and the bench draw, or the model's 200 / input.downsample
    (the section's sr is null: derived by the network, models.network.fed_rate)."""
    return TorchMelSpectrogram(sr=sr, **{k: mel_cfg[k] for k in MEL_KEYS})


def chain_panels(signals: torch.Tensor, module: TorchMelSpectrogram, width: int) -> torch.Tensor:
    """(B, 16, T) bipolar signals -> (B, 4 chains, mels, width): each chain's mean dB over its
    pairs, scaled as the starter did, low frequencies in row 0."""
    return scale_panels(module.mean_db(signals, schema.PAIRS_PER_CHAIN), width)


def scale_panels(chain_db: torch.Tensor, width: int) -> torch.Tensor:
    """The starter's (dB + 40) / 40 on the first `width` frames of per-chain mean dB."""
    return chain_db[..., :width].add(40.0).div_(40.0)


def centre_crop(signal: torch.Tensor, seconds: float, sr: float = schema.SAMPLING_RATE) -> torch.Tensor:
    """The central `seconds` of (..., T) signals sampled at sr (the labelled 10 s, zoomed)."""
    n = int(seconds * sr)
    start = (signal.shape[-1] - n) // 2
    return signal[..., start: start + n]


@torch.no_grad()
def eeg_panels(signals: np.ndarray | torch.Tensor, mel_cfg, device: str = "cpu",
               module: TorchMelSpectrogram | None = None) -> torch.Tensor:
    """(B, >=16, T) bipolar signals -> (B, 4, n_mels, width) panels on `device`."""
    x = torch.as_tensor(signals, dtype=torch.float32, device=device)[:, : len(schema.BIPOLAR_PAIRS)]
    module = (module or mel_module(mel_cfg)).to(device)
    return chain_panels(x, module, int(mel_cfg["width"]))


def librosa_reference(signals: np.ndarray, mel_cfg) -> np.ndarray:
    """The same panels with librosa, one pair at a time, as the starter notebook did."""
    import librosa

    b, _, t = signals.shape
    hop = t // int(mel_cfg["hop_divisor"])
    out = []
    for x in signals[:, : len(schema.BIPOLAR_PAIRS)].reshape(-1, t):
        mel = librosa.feature.melspectrogram(
            y=x.astype(np.float32), sr=schema.SAMPLING_RATE, n_fft=int(mel_cfg["n_fft"]), hop_length=hop,
            win_length=int(mel_cfg["win_length"]), n_mels=int(mel_cfg["n_mels"]),
            fmin=float(mel_cfg["fmin"]), fmax=float(mel_cfg["fmax"]), pad_mode="constant")
        out.append(librosa.power_to_db(mel, ref=np.max, top_db=float(mel_cfg["top_db"])))
    db = np.stack(out).reshape(b, len(schema.CHAIN_NAMES), schema.PAIRS_PER_CHAIN, *out[0].shape)
    return scale_panels(torch.from_numpy(db.mean(2)), int(mel_cfg["width"])).numpy()
