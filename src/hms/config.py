"""YAML configs (OmegaConf): base.yaml, then experiment files, then key=value overrides,
then HMS_* environment variables for paths and device."""
from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from hms.data import schema

class ConfigError(ValueError):
    """A config file or override that cannot be used."""


REPO_ROOT = Path(__file__).resolve().parents[2]
REPLACED_SECTIONS = ("model",)
ENV_PATHS = {
    "HMS_DATA_DIR": "paths.data_dir",
    "HMS_WORK_DIR": "paths.work_dir",
    "HMS_SUBMISSION_DIR": "paths.submission_dir",
    "HMS_DEVICE": "device",
}


def config_dir() -> Path:
    """The configs/ folder: $HMS_CONFIG_DIR, ./configs, or the repo checkout's."""
    for candidate in (os.environ.get("HMS_CONFIG_DIR"), "configs", REPO_ROOT / "configs"):
        if candidate and (Path(candidate) / "base.yaml").is_file():
            return Path(candidate)
    raise FileNotFoundError(
        "configs/base.yaml not found: run from the repo root or set HMS_CONFIG_DIR"
    )


def _load_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    cfg = OmegaConf.load(path)
    parent = cfg.pop("inherit", None)  # an experiment may inherit another experiment file
    if parent:
        cfg = OmegaConf.merge(_load_yaml((path.parent / parent).resolve()), cfg)
    return cfg


def _merge_layer(cfg: DictConfig, layer: DictConfig, replace: tuple[str, ...]) -> DictConfig:
    cfg = OmegaConf.merge(cfg, layer)
    for key in replace:  # another model kind takes other keys: replace the section, never mix
        if key in layer:
            cfg[key] = layer[key]
    return cfg


def load_config(files: list[str | Path] = (), overrides: list[str] = ()) -> DictConfig:
    """base.yaml <- each file <- key=value overrides <- HMS_* environment."""
    cfg = OmegaConf.load(config_dir() / "base.yaml")
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must be key=value, got: {bad}")
    for f in files:
        cfg = _merge_layer(cfg, _load_yaml(Path(f)), REPLACED_SECTIONS)
    # `model={...}` replaces the section; `model.drop_rate=0.5` merges into it
    whole = tuple(k for k in REPLACED_SECTIONS if any(o.split("=", 1)[0] == k for o in overrides))
    cfg = _merge_layer(cfg, OmegaConf.from_dotlist(list(overrides)), whole)
    for env, key in ENV_PATHS.items():
        if os.environ.get(env):
            OmegaConf.update(cfg, key, os.environ[env])
    return cfg


def work_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.work_dir)


def submission_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.submission_dir)


def real_data_dir() -> Path:
    return Path("input") / schema.KAGGLE_SLUG


def synthetic_data_dir() -> Path:
    return Path("input") / "synthetic"


def data_dir(cfg: DictConfig) -> Path:
    """The dataset in Kaggle layout: explicit, else the real download, else the embedded one."""
    if cfg.paths.data_dir:
        return Path(cfg.paths.data_dir)
    if (real_data_dir() / schema.TRAIN_CSV).is_file():
        return real_data_dir()
    return synthetic_data_dir()


def resolve_device(cfg: DictConfig) -> str:
    import torch

    if cfg.device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(cfg.device)


def save_resolved(cfg: DictConfig, path: Path) -> None:
    from hms.utils import atomic_write_text

    atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))


def split_items(items: list[str]) -> tuple[list[str], list[str]]:
    """A command line's CONFIG.yaml files and key=value overrides, apart."""
    overrides = [i for i in items if "=" in i]
    files = [i for i in items if "=" not in i]
    bad = [f for f in files if not f.endswith((".yaml", ".yml"))]
    if bad:
        raise ConfigError(f"expected CONFIG.yaml files or key=value overrides, got {bad}")
    return files, overrides


def config_from_items(items: list[str]) -> DictConfig:
    """The config a command's CONFIG.yaml and key=value arguments describe."""
    return load_config(*split_items(items))
