"""The `hms eda | evaluate | explain | app` subcommands. cli.py calls register(); every
import is inside the command so that `hms --help` stays instant."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

APP_SCRIPT = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"


def _cfg(args):
    from hms.config import config_from_items

    return config_from_items(args.items)


def cmd_eda(args) -> int:
    from hms.data.tables import ensure_dataset
    from hms.report.eda import build_report

    cfg = _cfg(args)
    result = build_report(ensure_dataset(cfg), Path(args.out), cfg.mel, nan_sample=args.nan_sample)
    print(f"{result['html']}: {len(result['figures'])} figures in {result['seconds']:.1f} s")
    return 0


def cmd_evaluate(args) -> int:
    from hms.config import data_dir, work_dir
    from hms.report.evaluate import evaluate_experiment, table

    from hms.inference.predict import experiment_dir

    cfg = _cfg(args)
    result = evaluate_experiment(experiment_dir(work_dir(cfg), args.exp), data_dir(cfg), int(cfg.labels.min_votes_high))
    print(table(result))
    print(f"figures and evaluation.json in {work_dir(cfg) / args.exp / 'eval'}")
    return 0


def cmd_explain(args) -> int:
    from hms.config import work_dir
    from hms.data import schema
    from hms.report.explain import explain

    from hms.inference.predict import experiment_dir

    cfg = _cfg(args)
    if args.cls and args.cls not in schema.CLASSES:
        raise ValueError(f"--class {args.cls}: not one of {', '.join(schema.CLASSES)}")
    target = schema.CLASSES.index(args.cls) if args.cls else None
    info = explain(experiment_dir(work_dir(cfg), args.exp), args.eeg_id, args.fold, cfg.paths, target,
                   Path(args.out) if args.out else None, args.split)
    print(json.dumps({k: v for k, v in info.items() if k not in ("explanation", "figure", "occlusion")}, indent=2))
    return 0


def split_streamlit_flags(tokens: list[str]) -> tuple[dict[str, str], list[str]]:
    """({option: value} of Streamlit's own flags, the other tokens): `--server.port 8600` and
    `--server.port=8600` alike, as Streamlit users type them."""
    flags, rest, i = {}, [], 0
    while i < len(tokens):
        token = tokens[i]
        name = token[2:].split("=", 1)[0] if token.startswith("--") else ""
        if "." not in name:
            rest.append(token)
        elif "=" in token:
            flags[name] = token.split("=", 1)[1]
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            flags[name] = tokens[i + 1]
            i += 1
        else:
            raise ValueError(f"hms app: Streamlit flag {token} needs a value")
        i += 1
    return flags, rest


def app_command(port: int, address: str = "127.0.0.1", streamlit_flags: dict | None = None) -> list[str]:
    """Streamlit's command line in the current interpreter (so the same env and package),
    through hms.app.serve, which warms the heavy imports while the server starts. Streamlit
    flags given by the user override these defaults (`--server.port` over `--port`)."""
    options = {"server.headless": "true", "server.port": str(port), "server.address": address,
               "browser.gatherUsageStats": "false", **(streamlit_flags or {})}
    return [sys.executable, "-m", "hms.app.serve", "run", str(APP_SCRIPT),
            *[part for name, value in options.items() for part in (f"--{name}", str(value))]]


def app_env(cfg) -> dict[str, str]:
    """HMS_* variables carrying the config's paths: config files and overrides reach the app
    (a separate Streamlit process) through them."""
    from hms.config import ENV_PATHS

    env = {}
    for var, key in ENV_PATHS.items():
        value = cfg
        for part in key.split("."):
            value = value[part]
        if value is not None:
            env[var] = str(value)
    return env


def cmd_app(args) -> int:
    flags = getattr(args, "streamlit_flags", {})
    command = app_command(args.port, args.address, flags)
    address, port = flags.get("server.address", args.address), flags.get("server.port", args.port)
    env = {**os.environ, **app_env(_cfg(args))}
    print(f"HMS viewer on http://{address}:{port} (Ctrl-C or kill {os.getpid()} stops it)", flush=True)
    if os.name == "posix":  # the server replaces this process: its PID is the server's, so kill stops it
        os.execve(command[0], command, env)
    return subprocess.call(command, env=env)


def register(sub, add_config_args) -> None:
    """Add eda, evaluate, explain and app to an argparse subparsers object."""
    p = sub.add_parser("eda", help="HTML data report (index.html + PNGs)",
                       description="HTML data report on the configured dataset (index.html + PNGs)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--nan-sample", type=int, default=200, help="files read for the NaN statistics")
    add_config_args(p)
    p.set_defaults(func=cmd_eda)

    p = sub.add_parser("evaluate", help="OOF evaluation of an experiment ($HMS_WORK_DIR/EXP/eval/)",
                       description="AUCs, confusion, reliability, KL breakdowns, test vs oracle")
    p.add_argument("--exp", required=True, help="experiment name under the work dir")
    add_config_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("explain", help="Grad-CAM (2D) or occlusion (1D) for one eeg_id",
                       description="Grad-CAM (2D models) or occlusion-by-time (1D models) for one eeg_id")
    p.add_argument("--exp", required=True)
    p.add_argument("--eeg-id", type=int, required=True)
    p.add_argument("--fold", type=int, default=None, help="default: the fold that held the eeg_id out")
    p.add_argument("--class", dest="cls", default=None, help="class to explain (default: the predicted one)")
    p.add_argument("--split", default="train", choices=["train", "test"])
    p.add_argument("--out", default=None, help="default: $HMS_WORK_DIR/EXP/explain")
    add_config_args(p)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("app", help="Streamlit viewer of EEGs, spectrograms and predictions",
                       description="Streamlit viewer (headless); open the printed URL. Streamlit's own "
                       "flags pass through: --server.port 8600 --server.address 0.0.0.0 --theme.base dark")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--address", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    add_config_args(p)
    p.set_defaults(func=cmd_app)
