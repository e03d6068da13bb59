"""The fitted-once members' (qeeg_trees) features and predictions: each item window's features,
cached per split and read by every run, the OOF and test predictions (hms.cache.features)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hms import config as C
from hms.cache.store import open_cache
from hms.data import schema
from hms.inference.batch import mirrored, test_frame, to_device
from hms.inputs.dataset import HMSDataset, group_items, make_dataset, window_columns
from hms.models.network import build_network
from hms.utils import bars_off


@torch.no_grad()
def feature_matrix(net, loader, device, progress: bool = False, desc: str = "features",
                   mirror: bool = False) -> np.ndarray:
    """(n_items, n_features) float64: the fitted-once core's features of each item, in order
    (mirror: of its left/right-swapped copy, as the TTA feeds it)."""
    net.eval()
    out = []
    for batch in tqdm(loader, desc=desc, disable=bars_off(progress), leave=False):
        batch = to_device(batch, device)
        if mirror:
            batch = mirrored(batch)
        out.append(net.core.features(net.model_signal(batch["signal"]), batch["spec"]).cpu().numpy())
    return np.concatenate(out)


def window_extractor(cfg: dict, eeg_root: str, spec_root: str, mirror: bool):
    """(in a feature-cache worker, or here) windows table -> their features (n, F) float64 on the
    CPU, through the same dataset, batches and network code a run's own loader used to take."""
    import multiprocessing

    if multiprocessing.parent_process() is not None:
        torch.set_num_threads(1)  # one worker per core: its own threads would only contend
    cfg = OmegaConf.create(cfg)
    net = build_network(cfg)
    eeg, spec = open_cache(eeg_root), open_cache(spec_root)

    def extract(windows: pd.DataFrame) -> np.ndarray:
        data = make_dataset(cfg, windows, (eeg, spec), "eval")
        loader = DataLoader(data, batch_size=int(cfg.train.batch_size), shuffle=False)
        return feature_matrix(net, loader, torch.device("cpu"), mirror=mirror)

    return extract


def feature_code() -> str:
    """A hash of the code the features come from: an edited feature invalidates its caches."""
    import hashlib
    import sys

    from hms.models.context import SpectrogramSummary
    from hms.models.qeeg import EEGFeatures
    from hms.signal.cleaner import WindowCleaner
    from hms.signal import filters

    files = [sys.modules[c.__module__].__file__ for c in (EEGFeatures, SpectrogramSummary, WindowCleaner, HMSDataset)]
    return hashlib.sha256(b"".join(open(f, "rb").read() for f in [*files, filters.__file__])).hexdigest()[:16]


class ItemFeatures:
    """The fitted-once core's features of a split's item windows (and their mirrored copies when
    infer.tta_lr_swap), from feature caches built on first use over the cache workers
    (hms.cache.features) and read by every later run and prediction. A window not in the
    caches (a table other than the one they were built for) is extracted here."""

    def __init__(self, cfg: DictConfig, split: str, table: pd.DataFrame, eeg_root, spec_root, progress: bool = True,
                 workers: int | None = None):
        import os

        from hms.cache.features import build_feature_cache, open_feature_cache, unique_windows
        from hms.cache.store import cache_workers

        self.cfg = cfg
        items = group_items(table)[0] if "eeg_sub_id" in table else table
        windows = unique_windows(self.windows(items))
        plain = OmegaConf.to_container(cfg, resolve=True)
        core = build_network(cfg).core
        fit_keys, self.n_features = set(core.fit_params), len(core.names)
        settings = {"eeg": os.path.basename(eeg_root), "spec": os.path.basename(spec_root), "code": feature_code(),
                    "model": {k: v for k, v in plain["model"].items() if k not in fit_keys},
                    "signal": plain["signal"], "input": plain["input"]}
        self.extractors, self.caches = {}, {}
        for mirror in (False, True) if cfg.infer.tta_lr_swap else (False,):
            self.extractors[mirror] = (window_extractor, (plain, str(eeg_root), str(spec_root), mirror))
            root = build_feature_cache(C.work_dir(cfg), split, {**settings, "mirror": mirror}, windows,
                                       self.n_features, self.extractors[mirror], cache_workers(cfg, workers), progress)
            self.caches[mirror] = open_feature_cache(root)

    @staticmethod
    def windows(items: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(window_columns(items))

    def of(self, items: pd.DataFrame, mirror: bool = False) -> np.ndarray:
        """(len(items), n_features) float64, in the items' order."""
        table = self.windows(items)
        pos = self.caches[mirror].positions(table)
        out = np.empty((len(table), self.n_features))
        have = pos >= 0
        out[have] = self.caches[mirror].data[pos[have]]
        if not have.all():
            factory, args = self.extractors[mirror]
            out[~have] = factory(*args)(table[~have].reset_index(drop=True))
        return out

    @torch.no_grad()
    def probs(self, net, items: pd.DataFrame, device, tta: bool = False) -> np.ndarray:
        """predict_probs of the network on the items, from their cached features: the same
        softmax, TTA mean and batches, without reading or cleaning a signal."""
        net.eval()
        plain, swapped = self.of(items), self.of(items, mirror=True) if tta else None
        batch, out = int(self.cfg.train.batch_size), []
        for lo in range(0, len(plain), batch):
            probs = torch.softmax(net.core.trees(torch.from_numpy(plain[lo:lo + batch]).to(device)).float(), dim=1)
            if tta:
                swapped_logits = net.core.trees(torch.from_numpy(swapped[lo:lo + batch]).to(device)).float()
                probs = (probs + torch.softmax(swapped_logits, dim=1)) / 2
            out.append(probs.cpu().double().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(schema.VOTE_COLUMNS)))


def tree_feature_caches(cfg: DictConfig, caches: dict, train: pd.DataFrame, progress: bool = True) -> None:
    """Build the train split's feature caches of a fitted-once experiment before its runs start
    (prepare_experiment), so that parallel runs only read them."""
    ItemFeatures(cfg, "train", train, caches["train"]["eeg"], caches["train"]["spec"], progress)


def tree_test_predictions(cfg: DictConfig, nets: list, device, prior=None, progress: bool = False) -> pd.DataFrame:
    """predict_test for fitted-once networks: every net reads the test feature caches, built once
    for all of them (and for every later run or `hms predict` of the same settings)."""
    def probs_of(rows, eeg, spec):
        features = ItemFeatures(cfg, "test", rows, eeg.root, spec.root, progress)
        return np.mean([features.probs(net, rows, device, bool(cfg.infer.tta_lr_swap)) for net in nets], axis=0)

    return test_frame(cfg, probs_of, prior, True, progress)
