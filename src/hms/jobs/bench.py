"""`hms bench ...`: throughput measured against a baseline in the same run, one JSON line each.
Speed lives here, never in timed tests."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hms.data import schema


def simulated_bipolar(n_eegs: int, seconds: float = schema.EEG_WINDOW_SECONDS, seed: int = 0) -> np.ndarray:
    """(n, 16, T) float32 pink-ish noise plus a few rhythms: EEG-like spectra for timing."""
    rng = np.random.default_rng(seed)
    t = int(seconds * schema.SAMPLING_RATE)
    white = rng.normal(size=(n_eegs, len(schema.BIPOLAR_PAIRS), t))
    spectrum = np.fft.rfft(white, axis=-1) / np.maximum(np.arange(t // 2 + 1), 1) ** 0.5
    x = np.fft.irfft(spectrum, n=t, axis=-1)
    time_s = np.arange(t) / schema.SAMPLING_RATE
    x += 0.3 * np.sin(2 * np.pi * rng.uniform(1, 12, size=(n_eegs, 1, 1)) * time_s)
    return (x / x.std() * 30).astype(np.float32)


def _timed(fn, repeats: int) -> float:
    """Median seconds per call: a shared 2-core machine has bursts a mean would absorb."""
    fn()  # warm-up: librosa's numba compilation, torch's first-call allocations
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench_spectrogram(cfg, batch: int = 64, device: str | None = None, librosa_eegs: int = 8) -> dict:
    from hms.signal.spectrogram import eeg_panels, librosa_reference, mel_module

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    signals = simulated_bipolar(batch)
    module = mel_module(cfg.mel).to(device)
    x = torch.from_numpy(signals).to(device)
    torch_s = _timed(lambda: eeg_panels(x, cfg.mel, device, module), repeats=7)
    ref_s = _timed(lambda: librosa_reference(signals[:librosa_eegs], cfg.mel), repeats=3)
    ours = eeg_panels(x[:librosa_eegs], cfg.mel, device, module).cpu().numpy()
    err_db = float(np.abs(ours - librosa_reference(signals[:librosa_eegs], cfg.mel)).max() * 40)
    eegs_per_s = batch / torch_s
    librosa_per_s = librosa_eegs / ref_s
    return {"bench": "spectrogram", "eegs_per_s": round(eegs_per_s, 1), "librosa_eegs_per_s": round(librosa_per_s, 1),
            "speedup": round(eegs_per_s / librosa_per_s, 1), "max_abs_db_err": round(err_db, 5),
            "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu x{torch.get_num_threads()}",
            "batch": batch}


def print_json(result: dict) -> None:
    print(json.dumps(result))


def split_by_training(config_paths: list[str], root=".") -> tuple[list[str], list[str]]:
    """(the configs trained by gradient steps, those fitted once) among config_paths, relative to
    root: the first have training steps to time and AMP steps to check, the second a fit."""
    from hms.config import load_config
    from hms.models.factory import fitted_once

    stepped, fitted = [], []
    for path in config_paths:
        (fitted if fitted_once(load_config([str(Path(root) / path)], [])) else stepped).append(path)
    return stepped, fitted


def training_dataset(cfg):
    """The experiment's training-mode dataset over its prepared train caches (built if missing),
    weighted as a run's first stage loader weights it (every row, so the bench times one size)."""
    from hms.cache.store import open_cache
    from hms.inputs.dataset import make_dataset
    from hms.data.tables import load_train
    from hms.cache.prepare import prepare
    from hms.training.stage import first_stage

    caches = prepare(cfg, ("train",), progress=False)["train"]
    return make_dataset(cfg, load_train(cfg), (open_cache(caches["eeg"]), open_cache(caches["spec"])), "train",
                        first_stage(cfg).weighting)


def _train_setup(cfg):
    from hms.models.network import build_network
    from hms.config import ConfigError
    from hms.models.factory import fitted_once

    if fitted_once(cfg):
        raise ConfigError(f"{cfg.get('name') or cfg.model.kind} has no training steps to time: model kind "
                          f"{cfg.model.kind!r} is fitted once per run, not trained by steps "
                          "(`hms train` prints each run's fit time)")
    return training_dataset(cfg), build_network(cfg)


