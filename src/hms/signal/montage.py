"""Bipolar montages built from the schema's chains (never respelled here)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hms.data import schema

EXTRAS = ("midline", "ekg")


def montage_names(extras: Sequence[str] = ()) -> list[str]:
    """Signal names in output order: the 16 double-banana pairs, then requested extras."""
    unknown = [e for e in extras if e not in EXTRAS]
    if unknown:
        raise ValueError(f"unknown montage extras {unknown}; allowed: {list(EXTRAS)}")
    names = list(schema.BIPOLAR_NAMES)
    if "midline" in extras:
        names += [f"{a}-{b}" for a, b in schema.MIDLINE_PAIRS]
    if "ekg" in extras:
        names.append(schema.EKG_CHANNEL)
    return names


def _index_pairs(extras: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    pairs = list(schema.BIPOLAR_PAIRS)
    if "midline" in extras:
        pairs += list(schema.MIDLINE_PAIRS)
    idx = {c: i for i, c in enumerate(schema.EEG_CHANNELS)}
    anode = np.array([idx[a] for a, _ in pairs])
    cathode = np.array([idx[b] for _, b in pairs])
    return anode, cathode


def bipolar(eeg: np.ndarray, extras: Sequence[str] = ()) -> np.ndarray:
    """(..., n_samples, 20 channels in schema order) -> (..., n_signals, n_samples) float32."""
    montage_names(extras)  # validates extras
    if eeg.shape[-1] != len(schema.EEG_CHANNELS):
        raise ValueError(f"expected {len(schema.EEG_CHANNELS)} channels last, got shape {eeg.shape}")
    anode, cathode = _index_pairs(extras)
    out = eeg[..., anode] - eeg[..., cathode]
    if "ekg" in extras:
        ekg = eeg[..., [schema.EEG_CHANNELS.index(schema.EKG_CHANNEL)]]
        out = np.concatenate([out, ekg], axis=-1)
    return np.swapaxes(out, -1, -2).astype(np.float32)
