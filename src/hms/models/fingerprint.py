"""Which config a run was trained under, and whether the current config is the same one.

A run's folder keeps its resolved config (config.yaml, written when the run starts). Before
anything trains, `hms train` and `hms run` compare it with the config they were given, over
the settings that can change what a run learns. The rest cannot, and is left out:

  paths.*, device          where the data and artefacts live, which device runs it
  cache.*, synth.*         how caches are built, how the embedded dataset is made
  train.num_workers, train.logger, train.compile, train.ddp_timeout_minutes,
  train.micro_batch, train.precision, train.channels_last, train.cudnn_benchmark,
  infer.batch_size         how fast it runs on this card and where it logs (micro-batches sum to
                           the same gradients; `auto` resolves per card, so a run may resume on
                           another; BatchNorm layers see the micro-batch, the one difference)
  train.n_seeds, train.full_fits, train.test_runs, ensemble.*
                           which runs the experiment has and how they are joined, not what one
                           run learns (so `hms run --hours` can add a member's second seed later)
  name, free_form          the folder's own name; a note to the config loader

A run's saved config is read in today's keys (hms.config.upgrade_run_config: a moved key is
compared where it lives now), and so is the current one (an explicit rate equal to the derived
one counts as derived). A key the run's saved config lacks (written by an older version) counts
as base.yaml's default; a key the current code no longer has is not compared.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from hms import config as C

IGNORED_SECTIONS = ("paths", "device", "cache", "synth", "ensemble", "name", "free_form")
IGNORED_KEYS = ("train.num_workers", "train.logger", "train.compile", "train.ddp_timeout_minutes",
                "train.micro_batch", "train.precision", "train.channels_last", "train.cudnn_benchmark",
                "infer.batch_size", "train.n_seeds", "train.full_fits", "train.test_runs")
RUN_CONFIG = C.RUN_CONFIG


def _flat(tree, prefix: str = "") -> dict:
    """{dotted key: value} of nested mappings; lists stay whole values (train.stages)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, f"{name}."))
        else:
            out[name] = value
    return out


def _ignored(key: str) -> bool:
    return key.split(".", 1)[0] in IGNORED_SECTIONS or any(key == k or key.startswith(f"{k}.") for k in IGNORED_KEYS)


def settings(cfg: DictConfig | dict, upgrade: bool = True) -> dict:
    """{dotted key: value} of the settings that can change what a run learns, in today's keys
    (upgrade=False: in the keys the config was written with)."""
    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    cfg = C.upgrade_run_config(cfg) if upgrade else cfg
    return {k: v for k, v in _flat(OmegaConf.to_container(cfg, resolve=True)).items() if not _ignored(k)}


def fingerprint(cfg: DictConfig, upgrade: bool = True) -> str:
    """A short hash of `settings(cfg)`: kept in last.pt and metrics.json."""
    text = json.dumps(settings(cfg, upgrade), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def resumable(saved_hash: str, cfg: DictConfig, run_dir: Path) -> bool:
    """Whether a last.pt whose fingerprint is saved_hash may resume under cfg: the same hash, or a
    last.pt written before a layout change moved keys (its hash is over the run's config.yaml in
    the keys it was written with) whose config, upgraded to today's keys, matches cfg."""
    if saved_hash == fingerprint(cfg):
        return True
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file() or saved_hash != fingerprint(OmegaConf.load(path), upgrade=False):
        return False
    return not changed_runs(cfg, [run_dir])


def _base_defaults() -> dict:
    """base.yaml's settings, less the sections an experiment replaces whole (model: a kind's
    keys are its class's, not base.yaml's)."""
    whole = tuple(f"{s}." for s in C.REPLACED_SECTIONS)
    return {k: v for k, v in settings(OmegaConf.load(C.config_dir() / "base.yaml")).items() if not k.startswith(whole)}


def saved_settings(run_dir: Path) -> dict | None:
    """The settings of the config a run was started under (None: the run never started)."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        return None
    try:
        saved = settings(C.load_run_config(run_dir))
    except Exception as exc:  # a truncated or hand-edited file: say which
        raise C.ConfigError(f"{path} cannot be read ({exc}): delete the run's folder, or retrain it with --force") from None
    return {**_base_defaults(), **saved}


def differences(old: dict, new: dict) -> dict[str, tuple]:
    """{key: (old, new)} over the keys the current config has."""
    return {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v}


def _show(value) -> str:
    return json.dumps(value, default=str) if isinstance(value, (list, dict)) else str(value)


def describe(diff: dict[str, tuple], limit: int = 8) -> list[str]:
    lines = [f"    {k}: {_show(a)} -> {_show(b)}" for k, (a, b) in list(diff.items())[:limit]]
    if len(diff) > limit:
        lines.append(f"    ... and {len(diff) - limit} more")
    return lines


class ConfigChanged(C.ConfigError):
    """Runs on disk were trained under another config than the one given."""


def changed_runs(cfg: DictConfig, run_dirs: list[Path]) -> dict[str, dict]:
    """{run name: differences} of the started runs among run_dirs whose config differs."""
    new = settings(cfg)
    out = {}
    for d in run_dirs:
        old = saved_settings(d)
        diff = differences(old, new) if old is not None else {}
        if diff:
            out[Path(d).name] = diff
    return out


def check_unchanged(cfg: DictConfig, run_dirs: list[Path]) -> None:
    """Raise ConfigChanged, naming the experiment, the runs and the keys (old -> new), when a
    started run among run_dirs was trained under other settings than cfg's."""
    changed = changed_runs(cfg, run_dirs)
    if not changed:
        return
    first = next(iter(changed.values()))
    raise ConfigChanged(
        f"{cfg.name}: {len(changed)} run(s) in {Path(run_dirs[0]).parent} ({', '.join(changed)}) were trained under "
        "another config; the settings that differ (trained -> now):\n" + "\n".join(describe(first))
        + "\n  Stopped before training anything. Two ways on: --force retrains them (the old folders are kept "
        "beside them as <run>.old-<time>), or give the edited config a new `name:` to keep both.")


def check_same_runs(exp_dir: Path, run_dirs: list[Path]) -> None:
    """The ensemble, `hms predict` and the packer join an experiment's runs: refuse when they
    were trained under different settings (an edit between runs, with no --force)."""
    found = [(d, saved_settings(d)) for d in run_dirs]
    found = [(d, s) for d, s in found if s is not None]
    if len(found) < 2:
        return
    (first_dir, first), mixed = found[0], []
    for d, s in found[1:]:
        diff = differences(first, s)
        if diff:
            mixed.append((Path(d).name, diff))
    if mixed:
        name, diff = mixed[0]
        raise ConfigChanged(
            f"{exp_dir}: its runs were trained under different configs ({Path(first_dir).name} vs "
            f"{', '.join(n for n, _ in mixed)}):\n" + "\n".join(describe(diff))
            + "\n  Retrain the experiment under one config (`hms train CONFIG --force`) before joining its runs.")
