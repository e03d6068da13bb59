"""The `hms` command: one entry point, a subcommand per stage. Imports are lazy so that
`hms --help` is instant and torch is loaded only by the stages that need it."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("items", nargs="*", metavar="CONFIG.yaml | key=value",
                   help="experiment config files, then key=value overrides")


def _split_items(args) -> tuple[list[str], list[str]]:
    from hms.config import split_items

    return split_items(args.items)


def _config(args):
    from hms.config import config_from_items

    return config_from_items(args.items)


def cmd_train(args) -> int:
    from hms.config import ConfigError
    from hms.jobs.experiments import experiment_configs
    from hms.training.experiment import train_experiment

    files, overrides = _split_items(args)
    if not files:
        raise FileNotFoundError("hms train needs at least one experiment config, e.g. configs/demo/conv1d.yaml")
    if args.fold is not None and args.full is not None:
        raise ConfigError("--fold and --full select different runs; give one of them")
    for cfg in experiment_configs(files, overrides):
        train_experiment(cfg, folds=args.fold, force=args.force, full=args.full)
    return 0


def _job(args) -> tuple[list[str], list[str], float | None, bool]:
    """Configs, overrides, the budget in hours (None: all) and whether to stop over 3 h: named
    configs are the user's choice (trained to --hours when given, never stopped); none: the main
    job this machine and dataset suit (main_job.main_job_configs), whose first line it prints."""
    from hms.jobs.budget import parse_hours
    from hms.jobs.main_job import main_job

    files, overrides = _split_items(args)
    if files:
        return files, overrides, parse_hours(args.hours), False
    job = main_job(overrides, args.hours, getattr(args, "yes", False))
    return job.files, overrides, job.hours, job.stop


def cmd_run(args) -> int:
    from hms.config import load_config, work_dir
    from hms.jobs.plan import PlanTooLong
    from hms.jobs.run import refuse_torchrun, run_all
    from hms.jobs.schedule import RunFailed
    from hms.jobs.lock import WorkDirBusy, one_main_job

    refuse_torchrun()  # before the main job's choice or the work dir's lock build anything
    files, overrides, hours, stop = _job(args)
    devices = [d for d in args.devices.split(",") if d] if args.devices else None
    signal.signal(signal.SIGTERM, _interrupt)  # as Ctrl-C: the jobs are stopped, the terminal is told
    try:
        with one_main_job(work_dir(load_config(files[:1], overrides)), wait=not args.no_wait):
            run_all(files, overrides, force=args.force, gpus=args.gpus, devices=devices, stop_when_long=stop,
                    hours=hours, notebook_minutes=_notebook_minutes(args))
    except PlanTooLong as exc:
        print(f"hms run: {exc}", file=sys.stderr)
        return 3
    except RunFailed as exc:  # the failed job's log tail is printed above: one line names it
        print(f"hms run: error: {exc}", file=sys.stderr)
        return 1
    except WorkDirBusy as exc:
        print(f"hms run: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"hms run: {exc or 'interrupted'}. The next `hms run` goes on from here: finished runs are "
              "skipped, stopped ones resume from their last epoch (last.pt)", file=sys.stderr)
        return 130
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"interrupted by {signal.Signals(signum).name}")


def cmd_plan(args) -> int:
    from hms.jobs.budget import print_plan, select
    from hms.jobs.experiments import experiment_configs
    from hms.jobs.plan import make_plan

    files, overrides, hours, _ = _job(args)
    cfgs = experiment_configs(files, overrides)
    plan = make_plan(cfgs, gpus=args.gpus)
    print_plan(plan, cfgs, select(plan, cfgs, hours, _notebook_minutes(args), on_gpu=args.on_gpu))
    return 0


def cmd_ensemble(args) -> int:
    from hms.config import load_config, submission_dir
    from hms.inference.ensemble import write_submission
    from hms.data.tables import load_test

    cfg = load_config([], args.overrides)
    dirs = [Path(cfg.paths.work_dir) / name for name in args.experiments]
    report = write_submission(dirs, load_test(cfg), submission_dir(cfg), cfg.labels.min_votes_high,
                              str(cfg.ensemble.calibration))
    print(json.dumps(report, indent=2))
    return 0


def cmd_synth(args) -> int:
    from hms.data.synthetic import generate, write_plan

    if args.like_kaggle:
        from hms.data.like_kaggle import like_kaggle

        p = like_kaggle(args.fraction, args.n_test_eegs, args.seed)
        plan = (p.recordings, p.train, p.test, p.train_answers, p.test_answers)
        summary = write_plan(args.out, plan, args.seed, progress=not args.quiet, workers=args.workers,
                             signals=args.signals or "noise")
    else:
        summary = generate(args.out, n_eegs=args.n_eegs, n_test_eegs=args.n_test_eegs or 200, seed=args.seed,
                           progress=not args.quiet, workers=args.workers, signals=args.signals or "simulator")
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

    from hms.metric import paired_bootstrap

    solution = pd.read_csv(args.solution)
    paths = [args.submission] + ([args.against] if args.against else [])
    rows = [_row_kls(solution, args.solution, path) for path in paths]
    if len(rows) == 1:
        print(f"{rows[0].mean():.6f}")
        return 0
    change, low, high = paired_bootstrap(*rows)
    print(f"{args.submission}: {rows[0].mean():.6f}\n{args.against}: {rows[1].mean():.6f}\n"
          f"second vs first: {change:+.2%} (paired bootstrap over {len(rows[0])} rows, 95% interval "
          f"{low:+.2%} .. {high:+.2%})")
    return 0


def _row_kls(solution, solution_path: str, path: str):
    """Each solution row's KL for the submission at `path`; its errors name it, and swapped
    arguments are named as such."""
    import pandas as pd

    from hms.metric import ParticipantVisibleError, row_kl_frames

    submission = pd.read_csv(path)
    try:
        return row_kl_frames(solution, submission)
    except ParticipantVisibleError as exc:
        if _looks_like_votes(submission) and not _looks_like_votes(solution):
            raise ParticipantVisibleError(
                f"{exc}; {path} holds vote counts and {solution_path} probabilities: the arguments "
                "look swapped (hms score SOLUTION.csv SUBMISSION.csv)") from exc
        raise ParticipantVisibleError(f"{path}: {exc}") from exc


def _looks_like_votes(frame) -> bool:
    """Vote counts (a solution), not probabilities (a submission): whole numbers, some above 1."""
    from hms.data import schema

    if not set(schema.VOTE_COLUMNS) <= set(frame.columns):
        return False
    values = frame[list(schema.VOTE_COLUMNS)].to_numpy(dtype=float, na_value=float("nan"))
    return bool((values == values.round()).all() and (values > 1).any())


def cmd_folds(args) -> int:
    from hms.data.folds import class_mix_spread
    from hms.data.tables import ensure_folds, train_table

    cfg = _config(args)
    train = train_table(cfg)
    folds = ensure_folds(cfg, train)
    print(folds.groupby("fold").agg(eegs=("eeg_id", "size"), patients=("patient_id", "nunique")))
    spread = class_mix_spread(train, folds)
    print(f"class-mix spread over folds (std of each class's vote share; folds.method="
          f"{cfg.folds.get('method', 'group')}): mean {spread['mean_std']:.4f} {spread['per_class_std']}")
    return 0


def cmd_prepare(args) -> int:
    import time

    from hms.cache.store import clear_stale
    from hms.cache.prepare import prepare

    cfg = _config(args)
    cfg.validate.skip_bad = bool(cfg.validate.skip_bad or args.skip_bad)
    t = time.perf_counter()
    dirs = prepare(cfg, tuple(args.splits), workers=args.workers)
    keep = [d for kinds in dirs.values() for d in kinds.values()]
    for split, kinds in dirs.items():
        for kind, d in kinds.items():
            size = sum(f.stat().st_size for f in d.iterdir())
            print(f"{split:5s} {kind:4s} {d}  {size / 1e6:.1f} MB")
    if args.clean:
        for d in clear_stale(cfg, keep):
            print(f"removed stale cache {d}")
    print(f"prepared in {time.perf_counter() - t:.1f} s")
    return 0


def cmd_validate(args) -> int:
    from hms import config as C
    from hms.data.validate import preflight
    from hms.data.tables import ensure_dataset

    cfg = _config(args)
    report = preflight(ensure_dataset(cfg), C.work_dir(cfg), skip_bad=args.skip_bad or bool(cfg.validate.skip_bad),
                       quiet=True)
    if not report.problems:  # with problems, preflight has printed the report (or raised)
        print(f"[hms validate] {report.text()}")
    return 0


def cmd_bench(args) -> int:
    from hms.jobs import bench

    if args.what == "reference":
        from hms.jobs.reference import cpu_reference

        bench.print_json(cpu_reference())
        return 0
    if args.what == "scale":
        from hms.jobs.bench_scale import bench_scale, default_configs

        if not args.data:
            raise SystemExit("hms bench scale: --data DIR is required (a dataset from `hms synth --like-kaggle`)")
        work = Path(args.work) if args.work else Path(args.data).resolve().parent / f"{Path(args.data).name}-work"
        bench_scale(Path(args.data), work, _split_items(args)[0] or default_configs(), workers=args.workers,
                    only=args.stages)
        return 0
    cfg = _config(args)
    if args.what == "spectrogram":
        bench.print_json(bench.bench_spectrogram(cfg, batch=args.batch or 64, device=args.device))
    elif args.what == "train":
        from hms.jobs.throughput import save_train_bench
        from hms.models.workdir import experiment_name

        files, _ = _split_items(args)
        cfg.name = experiment_name(cfg, files[0] if files else None)
        result = bench.bench_train(cfg, batch=args.batch, steps=args.steps, repeats=args.repeats)
        bench.print_json(result)
        print(f"[hms bench] saved for `hms plan` in {save_train_bench(cfg, result)}", file=sys.stderr)
    elif args.what == "app":
        bench.print_json(bench.bench_app(cfg))
    else:
        bench.print_json(bench.bench_infer(cfg, batch=args.batch, exp=args.exp))
    return 0


def cmd_predict(args) -> int:
    from hms import config as C
    from hms.inference.predict import experiment_dir, predict_experiment
    from hms.data.tables import ensure_dataset
    from hms.utils import atomic_to_csv

    cfg = _config(args)
    exp_dir = experiment_dir(C.work_dir(cfg), args.exp)  # before any dataset is made: a typo fails at once
    data_dir = ensure_dataset(cfg)
    pred = predict_experiment(exp_dir, data_dir, C.work_dir(cfg), device=args.device,
                              tta_lr_swap=args.tta)
    out = Path(args.out) if args.out else C.work_dir(cfg) / args.exp / "predict.csv"
    atomic_to_csv(pred, out)
    print(f"wrote {out} ({len(pred)} rows)")
    return 0


def cmd_kaggle(args) -> int:
    from hms import config as C
    from hms.kaggle import notebook, package

    cfg = _config(args)
    if args.action == "package":
        from hms.jobs.budget import packaged_notebook_minutes

        info = package.package(Path(args.dir), C.work_dir(cfg), C.submission_dir(cfg), args.user, args.slug,
                               lambda exps: packaged_notebook_minutes(cfg, exps), _notebook_minutes(args))
        print(f"packaged {info['experiments']} as {info['id']} in {args.dir}: {info['bytes'] / 1e6:.1f} MB")
    elif args.action == "upload":
        print(f"kaggle datasets {package.upload(Path(args.dir), args.message)}: done")
    elif args.action == "notebook":
        path = notebook.write_notebook(Path(args.dir), Path(args.package), args.user,
                                       args.accelerator or notebook.DEFAULT_MACHINE_SHAPE)
        print(f"wrote {path} and {path.parent / 'kernel-metadata.json'}")
    else:
        package.push(Path(args.dir), args.accelerator)
        print("kaggle kernels push: done")
    return 0


COMMANDS = {}


def _add_budget_args(p: argparse.ArgumentParser) -> None:
    """--hours and --notebook-minutes; their defaults live in hms.jobs.main_job and hms.jobs.budget (not
    imported here: torch)."""
    p.add_argument("--hours", default=None, help="train only the most valuable part that fits in H hours on this "
                   "machine's device slots (whole members: each one's seed 0 over every fold by published score "
                   "per hour, then full fits, then further seeds), or 'all'; default: all for named configs, "
                   "10 (main_job.NIGHT_HOURS) for the no-argument recipe on a CUDA device with the real data")
    p.add_argument("--notebook-minutes", type=float, default=None, help="the Kaggle notebook's limit on its "
                   "estimated minutes (default 300: budget.NOTEBOOK_MINUTES; Kaggle stops it at 540): over it, "
                   "members predict the test with their full fits only (train.test_runs=full), then without TTA")


def _notebook_minutes(args) -> float:
    from hms.jobs.budget import NOTEBOOK_MINUTES

    return NOTEBOOK_MINUTES if args.notebook_minutes is None else args.notebook_minutes


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
    p.add_argument("--n-test-eegs", type=int, default=None, help="default: 200; with --like-kaggle "
                   "2,000 x fraction (the hidden test's size)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--like-kaggle", action="store_true", help="the real train.csv's shape: 106,800 rows, "
                   "17,089 EEGs, 11,138 shared spectrograms, 1,950 patients (times --fraction); "
                   "--n-eegs is ignored")
    p.add_argument("--fraction", type=float, default=1.0, help="--like-kaggle: scale every count, keep "
                   "every distribution")
    p.add_argument("--signals", choices=["simulator", "noise"], default=None, help="signal renderer "
                   "(default: simulator; noise with --like-kaggle, ~10x cheaper, no visible patterns)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")

    p = _register(sub, "download", cmd_download, "download the competition data with the kaggle CLI")
    p.add_argument("--out", default=None, help="default: input/hms-harmful-brain-activity-classification")

    p = _register(sub, "score", cmd_score, "score a submission CSV against a solution CSV (official metric)")
    p.add_argument("solution")
    p.add_argument("submission")
    p.add_argument("against", nargs="?", default=None,
                   help="a second submission: both scores and the second's change with its paired-bootstrap 95%% interval")

    _register(sub, "folds", cmd_folds, "build (or reuse) the patient-grouped folds", config=True)

    p = _register(sub, "prepare", cmd_prepare, "build the npy caches (bipolar signals, Kaggle spectrograms)",
                  config=True)
    p.add_argument("--splits", nargs="+", default=["train", "test"], choices=["train", "test"])
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--clean", action="store_true", help="delete caches built with other parameters")
    p.add_argument("--skip-bad", action="store_true", help="leave bad train files and their rows out "
                   "(listed in the work dir) instead of stopping")

    p = _register(sub, "validate", cmd_validate, "pre-flight over the whole dataset in seconds (tables and "
                  "parquet footers): every missing file, wrong schema, short EEG, window past the end, "
                  "duplicated label_id", config=True)
    p.add_argument("--skip-bad", action="store_true", help="list bad train files in the work dir so that "
                   "training leaves their rows out, instead of failing")

    p = _register(sub, "train", cmd_train, "train every run of each experiment config: its folds, their extra "
                  "seeds (train.n_seeds), then full-data fits (train.full_fits)", config=True)
    p.add_argument("--fold", type=int, action="append", default=None,
                   help="only this fold, under every seed; no full fits (repeatable)")
    p.add_argument("--full", type=int, action="append", default=None,
                   help="only full-data fit I (train.full_fits; the CV runs must be finished) (repeatable)")
    p.add_argument("--force", action="store_true", help="retrain finished runs (old ones are kept aside)")

    p = _register(sub, "run", cmd_run, "the main job: its plan, then data, caches, all folds of all experiments, "
                  "ensemble, submission, summary (default: configs/recipe/*.yaml with a CUDA device and the real data, "
                  "trained to --hours, default 10; else configs/demo/*.yaml, stopped on a CPU when its plan is over "
                  "3 h here); with several GPUs, one "
                  "process per GPU, each run's output in <work>/<exp>/<run>/train.log", config=True)
    p.add_argument("--force", action="store_true")
    p.add_argument("--yes", action="store_true", help="no configs: train the default experiments whole (the "
                   "recipe without a budget; the demo even when its plan is over 3 h on this device)")
    p.add_argument("--gpus", default="all", help="how many of the visible GPUs (CUDA_VISIBLE_DEVICES, else "
                   "all) to spread the runs over, one process each: N or all (default)")
    p.add_argument("--devices", default=None, help="the device slots, comma-separated, instead of --gpus: "
                   "GPU ids as CUDA_VISIBLE_DEVICES takes them, or cpu (a CPU process), e.g. 0,1 or cpu,cpu")
    p.add_argument("--no-wait", action="store_true", help="refuse, instead of waiting, when another hms run "
                   "holds the work dir")
    _add_budget_args(p)

    p = _register(sub, "plan", cmd_plan, "without training or building caches: every run, items per epoch, "
                  "device hours from measured throughput, totals on 1 and N GPUs, cache disk space, the Kaggle "
                  "notebook's T4 time; last line JSON (default configs: the main job's)", config=True)
    p.add_argument("--gpus", type=int, default=1, help="processes on this machine's GPUs (hours here)")
    _add_budget_args(p)
    p.add_argument("--on-gpu", action="store_true", help="size --hours for --gpus of the plan's GPU (the reference "
                   "H200 on a machine without one), as `hms run` there would: a preview from another machine")

    p = _register(sub, "ensemble", cmd_ensemble, "fit OOF blend weights and write the submission")
    p.add_argument("experiments", nargs="+", help="experiment names under the work dir")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="key=value override")

    p = _register(sub, "predict", cmd_predict, "test predictions of one experiment from its fold checkpoints",
                  config=True)
    p.add_argument("--exp", required=True, help="experiment name under the work dir")
    p.add_argument("--out", default=None, help="default: <work>/<exp>/predict.csv")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None, help="left/right-swap TTA")
    p.add_argument("--device", default=None)

    p = _register(sub, "kaggle", cmd_kaggle, "Kaggle round trip: package weights+code, upload, notebook, push")
    p.add_argument("action", choices=["package", "upload", "notebook", "push"])
    _add_config_args(p)
    p.add_argument("--dir", default=None, help="package/upload: the dataset folder (default kaggle_out/dataset); "
                   "notebook/push: the notebook folder (default kaggle_out/notebook)")
    p.add_argument("--package", default="kaggle_out/dataset", help="notebook: the packaged dataset folder")
    p.add_argument("--user", default=None, help="Kaggle user name (default: from credentials)")
    p.add_argument("--slug", default="hms-weights", help="dataset slug")
    p.add_argument("--message", default="new weights", help="upload: version message")
    p.add_argument("--notebook-minutes", type=float, default=None, help="package: refuse a dataset whose notebook "
                   "estimate on a T4 is over this (default 300: budget.NOTEBOOK_MINUTES; `hms plan` prints it)")
    p.add_argument("--accelerator", default=None,
                   help="notebook: kernel-metadata.json's machine_shape (default NvidiaTeslaT4; 'none': a CPU "
                        "kernel); push: kaggle's --accelerator (default: that machine_shape). Not NvidiaTeslaP100: "
                        "Kaggle's torch has no kernels for it")

    from hms.report.commands import register as register_report

    register_report(sub, _add_config_args)  # eda, evaluate, explain, app

    p = _register(sub, "bench", cmd_bench, "throughput benchmarks, one JSON line each")
    p.add_argument("what", choices=["spectrogram", "train", "infer", "app", "scale", "reference"])
    _add_config_args(p)
    p.add_argument("--data", default=None, help="scale: the dataset (`hms synth --like-kaggle`)")
    p.add_argument("--work", default=None, help="scale: its work dir (default: DATA-work beside it)")
    p.add_argument("--workers", type=int, default=None, help="scale: the cache and feature builds' processes (default: all cores)")
    p.add_argument("--stages", nargs="+", default=None, help="scale: only these stages (validate folds prepare "
                   "loader trees features notebook)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5, help="train: timed repeats of --steps steps (median)")
    p.add_argument("--device", default=None)
    p.add_argument("--exp", default=None, help="infer: experiment name (default: the first finished one)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    streamlit_flags = {}
    if argv[:1] == ["app"]:  # Streamlit's own --section.option flags, taken before argparse sees them
        from hms.report.commands import split_streamlit_flags

        try:
            streamlit_flags, rest = split_streamlit_flags(argv[1:])
        except ValueError as exc:
            parser.error(str(exc))
        argv = ["app", *rest]
    args, extra = parser.parse_known_args(argv)
    if args.command == "app":
        args.streamlit_flags = streamlit_flags
    if getattr(args, "command", None) == "kaggle" and args.dir is None:
        args.dir = "kaggle_out/dataset" if args.action in ("package", "upload") else "kaggle_out/notebook"
    if extra:  # configs/overrides given after an option (`--fold 0 key=value`) land here
        if not hasattr(args, "items") or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.items = [*args.items, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from hms.config import ConfigError
    from hms.data.io import HMSDataError
    from hms.kaggle.client import KaggleError
    from hms.metric import ParticipantVisibleError

    from hms.utils import DiskFull

    try:
        return args.func(args)
    except (HMSDataError, KaggleError, ParticipantVisibleError, ConfigError, FileNotFoundError, DiskFull) as exc:
        return _user_error(args, exc)
    except (ValueError, NotImplementedError) as exc:  # bad input reaching a library check: one line
        return _user_error(args, exc, f" ({DEBUG_ENV}=1 shows the traceback)")


DEBUG_ENV = "HMS_DEBUG"  # 1: errors raise with their traceback instead of one line


def _user_error(args, exc: Exception, suffix: str = "") -> int:
    if os.environ.get(DEBUG_ENV) == "1":
        raise exc
    print(f"hms {args.command}: error: {str(exc) or type(exc).__name__}{suffix}", file=sys.stderr)
    return 2