def _alternating(a, b, repeats: int) -> tuple[float, float]:
    """Median seconds of a and b timed in turn, so drifts in machine load hit both alike."""
    a(), b()  # warm-up
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((a, times_a), (b, times_b)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return float(np.median(times_a)), float(np.median(times_b))


def bench_train(cfg, batch: int | None = None, steps: int = 10, repeats: int = 5) -> dict:
    """Samples/s of the full training step (loader + augmentation + forward + backward + step)
    against the same network's step on random tensors of the same shapes, and its forward alone
    at the evaluation batch (inference). The step is FoldRun's: the same TrainStep, device setup
    (precision, channels-last, micro-batch, cuDNN), EMA and train mode. On CUDA: the peak memory
    (torch.cuda.max_memory_allocated), which `train.micro_batch: auto` and `hms plan` then use."""
    from hms.config import resolve_device
    from hms.inputs.loaders import eval_batch_size, make_loader
    from hms.training.loop import make_ema, make_optimizer
    from hms.training.memory import memory_model
    from hms.training.stage import first_stage
    from hms.training.step import TrainStep, device_setup

    if batch:
        cfg.train.batch_size = batch
    device = torch.device(resolve_device(cfg))
    ds, net = _train_setup(cfg)
    net = net.to(device)
    setup = device_setup(cfg, net, device, str(cfg.get("name") or ""), say=lambda line: print(line, file=sys.stderr))
    opt, sched = make_optimizer(net, first_stage(cfg), cfg, steps_per_epoch=steps * 3)
    ema = make_ema(net, cfg.train.ema) if cfg.train.ema else None
    train_net = torch.compile(net) if cfg.train.compile else net  # as FoldRun (one process: no DDP wrapper)
    step = TrainStep(net, opt, sched, cfg, device, setup.precision, setup.micro_batch, train_net=train_net, ema=ema)
    loader = make_loader(ds, cfg, shuffle=True)
    net.train()

    def pipeline_steps(n):  # a small dataset's loader starts over (its last partial batch is dropped)
        it = iter(loader)
        for _ in range(n):
            batch = next(it, None)
            if batch is None:
                it = iter(loader)
                batch = next(it)
            step(batch)

    sample = next(iter(loader))
    random_batch = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in sample.items()}
    random_batch["target"] = torch.softmax(random_batch["target"], 1)
    random_batch["weight"] = torch.ones_like(random_batch["weight"])

    def bare_steps(n):  # the same step, optimiser and clipping included, minus loader and augmentations
        for _ in range(n):
            step(dict(random_batch), augment=False)

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    n = cfg.train.batch_size * steps
    full, bare = _alternating(lambda: pipeline_steps(steps), lambda: bare_steps(steps), repeats)
    full, bare = n / full, n / bare
    peak = torch.cuda.max_memory_allocated(device) if cuda else None
    estimate = memory_model(cfg, setup.precision, use_measured=False).peak(setup.micro_batch) if cuda else None
    infer = bench_forward(net, random_batch, eval_batch_size(cfg), device, setup.precision, steps)
    from hms.jobs.flops import forward_gflops, model_family
    from hms.jobs.throughput import device_name

    return {"bench": "train", "experiment": str(cfg.get("name")), "samples_per_s": round(full, 1),
            "bare_model_samples_per_s": round(bare, 1), "ratio": round(full / bare, 3),
            "pipeline_overhead": round(1 - full / bare, 3), "batch": cfg.train.batch_size, "repeats": repeats,
            "micro_batch": setup.micro_batch, "precision": setup.precision,
            "channels_last": bool(setup.channels_last), "cudnn_benchmark": setup.cudnn_benchmark,
            "peak_memory_bytes": peak, "estimated_peak_bytes": estimate, "parameters": sum(p.numel() for p in net.parameters() if p.requires_grad),
            "infer_samples_per_s": round(infer, 1), "infer_batch": eval_batch_size(cfg),
            "device": str(device), "device_name": device_name(str(device)),  # the plan's key
            "forward_gflops": round(forward_gflops(cfg), 4), "family": model_family(cfg)}


