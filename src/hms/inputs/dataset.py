"""Torch datasets over the prepared caches.

Items are one row per (eeg_id, vote vector), as top teams validated; in training mode each
item draws one of its labelled sub-windows at random (a free, label-preserving augmentation),
in evaluation mode it takes the middle one. An item yields a dict:
  signal (n_signals, 10_000) float16  raw bipolar 50 s window in µV, NaN filled from this window
                                   alone (the model cleans, crops and decimates it on its device)
  spec   (4, 100, 300) float16    log Kaggle spectrogram panels LL, RL, LP, RP (NaN kept; the
                                   model normalises them per sample, batched, on its device)
  target (6,) float32, weight () float32, low_vote () bool (under min_votes), index () int64
Inputs stay in the caches' float16 (half the bytes to collate and move; numpy's float16 to
float32 conversion alone cost ~0.2 ms per item): the network widens them to float32 on the device.
"""
from __future__ import annotations


import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf
from torch.utils.data import Dataset

from hms.cache.store import Cache
from hms.data import labels, schema
from hms.signal import filters, kaggle_spec, montage

DEFAULT_SIGNAL = OmegaConf.create({"fill_nan": "mean", "denoise": {"enabled": False}})
EMPTY_SPEC = np.zeros((len(schema.CHAIN_NAMES), 1, 1), np.float16)  # placeholder when unused


# what an item needs from its row; offsets default to 0 for tables without them (test.csv)
WINDOW_COLUMNS = ("eeg_id", "eeg_label_offset_seconds", "spectrogram_id", "spectrogram_label_offset_seconds")


