"""build_model(cfg): one entry point from a config's `model:` section to an nn.Module.

    model:
      kind: timm2d          # timm2d | timm_mel | conv1d | wavenet | cnn_gru | qeeg_trees
      backbone: efficientnet_b0
      in_chans: 1
      pretrained: false
      checkpoint_path: null
      drop_rate: 0.2

Every key but `kind` is passed to the model class as a keyword argument; a key the
class does not take is a ValueError that lists the keys it does take.
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping

from torch import nn

from hms.models.conv1d import CNNGRU, ParallelConv1DNet, WaveNet1D
from hms.models.timm2d import OnTheFlyMelNet, TimmSpectrogramNet
from hms.models.trees import QEEGTrees

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "timm2d": TimmSpectrogramNet,
    "timm_mel": OnTheFlyMelNet,
    "conv1d": ParallelConv1DNet,
    "wavenet": WaveNet1D,
    "cnn_gru": CNNGRU,
    "qeeg_trees": QEEGTrees,
}
# What each kind's forward takes: 'image' = (B, C, H, W) spectrogram image;
# 'signal' = (B, S, T) raw bipolar signals (qeeg_trees: and the Kaggle panels, `reads_spec`).
MODEL_INPUT: dict[str, str] = {
    "timm2d": "image",
    "timm_mel": "signal",
    "conv1d": "signal",
    "wavenet": "signal",
    "cnn_gru": "signal",
    "qeeg_trees": "signal",
}


def _plain(cfg: Any) -> dict:
    """OmegaConf DictConfig/ListConfig -> plain dict/lists (timm and torch want tuples/ints)."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return dict(cfg)


def _class_of(kind: str) -> type[nn.Module]:
    if kind not in MODEL_CLASSES:
        raise ValueError(f"unknown model kind {kind!r}; allowed: {sorted(MODEL_CLASSES)}")
    return MODEL_CLASSES[kind]


def model_kwargs(kind: str) -> dict[str, Any]:
    """The keyword arguments (with defaults) a kind accepts; handy for docs and errors."""
    params = inspect.signature(_class_of(kind).__init__).parameters
    return {name: p.default for name, p in params.items() if name != "self"}


def build_model(model_cfg: Mapping) -> nn.Module:
    cfg = _plain(model_cfg)
    kind = cfg.pop("kind", None)
    allowed = model_kwargs(kind)
    bad = sorted(set(cfg) - set(allowed))
    if bad:
        raise ValueError(f"model kind {kind!r} got unknown keys {bad}; allowed: {sorted(allowed)}")
    return MODEL_CLASSES[kind](**cfg)


def model_input(model_cfg: Mapping) -> str:
    """'image' or 'signal' for a model config (what the dataset must yield)."""
    kind = _plain(model_cfg).get("kind")
    if kind not in MODEL_INPUT:
        raise ValueError(f"unknown model kind {kind!r}; allowed: {sorted(MODEL_INPUT)}")
    return MODEL_INPUT[kind]


def model_class(model_cfg: Mapping) -> type[nn.Module]:
    return _class_of(_plain(model_cfg).get("kind"))


def fitted_once(cfg) -> bool:
    """Whether the experiment's model is fitted once per run (trees) instead of trained by epochs."""
    return bool(getattr(model_class(cfg.model), "fitted_once", False))


def uses_kaggle_spec(cfg) -> bool:
    """Whether the experiment's network reads the Kaggle spectrogram panels at all: a 2D
    image with a kaggle source, a model that reads them itself, or any model with the
    spectrogram context branch."""
    from omegaconf import OmegaConf

    if OmegaConf.select(cfg, "context.enabled", default=False) or getattr(model_class(cfg.model), "reads_spec", False):
        return True
    return model_input(cfg.model) == "image" and "kaggle" in cfg.image.sources
