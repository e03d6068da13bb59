"""Torch datasets over the prepared caches.

Items are one row per (eeg_id, vote vector), as top teams validated; in training mode each
item draws one of its labelled sub-windows at random (a free, label-preserving augmentation),
in evaluation mode it takes the middle one. An item yields a dict:
  signal (n_signals, T) float32   cleaned bipolar window (centre-cropped, downsampled by config)
  spec   (4, 100, 300) float32    log Kaggle spectrogram panels LL, RL, LP, RP (NaN kept; the
                                   model normalises them per sample, batched, on its device)
  target (6,) float32, weight () float32, index () int64
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from hms.cache import Cache
from hms.config import resolve_device
from hms.data import labels, schema
from hms.signal import kaggle_spec

EMPTY_SPEC = np.zeros((len(schema.CHAIN_NAMES), 1, 1), np.float32)  # placeholder when unused


def group_items(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """Dedup rows (middle sub-window kept) and, for each, the positions of all its sub-windows."""
    items = labels.dedup_per_eeg(rows)
    key = ["eeg_id", *schema.VOTE_COLUMNS]
    positions = rows.reset_index(drop=True).groupby(key, sort=False).indices
    members = [np.asarray(positions[tuple(r)]) for r in items[key].itertuples(index=False)]
    return items, members


class HMSDataset(Dataset):
    def __init__(self, rows: pd.DataFrame, eeg: Cache, spec: Cache, input_cfg, train: bool,
                 weighting: tuple[int, float] | None = None, spec_transform=None, use_spec: bool = True):
        """weighting = (min_votes, low_vote_weight): items under min_votes get that weight."""
        self.rows = rows.reset_index(drop=True)
        self.items, self.members = group_items(self.rows) if "eeg_sub_id" in rows else (self.rows, None)
        self.eeg, self.spec, self.cfg, self.train = eeg, spec, input_cfg, train
        self.targets = labels.target_array(self.items) if schema.VOTE_COLUMNS[0] in self.items else None
        self.weights = (labels.sample_weights(self.items, *weighting) if weighting
                        else np.ones(len(self.items), np.float32))
        self.spec_transform = spec_transform
        self.use_spec = use_spec  # 1D and on-the-fly mel models never read the Kaggle panels
        self.n_samples = int(input_cfg.signal_seconds * schema.SAMPLING_RATE)

    def __len__(self) -> int:
        return len(self.items)

    def _window_row(self, i: int, rng: np.random.Generator) -> pd.Series:
        if self.train and self.members is not None and len(self.members[i]) > 1:
            return self.rows.iloc[int(rng.choice(self.members[i]))]
        return self.items.iloc[i]

    def _signal(self, eeg_id: int, offset: float) -> np.ndarray:
        entry = self.eeg.row(eeg_id)
        centre = entry.start + int(round((offset - entry.t0) * schema.SAMPLING_RATE)) + schema.EEG_WINDOW_SAMPLES // 2
        lo = centre - self.n_samples // 2
        step = int(self.cfg.downsample)
        return np.asarray(self.eeg.data[lo: lo + self.n_samples: step], dtype=np.float32).T

    def _spec(self, spectrogram_id: int, offset: float) -> np.ndarray:
        entry = self.spec.row(spectrogram_id)
        frames = self.spec.data[entry.start: entry.start + entry.length]  # a memmap view: no read yet
        window = kaggle_spec.take_window(frames, kaggle_spec.window_start(entry.t0, offset))
        return kaggle_spec.raw_panels(window)  # normalised per batch on the device (ImageBuilder)

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng(torch.randint(0, 2**31 - 1, ()).item()) if self.train else None
        row = self._window_row(i, rng)
        eeg_offset = float(row.get("eeg_label_offset_seconds", 0.0))
        spec_offset = float(row.get("spectrogram_label_offset_seconds", 0.0))
        spec = self._spec(int(row["spectrogram_id"]), spec_offset) if self.use_spec else EMPTY_SPEC
        if self.spec_transform is not None and self.use_spec:
            spec = self.spec_transform(spec)
        out = {
            "signal": torch.from_numpy(np.ascontiguousarray(self._signal(int(row["eeg_id"]), eeg_offset))),
            "spec": torch.from_numpy(np.ascontiguousarray(spec)),
            "weight": torch.tensor(self.weights[i], dtype=torch.float32),
            "index": torch.tensor(i, dtype=torch.int64),
        }
        if self.targets is not None:
            out["target"] = torch.from_numpy(self.targets[i])
        return out


def make_loader(dataset, cfg, shuffle: bool, sampler=None) -> DataLoader:
    workers = cfg.train.num_workers
    if workers == "auto":
        workers = 0 if resolve_device(cfg) == "cpu" else min(8, os.cpu_count() or 1)
    return DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=shuffle and sampler is None,
                      sampler=sampler, num_workers=int(workers), drop_last=False,
                      pin_memory=resolve_device(cfg) == "cuda", persistent_workers=False)
