"""The `hms` command: one entry point, a subcommand per stage. Imports are lazy so that
`hms --help` is instant and torch is loaded only by the stages that need it."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", action="append", default=[], help="experiment YAML (repeatable)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")


def _config(args):
    from hms.config import load_config

    return load_config(args.config, args.overrides)


def cmd_synth(args) -> int:
    from hms.data.synthetic import generate

    summary = generate(args.out, n_eegs=args.n_eegs, n_test_eegs=args.n_test_eegs, seed=args.seed,
                       progress=not args.quiet)
    print(json.dumps(summary, indent=2, default=float))
    return 0


def cmd_download(args) -> int:
    from hms.config import real_data_dir
    from hms.kaggle.client import download_competition

    dest = download_competition(Path(args.out) if args.out else real_data_dir())
    print(f"competition data in {dest}")
    return 0


def cmd_score(args) -> int:
    import pandas as pd

    from hms.metric import score_frames

    print(f"{score_frames(pd.read_csv(args.solution), pd.read_csv(args.submission)):.6f}")
    return 0


def cmd_folds(args) -> int:
    from hms.pipeline import ensure_folds

    cfg = _config(args)
    folds = ensure_folds(cfg)
    print(folds.groupby("fold").agg(eegs=("eeg_id", "size"), patients=("patient_id", "nunique")))
    return 0


COMMANDS = {}


def _register(sub, name, func, help_text, config=False):
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.set_defaults(func=func)
    if config:
        _add_config_args(p)
    COMMANDS[name] = p
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hms", description="HMS harmful brain activity classification")
    sub = parser.add_subparsers(dest="command", required=True)

    p = _register(sub, "synth", cmd_synth, "write the embedded simulated dataset in Kaggle layout")
    p.add_argument("--out", required=True)
    p.add_argument("--n-eegs", type=int, default=800)
    p.add_argument("--n-test-eegs", type=int, default=200)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--quiet", action="store_true")

    p = _register(sub, "download", cmd_download, "download the competition data with the kaggle CLI")
    p.add_argument("--out", default=None, help="default: input/hms-harmful-brain-activity-classification")

    p = _register(sub, "score", cmd_score, "score a submission CSV against a solution CSV (official metric)")
    p.add_argument("solution")
    p.add_argument("submission")

    _register(sub, "folds", cmd_folds, "build (or reuse) the patient-grouped folds", config=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from hms.config import ConfigError
    from hms.data.io import HMSDataError
    from hms.kaggle.client import KaggleError
    from hms.metric import ParticipantVisibleError

    try:
        return args.func(args)
    except (HMSDataError, KaggleError, ParticipantVisibleError, ConfigError, FileNotFoundError) as exc:
        print(f"hms {args.command}: error: {exc}", file=sys.stderr)
        return 2
