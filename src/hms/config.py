"""YAML configs (OmegaConf): base.yaml, then experiment files, then key=value overrides,
then HMS_* environment variables for paths and device."""
from __future__ import annotations

import difflib
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


def env_count(name: str, meaning: str, minimum: int) -> int | None:
    """A whole-number setting from $name: None when unset or blank, a ConfigError that names the
    variable and says what it counts when it is not a number of at least `minimum`."""
    setting = os.environ.get(name, "").strip()
    if not setting:
        return None
    if not setting.isdigit() or int(setting) < minimum:
        raise ConfigError(f"{name}={setting!r}: {meaning}")
    return int(setting)


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


FREE_FORM_KEY = "free_form"  # base.yaml's list of sections that take any keys


def _known_paths(base, prefix: str = "") -> set[str]:
    """Every dotted key base.yaml defines, sections included, for "did you mean"."""
    paths = set()
    if OmegaConf.is_dict(base):
        for key, value in base.items_ex(resolve=False):
            path = f"{prefix}{key}"
            paths |= {path, *_known_paths(value, f"{path}.")}
    elif OmegaConf.is_list(base):
        for entry in base:
            paths |= _known_paths(entry, f"{prefix[:-1]}[].")
    return paths


def _list_entry_shape(base_list) -> DictConfig | None:
    """A list of mappings in base.yaml (train.stages) gives its entries' keys: the union of them."""
    entries = [e for e in base_list if OmegaConf.is_dict(e)]
    return OmegaConf.merge(*entries) if entries else None


def _unknown_keys(layer, base, free: set[str], prefix: str = "") -> list[str]:
    """Dotted keys of `layer` that base.yaml does not define (free-form sections aside)."""
    if prefix.rstrip(".") in free or base is None:  # null in base: any value (e.g. image.image_size)
        return []
    if OmegaConf.is_dict(layer) and OmegaConf.is_dict(base):
        unknown = []
        for key, value in layer.items_ex(resolve=False):
            path = f"{prefix}{key}"
            if key not in base:
                unknown.append(path)
            else:
                unknown += _unknown_keys(value, base[key], free, f"{path}.")
        return unknown
    if OmegaConf.is_list(layer) and OmegaConf.is_list(base):
        shape = _list_entry_shape(base)
        if shape is None:
            return []
        return [k for entry in layer for k in _unknown_keys(entry, shape, free, f"{prefix[:-1]}[].")]
    return []


def check_keys(layer: DictConfig, base: DictConfig, source: str) -> None:
    """A ConfigError naming each key of `layer` (a file or the overrides) that base.yaml lacks."""
    free = set(base.get(FREE_FORM_KEY) or ())
    unknown = _unknown_keys(layer, base, free)
    if not unknown:
        return
    known = sorted(_known_paths(base) - {FREE_FORM_KEY})
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hints.append(f"{key} (did you mean {close[0]}?)" if close else key)
    raise ConfigError(
        f"unknown config key{'s' if len(unknown) > 1 else ''} in {source}: {', '.join(hints)}; "
        f"every key must exist in {config_dir() / 'base.yaml'} (free-form sections: {', '.join(sorted(free))})"
    )


def _merge_layer(cfg: DictConfig, layer: DictConfig, replace: tuple[str, ...]) -> DictConfig:
    cfg = OmegaConf.merge(cfg, layer)
    for key in replace:  # another model kind takes other keys: replace the section, never mix
        if key in layer:
            cfg[key] = layer[key]
    return cfg


