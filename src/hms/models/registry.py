"""The model registry: `@register("kind")` on a model class where it is defined makes
`model.kind: <kind>` buildable (timm's `@register_model` idea). A new model kind is one
file in this package plus a YAML: every module here is imported by `registered()`.

A registered class declares what HMSNet must feed it as class attributes:
  input_kind   what HMSNet feeds it: 'image' (B, C, H, W) built by the ImageBuilder, or
               'signal' (B, S, T) cleaned bipolar signals
  builds_own_image  a 2D kind fed signals that makes its image inside (timm_mel, eeg_image:
               models.timm2d.SignalImageNet, whose `**timm` keys are the timm head's) (default False)
  reads_spec   forward also takes the Kaggle panels (B, 4, 100, 300) (default False)
  fitted_once  fitted once per run (trees), not trained by epochs (default False)
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

INPUT_KINDS = ("image", "signal")
_MODELS: dict[str, type] = {}


def register(kind: str):
    """Class decorator: `model.kind: <kind>` builds this class."""
    def add(cls: type) -> type:
        if getattr(cls, "input_kind", None) not in INPUT_KINDS:
            raise TypeError(f"model {cls.__name__} (kind {kind!r}) needs a class attribute input_kind "
                            f"in {INPUT_KINDS}")
        if kind in _MODELS and _MODELS[kind] is not cls:
            raise ValueError(f"model kind {kind!r} registered twice: {_MODELS[kind].__name__} and {cls.__name__}")
        cls.kind = kind
        _MODELS[kind] = cls
        return cls
    return add


def _import_all() -> None:
    """Import every module of this package so that each registers its kinds (by path: an
    import of the package itself would make an import circle through its __init__)."""
    package = __name__.rpartition(".")[0]
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{package}.{info.name}")


def registered() -> dict[str, type]:
    """{kind: class} of every registered model, sorted by kind."""
    _import_all()
    return dict(sorted(_MODELS.items()))


def model_class_of(kind) -> type:
    models = registered()
    if kind not in models:
        raise ValueError(f"unknown model kind {kind!r}; allowed: {sorted(models)}")
    return models[kind]
