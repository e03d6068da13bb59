"""The CUDA path, run where a GPU is visible (skipped elsewhere, CI included, saying why):
every shipped config's network through a real AMP training step on a real batch, GPU mel
panels against librosa, the cleaner and the narrow band-pass on CUDA against the CPU, and a
whole fold trained on the GPU with loader workers and EMA whose checkpoint predicts the same
on the CPU. `bash scripts/gpu_check.sh` runs this file first on a GPU machine."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").glob("*/*.yaml"))
CUDA = torch.device("cuda")


def real_batch(cfg, data_dir: Path, n: int = 8) -> dict:
    """n training items of the tiny simulated set as the config's loader ships them."""
    from hms.cache.prepare import prepare
    from hms.cache.store import open_cache
    from hms.data.tables import load_train
    from hms.training.dataset import training_set

    caches = prepare(cfg, ("train",), workers=1, progress=False)["train"]
    ds = training_set(load_train(cfg), open_cache(caches["eeg"]), open_cache(caches["spec"]), cfg,
                      (cfg.labels.min_votes_high, 0.5))
    return next(iter(torch.utils.data.DataLoader(ds, batch_size=n, shuffle=False)))


def shipped_config(path: str, data_dir: Path, work_dir: Path):
    from hms.config import load_config

    cfg = load_config([str(ROOT / path)], [f"paths.data_dir={data_dir}", f"paths.work_dir={work_dir}",
                                           "folds.n_folds=2", "device=cuda"])
    if "pretrained" in cfg.model:  # no network here: random weights
        cfg.model.pretrained = False
    return cfg


@pytest.mark.parametrize("path", SHIPPED)
def test_every_shipped_config_takes_amp_steps_on_cuda(path, tiny_synth, tmp_path):
    """Forward under fp16 autocast agrees with fp32, and three scaled steps keep every loss and
    gradient finite: an fp16 overflow in a mel, a GRU or a gated WaveNet shows up here."""
    from omegaconf import OmegaConf

    from hms.training.loop import make_optimizer, train_step
    from hms.training.network import build_network
    from hms.training.predict import to_device

    cfg = shipped_config(path, tiny_synth, tmp_path)
    batch = real_batch(cfg, tiny_synth)
    torch.manual_seed(0)
    net = build_network(cfg).to(CUDA)
    if net.input_kind == "image":
        net = net.to(memory_format=torch.channels_last)
    net.eval()
    with torch.no_grad():
        inputs = to_device(batch, CUDA)
        fp32 = torch.softmax(net(inputs).float(), 1)
        with torch.autocast("cuda", dtype=torch.float16):
            fp16 = torch.softmax(net(inputs).float(), 1)
    assert torch.isfinite(fp16).all(), path
    assert (fp16 - fp32).abs().max().item() < 0.02, path
    net.train()
    stage = OmegaConf.merge(cfg.train.stages[0], {"steps_per_epoch": 3})
    opt, sched = make_optimizer(net, stage, cfg)
    scaler = torch.amp.GradScaler("cuda")
    losses = [train_step(net, dict(batch), opt, sched, scaler, cfg, CUDA).item() for _ in range(3)]
    assert np.isfinite(losses).all(), f"{path}: {losses}"
    assert all(torch.isfinite(p).all() for p in net.parameters()), path


def test_gpu_mel_panels_match_librosa():
    """The starter's 128-mel recipe, computed on the GPU, against librosa on the CPU."""
    pytest.importorskip("librosa")
    from hms.bench import simulated_bipolar
    from hms.config import load_config
    from hms.signal.spectrogram import eeg_panels, librosa_reference

    cfg = load_config([], [])
    signals = simulated_bipolar(3)
    ours = eeg_panels(signals, cfg.mel, "cuda").cpu().numpy()
    reference = librosa_reference(signals, cfg.mel)
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() * 40 < 0.05  # dB: panels are (dB + 40) / 40


def test_cleaner_with_an_extra_band_pass_matches_the_cpu():
    """The FFT filtering, decimation and a per-window extra gain (the narrow band-pass
    augmentation's form: edges fixed here, as CPU and CUDA draw different random numbers)."""
    from hms.bench import simulated_bipolar
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


def test_a_fold_trained_on_cuda_predicts_the_same_on_the_cpu(tiny_synth, tmp_path):
    """Loader workers with pinned memory, AMP, EMA and channels_last on the GPU; the best.pt it
    saves loads on the CPU (the Kaggle notebook may run there) and gives the same probabilities."""
    from hms.training.experiment import train_experiment
    from hms.training.network import load_fold_network
    from hms.training.predict import to_device

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
