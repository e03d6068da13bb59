"""The CUDA path, run where a GPU is visible (skipped elsewhere, CI included, saying why):
every shipped config trained by steps through a real AMP training step on a real batch, every
shipped fitted-once config (the trees) fitted on CUDA against the same fit on the CPU, GPU mel
panels against librosa, the cleaner and the narrow band-pass on CUDA against the CPU, and a
whole fold trained on the GPU with loader workers and EMA whose checkpoint predicts the same
on the CPU. `bash scripts/gpu_check.sh` runs this file first on a GPU machine.

The checks take their device as a parameter, and the tests without `needs_cuda` run them on
the CPU: the code a GPU hour depends on runs in CI too, only its device differs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiny_config
from hms.jobs.bench import split_by_training
from hms.data import schema

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").glob("*/*.yaml"))
STEPPED, FITTED = split_by_training(SHIPPED, ROOT)
CUDA, CPU = torch.device("cuda"), torch.device("cpu")
# how far autocast's softmax may stray from fp32's, per precision (bf16 keeps 8 bits of mantissa)
AMP_TOLERANCE = {"fp16": 0.02, "bf16": 0.05}


def real_batch(cfg, data_dir: Path, n: int = 8) -> dict:
    """n training items of the tiny simulated set as the config's loader ships them."""
    from hms.cache.prepare import prepare
    from hms.cache.store import open_cache
    from hms.data.tables import load_train
    from hms.inputs.dataset import make_dataset

    caches = prepare(cfg, ("train",), workers=1, progress=False)["train"]
    ds = make_dataset(cfg, load_train(cfg), (open_cache(caches["eeg"]), open_cache(caches["spec"])), "train",
                      (cfg.labels.min_votes_high, 0.5))
    return next(iter(torch.utils.data.DataLoader(ds, batch_size=n, shuffle=False)))


def shipped_config(path: str, data_dir: Path, work_dir: Path, device: torch.device = CUDA, *overrides: str):
    from hms.config import load_config

    cfg = load_config([str(ROOT / path)], [f"paths.data_dir={data_dir}", f"paths.work_dir={work_dir}",
                                           "folds.n_folds=2", f"device={device.type}", *overrides])
    if "pretrained" in cfg.model:  # no network here: random weights
        cfg.model.pretrained = False
    return cfg


def test_shipped_configs_split_into_stepped_and_fitted_once():
    """The AMP test gets every config with parameters to step, the fit test every other one:
    an empty parameter list (the trees) once made the AMP test fail on every GPU."""
    from hms.models.network import build_network

    assert "configs/demo/qeeg_trees.yaml" in FITTED and "configs/demo/conv1d.yaml" in STEPPED
    assert sorted(STEPPED + FITTED) == SHIPPED and not set(STEPPED) & set(FITTED)
    for path in SHIPPED:
        cfg = shipped_config(path, ROOT, ROOT, CPU)
        n_params = sum(p.numel() for p in build_network(cfg).parameters() if p.requires_grad)
        assert (n_params > 0) == (path in STEPPED), f"{path}: {n_params} trainable parameters"


def check_amp_steps(path: str, data_dir: Path, work_dir: Path, device: torch.device, precision: str = "fp16",
                    micro_batch: int | None = 4) -> None:
    """Forward under autocast agrees with fp32, and three steps (FoldRun's TrainStep: micro-batches
    of 4 of the batch of 8 with accumulation, channels-last where the member's family allows, the
    GradScaler with fp16) keep every loss and gradient finite: an fp16 overflow in a mel, a GRU or
    a gated WaveNet shows up here."""
    from hms.models.device import apply_channels_last, autocast
    from hms.training.loop import make_optimizer
    from hms.training.stage import first_stage
    from hms.models.network import build_network
    from hms.inference.batch import to_device
    from hms.training.step import TrainStep

    cfg = shipped_config(path, data_dir, work_dir, device)
    batch = real_batch(cfg, data_dir)
    torch.manual_seed(0)
    net = build_network(cfg).to(device)
    apply_channels_last(net, "auto", device)
    net.eval()
    if device.type == "cpu":
        precision = "bf16"  # the CPU's autocast dtype, to run the comparison here
    tolerance = AMP_TOLERANCE[precision]
    with torch.no_grad():
        inputs = to_device(batch, device)
        fp32 = torch.softmax(net(inputs).float(), 1)
        with autocast(device, precision):
            low = torch.softmax(net(inputs).float(), 1)
    assert torch.isfinite(low).all(), path
    assert (low - fp32).abs().max().item() < tolerance, path
    net.train()
    opt, sched = make_optimizer(net, first_stage(cfg), cfg, steps_per_epoch=3)
    step = TrainStep(net, opt, sched, cfg, device, precision if device.type == "cuda" else "fp32", micro_batch)
    losses = [step(dict(batch)).item() for _ in range(3)]
    assert np.isfinite(losses).all(), f"{path}: {losses}"
    assert all(torch.isfinite(p).all() for p in net.parameters()), path


