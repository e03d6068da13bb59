"""A gradient-boosted tree model on fixed quantitative-EEG features, as a torch module.

`QEEGTrees` (model kind `qeeg_trees`) reads the cleaned 50 s window and the Kaggle panels like
any model, turns them into features (models/qeeg.py for the EEG, the context branch's
SpectrogramSummary for the 10-minute spectrogram) and scores them with boosted trees. It is
*fitted once* per run (training/loop.py TreeRun: scikit-learn's HistGradientBoostingClassifier,
soft targets as weighted class rows) instead of trained by epochs; the fitted trees are then
copied into buffers, so best.pt holds them like any network's weights and inference (`hms
predict`, the Kaggle notebook, TTA, the ensemble) runs them in torch with no scikit-learn and no
pickle: the same results whatever versions a Kaggle image has. Features and trees err
differently from a CNN, which is what an ensemble needs (README, "Tree member"); public HMS
solutions blended CatBoost on spectrogram statistics with their CNNs the same way (e.g. the
bronze-medal EfficientNet + WaveNet + CatBoost ensemble, github.com/SamyakJha114/HMS-HBAC).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hms.data.schema import N_CLASSES, SAMPLING_RATE
from hms.models.context import SpectrogramSummary
from hms.models.qeeg import EEGFeatures
from hms.signal.montage import montage_names
from hms.models.registry import register

ABSENT_CLASS_LOGIT = -30.0  # a class no training row voted for: probability ~1e-13 of the rest


class TreeEnsemble(nn.Module):
    """(B, F) float64 features -> (B, n_classes) raw scores of boosted regression trees, one per
    class per boosting iteration: baseline + the sum of each class's trees' leaf values, as
    scikit-learn's HistGradientBoostingClassifier computes them (x <= threshold goes left, NaN
    the side the fit chose). Buffers are (trees, nodes), padded with leaves; they take the
    shapes of a loaded state_dict, so an empty ensemble loads any fitted one."""

    BUFFERS = ("feature", "threshold", "left", "right", "is_leaf", "missing_left", "value", "tree_class",
               "baseline", "depth")

    def __init__(self, n_classes: int = N_CLASSES):
        super().__init__()
        self.n_classes = n_classes
        empty = {"feature": torch.zeros(0, 1, dtype=torch.long), "threshold": torch.zeros(0, 1, dtype=torch.float64),
                 "left": torch.zeros(0, 1, dtype=torch.long), "right": torch.zeros(0, 1, dtype=torch.long),
                 "is_leaf": torch.ones(0, 1, dtype=torch.bool), "missing_left": torch.zeros(0, 1, dtype=torch.bool),
                 "value": torch.zeros(0, 1, dtype=torch.float64), "tree_class": torch.zeros(0, dtype=torch.long),
                 "baseline": torch.zeros(n_classes, dtype=torch.float64), "depth": torch.zeros((), dtype=torch.long)}
        for name in self.BUFFERS:
            self.register_buffer(name, empty[name])

    @property
    def n_trees(self) -> int:
        return int(self.feature.shape[0])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in self.BUFFERS:  # take the fitted shapes before the usual copy
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=self.baseline.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def load_sklearn(self, model) -> None:
        """Copy a fitted HistGradientBoostingClassifier (numeric features, classes among
        0..n_classes-1) into the buffers."""
        trees = [p.nodes for iteration in model._predictors for p in iteration]
        if any(t["is_categorical"].any() for t in trees):
            raise ValueError("categorical splits are not supported (the features are all numeric)")
        classes = np.asarray(model.classes_, dtype=np.int64)
        per_iteration = model.n_trees_per_iteration_
        # binary: one tree per iteration scores classes_[1] against classes_[0] (logit 0)
        tree_classes = classes if per_iteration > 1 else classes[1:]
        n_nodes = max(len(t) for t in trees)
        arrays = {"feature": np.zeros((len(trees), n_nodes), np.int64), "threshold": np.zeros((len(trees), n_nodes)),
                  "left": np.zeros((len(trees), n_nodes), np.int64), "right": np.zeros((len(trees), n_nodes), np.int64),
                  "is_leaf": np.ones((len(trees), n_nodes), bool), "missing_left": np.zeros((len(trees), n_nodes), bool),
                  "value": np.zeros((len(trees), n_nodes))}
        fields = {"feature": "feature_idx", "threshold": "num_threshold", "left": "left", "right": "right",
                  "is_leaf": "is_leaf", "missing_left": "missing_go_to_left", "value": "value"}
        for t, nodes in enumerate(trees):
            for name, field in fields.items():
                arrays[name][t, :len(nodes)] = nodes[field]
        baseline = np.full(self.n_classes, ABSENT_CLASS_LOGIT)
        if per_iteration == 1:
            baseline[classes[0]] = 0.0
        baseline[tree_classes] = np.asarray(model._baseline_prediction, dtype=np.float64).ravel()
        arrays["tree_class"] = np.tile(tree_classes, len(model._predictors))
        arrays["baseline"] = baseline
        arrays["depth"] = np.asarray(max(int(t["depth"].max()) for t in trees), np.int64)
        self.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.double()
        scores = self.baseline.expand(x.shape[0], -1)
        if self.n_trees == 0:
            return scores
        trees = torch.arange(self.n_trees, device=x.device)
        node = torch.zeros(x.shape[0], self.n_trees, dtype=torch.long, device=x.device)
        for _ in range(int(self.depth)):  # every sample descends every tree one level per step
            value = x.gather(1, self.feature[trees, node])
            go_left = torch.where(torch.isnan(value), self.missing_left[trees, node],
                                  value <= self.threshold[trees, node])
            child = torch.where(go_left, self.left[trees, node], self.right[trees, node])
            node = torch.where(self.is_leaf[trees, node], node, child)
        leaf_values = self.value[trees, node]  # (B, trees)
        return scores + leaf_values @ F.one_hot(self.tree_class, self.n_classes).double()


@register("qeeg_trees")
class QEEGTrees(nn.Module):
    """(cleaned signals (B, S, T), raw Kaggle panels (B, 4, 100, 300)) -> (B, 6) logits of boosted
    trees on EEGFeatures + SpectrogramSummary. Untrained, it predicts the uniform distribution;
    `fit` grows it. The other keys are HistGradientBoostingClassifier's (min_samples_leaf counts
    class rows: an item with votes for k classes is k rows)."""

    input_kind = "signal"
    reads_spec = True  # HMSNet passes it the Kaggle panels beside its signals
    fitted_once = True  # trained by `fit`, not by epochs of gradient steps (training/loop.py, TreeRun)

    def __init__(self, extras: Sequence[str] = (), fs: float = SAMPLING_RATE / 4, max_iter: int = 300,
                 learning_rate: float = 0.03, max_depth: int | None = 3, max_leaf_nodes: int | None = 31,
                 min_samples_leaf: int = 60, l2_regularization: float = 1.0, n_classes: int = N_CLASSES):
        super().__init__()
        self.eeg = EEGFeatures(montage_names(list(extras)), fs)
        self.spec = SpectrogramSummary()
        self.trees = TreeEnsemble(n_classes)
        self.names = [*self.eeg.names, *SpectrogramSummary.NAMES]
        self.fit_params = {"max_iter": int(max_iter), "learning_rate": float(learning_rate), "max_depth": max_depth,
                           "max_leaf_nodes": max_leaf_nodes, "min_samples_leaf": int(min_samples_leaf),
                           "l2_regularization": float(l2_regularization)}

    def features(self, signal: torch.Tensor, spec: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.eeg(signal), self.spec(spec).double()], dim=1)

    def forward(self, signal: torch.Tensor, spec: torch.Tensor) -> torch.Tensor:
        return self.trees(self.features(signal, spec)).float()

    def fit(self, features: np.ndarray, targets: np.ndarray, weights: np.ndarray, seed: int = 0) -> None:
        """Boost on features (n, F) toward soft targets (n, 6) with sample weights (n,): each
        item becomes one row per class it has votes for, weighted by weight x vote share, whose
        log loss is the items' cross-entropy with their vote distributions (KL up to a constant)."""
        from sklearn.ensemble import HistGradientBoostingClassifier

        mass = np.asarray(targets, np.float64) * np.asarray(weights, np.float64)[:, None]
        rows, classes = np.nonzero(mass > 0)
        if len(np.unique(classes)) < 2:
            raise ValueError(f"the tree model needs votes for at least 2 classes in its training rows, "
                             f"got {sorted(set(classes.tolist()))}")
        if not np.isfinite(features).all():
            bad = np.unique(np.nonzero(~np.isfinite(features))[1])
            raise ValueError(f"non-finite features {[self.names[i] for i in bad][:5]} (a flat or empty window?)")
        model = HistGradientBoostingClassifier(**self.fit_params, early_stopping=False, random_state=seed)
        model.fit(features[rows], classes, sample_weight=mass[rows, classes])
        self.trees.load_sklearn(model)