def bench_forward(net, sample: dict, batch: int, device, precision: str, steps: int) -> float:
    """Samples/s of the network's forward alone (no TTA) on random inputs at the evaluation batch."""
    from hms.models.device import autocast

    reps = -(-batch // len(sample["signal"]))
    inputs = {k: torch.cat([v] * reps)[:batch].to(device) for k, v in sample.items()}
    net.eval()

    @torch.no_grad()
    def forward():
        for _ in range(max(1, steps // 2)):
            with autocast(device, precision):
                net(inputs)

    seconds = _timed(forward, repeats=3)
    net.train()
    return batch * max(1, steps // 2) / seconds


def recipe_variants(config_paths: list[str], root=".") -> list[tuple[str, list[str]]]:
    """(config, overrides) for gpu_check.sh's recipe step: every member trained by steps at its
    configured effective batch and settings (auto precision, channels-last, micro-batch), random
    weights; then, for each 2D member, channels-last the other way (named <exp>-channels_last_on /
    _off) and, for each convolutional 2D member, fp16 + GradScaler (<exp>-fp16). The variants carry
    their own names, so `hms plan` keeps reading the members' own figures."""
    from hms.config import load_config
    from hms.models.device import image_backbones, is_convolutional
    from hms.models.network import build_network

    stepped, _ = split_by_training(config_paths, root)
    first, layouts, fp16 = [], [], []
    for path in stepped:
        cfg = load_config([str(Path(root) / path)], [])
        base = ["model.pretrained=false"] if "pretrained" in cfg.model else []
        first.append((path, base))
        if "pretrained" in cfg.model:
            cfg.model.pretrained = False
        backbones = image_backbones(build_network(cfg))
        if not backbones:
            continue
        cnn = all(is_convolutional(b) for b in backbones)  # auto converts these; the variant the others
        layouts.append((path, [*base, f"train.channels_last={'false' if cnn else 'true'}",
                               f"name={cfg.name}-channels_last_{'off' if cnn else 'on'}"]))
        fp16.append((path, [*base, "train.precision=fp16", f"name={cfg.name}-fp16"]))
    return first + layouts + fp16  # in this order: a spent budget skips the fp16 variants first


def bench_recipe(config_paths: list[str], steps: int, repeats: int, budget_s: float, root=".") -> list[dict]:
    """gpu_check.sh's recipe step in one process (one import, one cuDNN cache): bench_train for
    each of recipe_variants, each result printed and saved where `hms plan` reads it; a variant
    that would start after budget_s is skipped and said so (the step's time limit holds)."""
    import gc

    from hms.config import load_config
    from hms.jobs.throughput import save_train_bench

    t0, results = time.perf_counter(), []
    for path, overrides in recipe_variants(config_paths, root):
        spent = time.perf_counter() - t0
        if spent > budget_s:
            print_json({"bench": "train", "config": path, "overrides": overrides,
                        "skipped": f"budget of {budget_s:.0f} s spent ({spent:.0f} s)"})
            continue
        cfg = load_config([str(Path(root) / path)], overrides)
        try:
            result = bench_train(cfg, steps=steps, repeats=repeats)
        except torch.OutOfMemoryError as exc:
            result = {"bench": "train", "experiment": str(cfg.name), "error": f"out of memory: {exc}"[:300]}
        result["overrides"] = overrides
        print_json(result)
        if "error" not in result:
            save_train_bench(cfg, result)
        results.append(result)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return results


def bench_infer(cfg, batch: int | None = None, exp: str | None = None) -> dict:
    """Test rows/s of predict_experiment end to end (caches built beforehand, then reading,
    batching, forward with TTA) against the bare networks' forward on random tensors."""

    from hms import config as C
    from omegaconf import OmegaConf

    from hms.inference.predict import load_folds, predict_experiment
    from hms.inputs.loaders import eval_batch_size
    from hms.inference.batch import test_inputs
    from hms.data.tables import ensure_dataset

    work = C.work_dir(cfg)
    exp = exp or cfg.get("name") or sorted(p.parent.name for p in work.glob("*/summary.json"))[0]
    device = C.resolve_device(cfg)
    data_dir = ensure_dataset(cfg)
    overrides = {"paths": {"data_dir": str(data_dir), "work_dir": str(work)}, "device": device}
    fold_cfg, nets = load_folds(work / exp, overrides, device)
    if batch:
        OmegaConf.update(fold_cfg, "infer.batch_size", batch)
    test, *_ = test_inputs(fold_cfg)  # caches built here, outside the timing
    run = lambda: predict_experiment(Path(work) / exp, data_dir, work, device=device, progress=False)  # noqa: E731
    end_to_end = len(test) / _timed(run, repeats=1)
    bs, n = eval_batch_size(fold_cfg), len(test)
    sizes = [bs] * (n // bs) + ([n % bs] if n % bs else [])  # the same rows as the real run
    samples = [{"signal": torch.randn(k, 16, schema.EEG_WINDOW_SAMPLES, device=device),
                "spec": torch.randn(k, 4, 100, 300, device=device)} for k in sorted(set(sizes))]
    by_size = {s["signal"].shape[0]: s for s in samples}
    tta = 2 if fold_cfg.infer.tta_lr_swap else 1

    @torch.no_grad()
    def bare():
        for k in sizes * tta:
            for net in nets:
                net(by_size[k])

    bare_rows = len(test) / _timed(bare, repeats=1)
    return {"bench": "infer", "experiment": exp, "rows": len(test), "folds": len(nets), "tta": tta,
            "rows_per_s": round(end_to_end, 1), "bare_model_rows_per_s": round(bare_rows, 1),
            "ratio": round(end_to_end / bare_rows, 3), "device": device}


def bench_app(cfg) -> dict:
    """Seconds until `hms app`'s view appears in headless Chromium, on the configured dataset
    and work dir: "first" = title, votes chart and EEG traces on screen; "complete" = the
    spectrogram images drawn too. Three loads against one server, opened once it is warm (as
    `hms app` announces): a fresh browser (it also fetches and parses Streamlit's frontend),
    a reload (frontend cached), and another eeg_id (a new script run on warm caches)."""
    import tempfile

    import pandas as pd

    from hms.app.browser import render_in_chromium
    from hms.config import data_dir
    from hms.report.commands import app_env

    other = pd.read_csv(data_dir(cfg) / schema.TRAIN_CSV, usecols=["eeg_id"]).eeg_id.unique()[-1]
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        state = render_in_chromium(app_env(cfg), Path(tmp), queries=("", "", f"?eeg_id={other}"),
                                   after_warm_up=True)
    if not state.get("ready") or state.get("exception"):
        raise RuntimeError(f"the app did not render its view: {state}")
    out = {"bench": "app", "server_start_s": state["server_start_s"], "server_warm_s": state["server_warm_s"]}
    for name, load in zip(("fresh_browser", "reload", "other_eeg"), state["loads"]):
        out[f"{name}_first_view_s"], out[f"{name}_complete_view_s"] = load["first_view_s"], load["complete_view_s"]
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()} | {"browser": "headless chromium"}