def cuda_precisions() -> list[str]:
    from hms.models.device import has_bf16

    return ["fp16", "bf16"] if torch.cuda.is_available() and has_bf16(CUDA) else ["fp16"]


@needs_cuda
@pytest.mark.parametrize("path", STEPPED)
@pytest.mark.parametrize("precision", cuda_precisions())
def test_every_shipped_stepped_config_takes_amp_steps_on_cuda(path, precision, tiny_synth, tmp_path):
    check_amp_steps(path, tiny_synth, tmp_path, CUDA, precision)


def test_the_amp_step_check_runs_on_the_cpu(tiny_synth, tmp_path):
    check_amp_steps("configs/demo/conv1d.yaml", tiny_synth, tmp_path, CPU)


@needs_cuda
def test_accumulation_on_cuda_gives_the_gradients_of_one_batch_channels_last(tmp_path):
    """tests/test_device.py's CPU check on the GPU, through a 2D network converted to channels-last."""
    from test_device import random_batch, step_grads

    from hms.models.device import apply_channels_last

    cfg = tiny_config(tmp_path, tmp_path, "device=cuda", "train.grad_clip=0",
                      "model={kind: timm_mel, backbone: resnet10t, n_fft: 256, win_length: 32, n_mels: 16, "
                      "width: 32, layout: chain_avg_channels}")

    def on_cuda(net):
        net.to(CUDA)
        assert apply_channels_last(net, "auto", CUDA)
        return net

    batch = random_batch(8)
    whole = step_grads(cfg, batch, None, on_cuda, CUDA)
    parts = step_grads(cfg, batch, 3, on_cuda, CUDA)
    for a, b in zip(whole, parts):
        torch.testing.assert_close(b, a, rtol=1e-2, atol=1e-4)  # TF32 convolutions


@needs_cuda
def test_bench_train_on_cuda_reports_peak_memory_beside_the_estimate(tiny_synth, tmp_path):
    from hms.jobs.bench import bench_train

    result = bench_train(tiny_config(tiny_synth, tmp_path, "device=cuda", "train.micro_batch=auto"), steps=2,
                         repeats=1)
    assert result["peak_memory_bytes"] > 0 and result["estimated_peak_bytes"] > 0
    assert result["precision"] in ("bf16", "fp16") and 1 <= result["micro_batch"] <= 16


def fit_fold0(path: str, data_dir: Path, work_dir: Path, device: torch.device, name: str, *overrides: str) -> Path:
    """Fold 0 of a fitted-once config, fitted with its features computed on `device`."""
    from hms.training.experiment import train_experiment
    from hms.models.workdir import exp_dir

    cfg = shipped_config(path, data_dir, work_dir, device, f"name={name}", "train.full_fits=0", *overrides)
    train_experiment(cfg, folds=[0], progress=False)
    return exp_dir(cfg) / "fold0"


def check_tree_fit_across_devices(path: str, data_dir: Path, work_dir: Path, device: torch.device,
                                  *overrides: str) -> None:
    """A fitted-once config's fit with features computed on `device` against the CPU fit: the same
    features, the CPU-fitted trees predict the same when run on `device`, and the two fits
    validate alike (a feature a hair from a split threshold may grow another tree, so the fits
    are compared by their predictions, not their trees)."""
    from hms.models.network import load_fold_network
    from hms.inference.batch import to_device

    reference = fit_fold0(path, data_dir, work_dir, CPU, "reference", *overrides)
    candidate = fit_fold0(path, data_dir, work_dir, device, "candidate", *overrides)
    cfg, on_cpu = load_fold_network(reference, {}, "cpu")
    _, on_device = load_fold_network(reference, {}, device)
    batch = real_batch(cfg, data_dir)
    with torch.no_grad():
        cpu_in, dev_in = to_device(batch, CPU), to_device(batch, device)
        cpu_features = on_cpu.core.features(on_cpu.model_signal(cpu_in["signal"]), cpu_in["spec"])
        dev_features = on_device.core.features(on_device.model_signal(dev_in["signal"]), dev_in["spec"]).cpu()
        cpu_probs = torch.softmax(on_cpu(cpu_in), 1)
        dev_probs = torch.softmax(on_device(dev_in), 1).cpu()
    assert cpu_features.shape[0] == len(cpu_probs) and cpu_features.shape[1] > 0
    # an envelope period is an autocorrelation's argmax: a near tie may pick another lag on
    # another device, so a few features may differ; the rest agree to float32 rounding
    close = torch.isclose(dev_features, cpu_features, rtol=1e-3, atol=1e-5 * float(cpu_features.abs().max()))
    assert close.double().mean() > 0.99, f"features differing: {(~close).sum(0).nonzero().ravel().tolist()}"
    assert (dev_probs - cpu_probs).abs().mean() < 1e-3, (dev_probs, cpu_probs)
    votes = list(schema.VOTE_COLUMNS)
    ref_val, cand_val = (pd.read_csv(d / "val_pred.csv") for d in (reference, candidate))
    assert ref_val["eeg_id"].tolist() == cand_val["eeg_id"].tolist()
    assert np.abs(cand_val[votes].to_numpy() - ref_val[votes].to_numpy()).mean() < 0.01
    ref_log, cand_log = (pd.read_csv(d / "log.csv") for d in (reference, candidate))
    assert abs(cand_log["val_kl_high"].iloc[-1] - ref_log["val_kl_high"].iloc[-1]) < 0.01


