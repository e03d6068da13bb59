"""A run of a model fitted once instead of trained by epochs (model kind qeeg_trees): the
features of every training item's labelled middle window, one fit, then the same validation,
TTA OOF, test predictions and files as a trained run (best.pt holds the fitted trees, log.csv
one row), so folds, seeds, full fits, pseudo-labels, the ensemble and inference treat it like
any other experiment. Only the first of train.stages applies (its rows and low_vote_weight)."""
from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from hms.config import ConfigError
from hms.metric import kl_score
from hms.training.dataset import HMSDataset, make_loader
from hms.training.loop import FoldRun, low_vote_weight_at, stage_rows
from hms.training.predict import to_device
from hms.training.tracking import EpochLogger
from hms import config as C


class TreeRun(FoldRun):
    def run(self) -> dict:
        if self.world > 1:
            raise ConfigError(f"{self.tag}: a {self.cfg.model.kind} experiment fits in one process; "
                              "run it without torchrun")
        self.dir.mkdir(parents=True, exist_ok=True)
        C.save_resolved(self.cfg, self.dir / "config.yaml")
        state = {"stage": 0, "epoch": -1, "best": float("inf"), "bad_epochs": 0, "history": []}
        self.tracker = EpochLogger(self.cfg, self.dir, self.run_spec.name, enabled=True)
        try:
            t0 = time.perf_counter()
            train_kl = self.fit()
            scores = self.validate(self.net)[0]
            self.record(state, 0, 0, train_kl, scores, time.perf_counter() - t0, self.net)
        finally:
            self.tracker.close()
        return self.finish(state)

    def fit(self) -> float:
        """Fit the trees on the first stage's rows; returns their weighted training KL."""
        stage = self.stages[0]
        weighting = (self.min_votes, low_vote_weight_at(stage, 0, self.cfg.labels.low_vote_weight))
        data = HMSDataset(stage_rows(self.train_rows, stage, self.min_votes), *self.caches, train=False,
                          weighting=weighting, use_spec=True, signal_cfg=self.cfg.signal)
        features = feature_matrix(self.net, make_loader(data, self.cfg, shuffle=False), self.device,
                                  progress=self.progress, desc=f"{self.tag} features")
        self.net.core.fit(features, data.targets, data.weights, seed=self.run_spec.seed)
        with torch.no_grad():
            logits = self.net.core.trees(torch.from_numpy(features).to(self.device))
        probs = torch.softmax(logits, dim=1).cpu().numpy()
        return kl_score(data.targets, probs)


@torch.no_grad()
def feature_matrix(net, loader, device, progress: bool = False, desc: str = "features") -> np.ndarray:
    """(n_items, n_features) float64: the fitted-once core's features of each item, in order."""
    net.eval()
    out = []
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        batch = to_device(batch, device)
        out.append(net.core.features(net.model_signal(batch["signal"]), batch["spec"]).cpu().numpy())
    return np.concatenate(out)