def window_columns(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """WINDOW_COLUMNS as numpy arrays: a per-item pandas row lookup cost ~0.1 ms."""
    return {c: table[c].to_numpy() if c in table else np.zeros(len(table)) for c in WINDOW_COLUMNS}


def group_items(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """Dedup rows (middle sub-window kept) and, for each, the positions of all its sub-windows."""
    items = labels.dedup_per_eeg(rows)
    key = ["eeg_id", *schema.VOTE_COLUMNS]
    positions = rows.reset_index(drop=True).groupby(key, sort=False).indices
    members = [np.asarray(positions[tuple(r)]) for r in items[key].itertuples(index=False)]
    return items, members


class HMSDataset(Dataset):
    def __init__(self, rows: pd.DataFrame, eeg: Cache, spec: Cache, train: bool,
                 weighting: tuple[int, float] | None = None, spec_transform=None, use_spec: bool = True,
                 lr_swap: float = 0.0, signal_cfg=None):
        """weighting = (min_votes, low_vote_weight): items under min_votes get that weight.
        lr_swap: in training, the probability of mirroring an item's hemispheres (labels are
        symmetric); done here because reordering rows inside the copy each read makes anyway
        is free, where swapping a collated batch cost ~4 ms per 32 items."""
        self.rows = rows.reset_index(drop=True)
        self.items, self.members = group_items(self.rows) if "eeg_sub_id" in rows else (self.rows, None)
        self.eeg, self.spec, self.train = eeg, spec, train
        self.targets = labels.target_array(self.items) if schema.VOTE_COLUMNS[0] in self.items else None
        self.weights = (labels.sample_weights(self.items, *weighting) if weighting
                        else np.ones(len(self.items), np.float32))
        # which items a decaying low-vote weight applies to (train_step reweights per epoch)
        self.low_vote = (~labels.high_vote_mask(self.items, weighting[0]) if weighting
                         else np.zeros(len(self.items), bool))
        self.spec_transform, self.lr_swap = spec_transform, float(lr_swap) if train else 0.0
        self.use_spec = use_spec  # 1D and on-the-fly mel models never read the Kaggle panels
        self.signal_cfg = signal_cfg if signal_cfg is not None else DEFAULT_SIGNAL
        # spans the cache found NaN in: only their windows need the per-window NaN fill
        self.eeg_with_nan = set() if eeg is None else set(eeg.index.index[eeg.index.nan_share.to_numpy() != 0])
        # the experiment's own signals out of the cache's (one cache holds every signal any
        # experiment can ask for)
        self.signal_columns = None if eeg is None else eeg.columns(
            montage.montage_names(list(self.signal_cfg.get("extras", None) or [])))
        self.row_columns, self.item_columns = window_columns(self.rows), window_columns(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def reseed(self, seed: int) -> None:
        """Reseed the item transforms' own generators (a loader worker's seed)."""
        if hasattr(self.spec_transform, "reseed"):
            self.spec_transform.reseed(seed)

    def _window(self, i: int) -> dict:
        """Item i's window: a random labelled sub-window in training, else the middle one."""
        table, j = self.item_columns, i
        if self.train and self.members is not None and len(self.members[i]) > 1:
            members = self.members[i]  # torch's generator: seeded per loader worker
            table, j = self.row_columns, int(members[int(torch.randint(len(members), ()))])
        return {c: values[j] for c, values in table.items()}

    def _signal(self, eeg_id: int, offset: float, mirror: bool) -> np.ndarray:
        entry = self.eeg.row(eeg_id)
        lo = entry.start + int(round((offset - entry.t0) * schema.SAMPLING_RATE))
        channels = self.eeg.data[lo: lo + schema.EEG_WINDOW_SAMPLES, self.signal_columns].T  # a view if a slice
        # fancy indexing makes the one contiguous copy (mirrored when asked)
        window = channels[schema.mirror_order(len(channels))] if mirror else np.ascontiguousarray(channels)
        if eeg_id in self.eeg_with_nan or self.signal_cfg.denoise.enabled:
            return filters.prepare_window(window, self.signal_cfg)
        return window

    def _spec(self, spectrogram_id: int, offset: float, mirror: bool) -> np.ndarray:
        entry = self.spec.row(spectrogram_id)
        frames = self.spec.data[entry.start: entry.start + entry.length]  # a memmap view: no read yet
        start = kaggle_spec.window_start(entry.t0, offset)
        panels = kaggle_spec.raw_panels(kaggle_spec.take_window(frames, start, dtype=frames.dtype), dtype=frames.dtype)
        return panels[schema.MIRROR_PANELS] if mirror else panels  # normalised per batch on the device

    def __getitem__(self, i: int) -> dict:
        row = self._window(i)
        mirror = self.lr_swap > 0 and float(torch.rand(())) < self.lr_swap
        eeg_offset = float(row["eeg_label_offset_seconds"])
        spec_offset = float(row["spectrogram_label_offset_seconds"])
        spec = self._spec(int(row["spectrogram_id"]), spec_offset, mirror) if self.use_spec else EMPTY_SPEC
        if self.spec_transform is not None and self.use_spec:
            spec = self.spec_transform(spec)
        out = {
            "signal": torch.from_numpy(self._signal(int(row["eeg_id"]), eeg_offset, mirror)),
            "spec": torch.from_numpy(np.ascontiguousarray(spec)),
            "weight": torch.tensor(self.weights[i], dtype=torch.float32),
            "low_vote": torch.tensor(bool(self.low_vote[i])),
            "index": torch.tensor(i, dtype=torch.int64),
        }
        if self.targets is not None:
            out["target"] = torch.from_numpy(self.targets[i])
        return out


MODES = ("train", "eval")


def make_dataset(cfg, rows: pd.DataFrame, caches: tuple[Cache, Cache], mode: str,
                 weighting: tuple[int, float] | None = None) -> HMSDataset:
    """The dataset an experiment config asks for over (eeg cache, spec cache). mode 'train':
    a random labelled sub-window per item, the hemisphere swap and the Kaggle panels' masking
    of `augment`; 'eval': the middle sub-window, no augmentation (validation, test, teachers,
    features). weighting: (min_votes, low-vote weight) when the rows carry votes to weigh."""
    from hms.inputs.transforms import spec_panel_transform
    from hms.models.factory import uses_kaggle_spec

    if mode not in MODES:
        raise ValueError(f"dataset mode must be one of {MODES}, got {mode!r}")
    train = mode == "train"
    return HMSDataset(rows, *caches, train=train, weighting=weighting,
                      spec_transform=spec_panel_transform(cfg.augment) if train else None,
                      use_spec=uses_kaggle_spec(cfg), lr_swap=float(cfg.augment.lr_swap) if train else 0.0,
                      signal_cfg=cfg.signal)