def load_config(files: list[str | Path] = (), overrides: list[str] = ()) -> DictConfig:
    """base.yaml <- each file <- key=value overrides <- HMS_* environment."""
    base = OmegaConf.load(config_dir() / "base.yaml")
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must be key=value, got: {bad}")
    cfg = base.copy()
    for f in files:
        layer = _load_yaml(Path(f))
        check_keys(layer, base, str(f))
        cfg = _merge_layer(cfg, layer, REPLACED_SECTIONS)
    # `model={...}` replaces the section; `model.drop_rate=0.5` merges into it
    whole = tuple(k for k in REPLACED_SECTIONS if any(o.split("=", 1)[0] == k for o in overrides))
    layer = OmegaConf.from_dotlist(list(overrides))
    check_keys(layer, base, "the key=value overrides")
    cfg = _merge_layer(cfg, layer, whole)
    cfg.pop(FREE_FORM_KEY, None)
    for env, key in ENV_PATHS.items():
        if os.environ.get(env):
            OmegaConf.update(cfg, key, os.environ[env])
    check_rates(cfg)
    return cfg


# ---------------------------------------------------------------- derived settings

# Sampling rates a transform is built for: always that of the signals fed to it. Each is null
# (derived from input.downsample); they once had to be matched by hand, and a mismatch moved
# every mel band silently (fmax 20 at sr 200 on 50 Hz signals spans 0-5 Hz).
DERIVED_RATES = ("mel.sr", "model.sr", "model.fs")


def signal_rate(downsample) -> float:
    """Hz of the signals the models read: the 200 Hz recordings, every input.downsample-th sample."""
    return schema.SAMPLING_RATE / int(downsample)


def check_rates(cfg: DictConfig) -> None:
    """A ConfigError naming the key and input.downsample when a DERIVED_RATES key is set to
    another rate than the signals'."""
    downsample = OmegaConf.select(cfg, "input.downsample", default=1)
    for key in DERIVED_RATES:
        value = OmegaConf.select(cfg, key)
        if value is not None and float(value) != signal_rate(downsample):
            raise ConfigError(
                f"{key}: {value} does not match input.downsample: {downsample} (the signals are sampled at "
                f"{schema.SAMPLING_RATE} / {downsample} = {signal_rate(downsample):g} Hz); leave {key} out: "
                "it is derived from input.downsample")


RUN_CONFIG = "config.yaml"  # each run's resolved config, in its folder (hms.training.loop writes it)


def upgrade_run_config(cfg: DictConfig) -> DictConfig:
    """A run's saved config in today's keys (a copy); a config already in them comes back equal.
    Saved before the settings moved (issue 29; every such config has input.spec_normalize):
    - input.spec_normalize (it decided) -> kaggle_spec.normalize (only the cache hash read it);
    - timm_mel without model.sr built its mel bank at 200 Hz whatever input.downsample was: that
      rate is written out.
    Then the rates, in any config (the fingerprint compares both sides this way): see _derive_rates."""
    cfg = cfg.copy()
    model = cfg.get("model") or {}
    if "spec_normalize" in (cfg.get("input") or {}):
        OmegaConf.update(cfg, "kaggle_spec.normalize", cfg.input.pop("spec_normalize"))
        if model.get("kind") == "timm_mel" and "sr" not in model:
            model.sr = schema.SAMPLING_RATE
    _derive_rates(cfg, model)
    return cfg


def _derive_rates(cfg: DictConfig, model) -> None:
    """mel.sr, model.sr, model.fs equal to the signals' rate -> derived (null, left out), as is
    mel.sr where the network has no mel panels (base.yaml's 200 sat in every old config). Another
    rate stays: the run was trained on it (the loader refuses one in a new config)."""
    rate = signal_rate(OmegaConf.select(cfg, "input.downsample", default=1))
    panels = model.get("kind") == "timm2d" and {"eeg", "eeg_center"} & set(OmegaConf.select(cfg, "image.sources") or ())
    if OmegaConf.select(cfg, "mel.sr") is not None and (cfg.mel.sr == rate or not panels):
        cfg.mel.sr = None
    for key in ("sr", "fs"):
        if model.get(key) == rate:
            model.pop(key)


def load_run_config(run_dir: Path) -> DictConfig:
    """The config a run was trained under (its folder's RUN_CONFIG), in today's keys."""
    return upgrade_run_config(OmegaConf.load(Path(run_dir) / RUN_CONFIG))


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
