"""build_model(cfg): one entry point from a config's `model:` section to an nn.Module.

    model:
      kind: timm2d          # any registered kind: `hms.models.registry.registered()`
      backbone: efficientnet_b0
      in_chans: 1
      pretrained: false
      checkpoint_path: null
      drop_rate: 0.2

Every key but `kind` is passed to the model class as a keyword argument; a key the
class does not take is a ValueError that lists the keys it does take. The kinds and
what each reads come from the registry (`@register` on each model class).
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping

from torch import nn

from hms.models.registry import model_class_of, registered


def _plain(cfg: Any) -> dict:
    """OmegaConf DictConfig/ListConfig -> plain dict/lists (timm and torch want tuples/ints)."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return dict(cfg)


def model_kinds() -> dict[str, str]:
    """{kind: input kind ('image' | 'signal')} of every registered model (what HMSNet feeds it)."""
    return {kind: cls.input_kind for kind, cls in registered().items()}


def model_kwargs(kind: str) -> dict[str, Any]:
    """The keyword arguments (with defaults) a kind accepts; handy for docs and errors. A
    constructor's `**timm` (the kinds that build their own image) takes the timm head's keys."""
    cls = model_class_of(kind)
    params = inspect.signature(cls.__init__).parameters
    own = {name: p.default for name, p in params.items() if name != "self" and p.kind is not p.VAR_KEYWORD}
    passed_on = cls.timm_keys() if any(p.kind is p.VAR_KEYWORD for p in params.values()) else {}
    return {**passed_on, **own}


def build_model(model_cfg: Mapping) -> nn.Module:
    cfg = _plain(model_cfg)
    kind = cfg.pop("kind", None)
    allowed = model_kwargs(kind)
    bad = sorted(set(cfg) - set(allowed))
    if bad:
        raise ValueError(f"model kind {kind!r} got unknown keys {bad}; allowed: {sorted(allowed)}")
    return model_class_of(kind)(**cfg)


def model_class(model_cfg: Mapping) -> type[nn.Module]:
    return model_class_of(_plain(model_cfg).get("kind"))


def model_input(model_cfg: Mapping) -> str:
    """'image' or 'signal' for a model config (what the dataset must yield)."""
    return model_class(model_cfg).input_kind


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