@needs_cuda
@pytest.mark.parametrize("path", FITTED)
def test_every_shipped_fitted_config_fits_on_cuda_like_on_the_cpu(path, tiny_synth, tmp_path):
    check_tree_fit_across_devices(path, tiny_synth, tmp_path, CUDA)


def test_the_tree_fit_check_runs_on_the_cpu(tiny_synth, tmp_path):
    check_tree_fit_across_devices("configs/demo/qeeg_trees.yaml", tiny_synth, tmp_path, CPU, "model.max_iter=30")


@needs_cuda
def test_gpu_mel_panels_match_librosa():
    """The starter's 128-mel recipe, computed on the GPU, against librosa on the CPU."""
    pytest.importorskip("librosa")
    from hms.jobs.bench import simulated_bipolar
    from hms.config import load_config
    from hms.signal.spectrogram import eeg_panels, librosa_reference

    cfg = load_config([], [])
    signals = simulated_bipolar(3)
    ours = eeg_panels(signals, cfg.mel, "cuda").cpu().numpy()
    reference = librosa_reference(signals, cfg.mel)
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() * 40 < 0.05  # dB: panels are (dB + 40) / 40


@needs_cuda
def test_cleaner_with_an_extra_band_pass_matches_the_cpu():
    """The FFT filtering, decimation and a per-window extra gain (the narrow band-pass
    augmentation's form: edges fixed here, as CPU and CUDA draw different random numbers)."""
    from hms.jobs.bench import simulated_bipolar
    from hms.config import load_config
    from hms.signal.cleaner import WindowCleaner
    from hms.training.augment import butterworth_power

    cfg = load_config([], [])
    signals = torch.from_numpy(simulated_bipolar(4))
    low, high = torch.tensor([0.6, 1.0, 1.5, 2.0]), torch.tensor([11.0, 14.0, 17.0, 20.0])

    def extra_gain(freqs):
        lo, hi = low.to(freqs.device)[:, None, None], high.to(freqs.device)[:, None, None]
        return butterworth_power(lo / freqs.clamp_min(1e-6)) * butterworth_power(freqs / hi)

    cleaner = WindowCleaner(dict(cfg.signal), 50.0, 4)
    cpu = cleaner(signals, extra_gain)
    gpu = cleaner.to(CUDA)(signals.to(CUDA), extra_gain).cpu()
    assert gpu.shape == cpu.shape == (4, 16, 2500)
    torch.testing.assert_close(gpu, cpu, atol=1e-4 * float(cpu.abs().max()), rtol=1e-3)


@needs_cuda
def test_a_fold_trained_on_cuda_predicts_the_same_on_the_cpu(tiny_synth, tmp_path):
    """Loader workers with pinned memory, AMP, EMA and channels_last on the GPU; the best.pt it
    saves loads on the CPU (the Kaggle notebook may run there) and gives the same probabilities."""
    from hms.training.experiment import train_experiment
    from hms.models.network import load_fold_network
    from hms.inference.batch import to_device

    cfg = tiny_config(tiny_synth, tmp_path, "device=cuda", "train.num_workers=2", "train.ema=0.99",
                      "model={kind: timm2d, backbone: resnet10t, drop_rate: 0.0}", "image.layout=channels",
                      "image.panel_height=32", "image.panel_width=64", "mel.sr=50", "mel.n_fft=256",
                      "mel.win_length=32", "mel.n_mels=32")
    train_experiment(cfg, folds=[0], progress=False)
    fold_dir = tmp_path / "tiny" / "fold0"
    assert (fold_dir / "best.pt").is_file()
    batch = real_batch(cfg, tiny_synth)
    _, on_cpu = load_fold_network(fold_dir, {}, "cpu")
    _, on_gpu = load_fold_network(fold_dir, {}, "cuda")
    with torch.no_grad():
        cpu = torch.softmax(on_cpu(to_device(batch, "cpu")), 1)
        gpu = torch.softmax(on_gpu(to_device(batch, CUDA)), 1).cpu()
    torch.testing.assert_close(gpu, cpu, atol=2e-3, rtol=0)


def test_bench_train_says_a_fitted_once_config_has_no_training_steps(capsys):
    from hms.cli import main

    assert main(["bench", "train", str(ROOT / "configs/demo/qeeg_trees.yaml")]) == 2
    err = capsys.readouterr().err
    assert "qeeg_trees has no training steps to time" in err and "fitted once" in err
