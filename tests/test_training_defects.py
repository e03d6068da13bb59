"""Defects of the GPU/multi-GPU training path that a CPU run does not show by itself: EMA
warm-up, augmentation seeding per worker and epoch, per-panel mosaic augmentations, the DDP
learning-rate rule, loader settings for any CUDA device, OOF with the test's TTA."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiny_config, train_frame


def test_ema_follows_the_model_early_in_a_stage():
    """With decay 0.999 and no warm-up, after 20 steps the average was still ~98% the initial
    weights (a random head validated and saved as best.pt)."""
    from hms.training.loop import make_ema

    torch.manual_seed(0)
    net = torch.nn.Linear(8, 6)
    start = net.weight.detach().clone()
    ema = make_ema(net, 0.999)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    x, y = torch.randn(64, 8), torch.randn(64, 6)
    for step in range(1, 21):
        loss = ((net(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update(net, step=step)
    travelled = (net.weight - start).norm()
    assert (ema.module.weight - net.weight).norm() < 0.35 * travelled
    decays = [ema.get_decay(s) for s in (10, 100, 2_500, 10**6)]
    assert decays == sorted(decays) and decays[-1] == pytest.approx(0.999)  # ramps up to the configured decay


def test_ddp_learning_rate_rule():
    from hms.training.loop import scaled_lr

    assert scaled_lr(1e-3, 4, "sqrt") == pytest.approx(2e-3)
    assert scaled_lr(1e-3, 4, "linear") == pytest.approx(4e-3)
    assert scaled_lr(1e-3, 4, "none") == pytest.approx(1e-3) == scaled_lr(1e-3, 1, "sqrt")
    with pytest.raises(ValueError, match="ddp_lr_scale"):
        scaled_lr(1e-3, 2, "cubic")


def test_loader_pins_memory_for_any_cuda_device_and_keeps_workers(tmp_path):
    from hms.inputs.loaders import make_loader, seed_worker

    cfg = tiny_config(tmp_path, tmp_path, "device=cuda:1", "train.num_workers=2")
    loader = make_loader(list(range(8)), cfg, shuffle=False)
    assert loader.pin_memory and loader.persistent_workers and loader.worker_init_fn is seed_worker
    cpu = make_loader(list(range(8)), tiny_config(tmp_path, tmp_path, "device=cpu"), shuffle=False)
    assert not cpu.pin_memory and cpu.num_workers == 0


class _Masks(torch.utils.data.Dataset):
    """Each item: the NaN mask that the panels' XY masking draws on blank panels."""

    def __init__(self):
        from hms.inputs.transforms import PanelMasking

        self.transform = PanelMasking(1.0)

    def reseed(self, seed):
        self.transform.reseed(seed)

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.from_numpy(np.isnan(self.transform(np.zeros((4, 100, 300), np.float16))))


def test_two_workers_and_two_epochs_draw_different_masks(tmp_path):
    from hms.inputs.loaders import make_loader

    cfg = tiny_config(tmp_path, tmp_path, "device=cpu", "train.num_workers=2", "train.batch_size=1")
    loader = make_loader(_Masks(), cfg, shuffle=False)
    epochs = [[batch[0] for batch in loader] for _ in range(2)]  # items 0, 2 from worker 0; 1, 3 from worker 1
    assert not torch.equal(epochs[0][0], epochs[0][1])  # each worker its own masks
    assert not torch.equal(epochs[0][0], epochs[1][0])  # each epoch new ones


def test_dataset_reseed_reaches_its_panel_transform():
    from hms.inputs.transforms import PanelMasking
    from hms.data import labels
    from hms.inputs.dataset import HMSDataset

    ds = HMSDataset(labels.add_targets(train_frame()), None, None, train=True,
                    spec_transform=PanelMasking(1.0))
    blank = np.zeros((4, 100, 300), np.float16)
    draws = []
    for seed in (5, 5, 6):
        ds.reseed(seed)
        draws.append(np.isnan(ds.spec_transform(blank)))
    assert np.array_equal(draws[0], draws[1]) and not np.array_equal(draws[0], draws[2])


def test_mosaic_masks_hit_the_same_band_in_every_chain():
    """SpecAugment on the tiled image striped one chain; per source, before tiling, a frequency
    stripe covers the same band of all four chains."""
    from omegaconf import OmegaConf

    from hms.models.network import ImageBuilder
    from hms.training.augment import NetworkAugmenter

    torch.manual_seed(0)
    builder = ImageBuilder(sources=("kaggle",), layout="mosaic", panel_height=100, panel_width=300)
    batch = {"spec": torch.randn(8, 4, 100, 300)}
    aug = OmegaConf.create({"time_warp": 0.0, "time_masks": 0, "freq_masks": 1, "mask_max_width": 0.3})
    image = builder(batch, NetworkAugmenter(aug))  # (8, 1, 4 chains x 100, 300)
    zero_rows = (image[:, 0] == 0).all(-1).reshape(8, 4, 100)
    assert zero_rows.any()
    assert (zero_rows == zero_rows[:, :1]).all()  # the same rows in every chain of a sample


@pytest.mark.slow
def test_oof_uses_the_test_time_augmentation(tiny_synth, tmp_path):
    from hms.cache.store import open_cache
    from hms.inputs.dataset import HMSDataset
    from hms.inputs.loaders import make_loader
    from hms.models.network import load_fold_network
    from hms.inference.batch import predict_probs
    from hms.models.factory import uses_kaggle_spec
    from hms.data.tables import load_train
    from hms.cache.prepare import prepare
    from hms.training.experiment import train_experiment

    cfg = tiny_config(tiny_synth, tmp_path, "train.stages=[{rows: all, epochs: 1, lr: 3.0e-3}]")
    assert cfg.infer.tta_lr_swap
    train_experiment(cfg, folds=[0], progress=False)
    fold_cfg, net = load_fold_network(tmp_path / "tiny" / "fold0", {})
    caches = prepare(cfg, ("train",), progress=False)["train"]
    rows = load_train(cfg)
    ds = HMSDataset(rows[rows.fold == 0], open_cache(caches["eeg"]), open_cache(caches["spec"]),
                    train=False, use_spec=uses_kaggle_spec(cfg), signal_cfg=cfg.signal)
    loader = make_loader(ds, cfg, shuffle=False)
    saved = pd.read_csv(tmp_path / "tiny" / "fold0" / "val_pred.csv")[[f"{c}_vote" for c in
                                                                        ("seizure", "lpd", "gpd", "lrda", "grda", "other")]]
    with_tta = predict_probs(net, loader, "cpu", tta_lr_swap=True)
    without = predict_probs(net, loader, "cpu", tta_lr_swap=False)
    np.testing.assert_allclose(saved.to_numpy(), with_tta, atol=1e-6)
    assert np.abs(with_tta - without).max() > 1e-5


def test_tensorboard_logger_writes_each_epoch_as_log_csv_has_it(tiny_synth, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from hms.training.experiment import train_experiment

    cfg = tiny_config(tiny_synth, tmp_path, "train.logger=tensorboard",
                      "train.stages=[{rows: all, epochs: 2, lr: 3.0e-3}, {rows: high, epochs: 1, lr: 1.0e-3}]")
    train_experiment(cfg, folds=[0], progress=False)
    fold = tmp_path / "tiny" / "fold0"
    events = EventAccumulator(str(fold / "tensorboard")).Reload()
    log = pd.read_csv(fold / "log.csv")
    for name in ("train_loss", "val_kl", "val_kl_high"):
        scalars = events.Scalars(name)
        assert [s.step for s in scalars] == list(range(len(log)))
        np.testing.assert_allclose([s.value for s in scalars], log[name].to_numpy(), rtol=1e-6)


def test_unknown_logger_is_a_clear_error(tmp_path):
    from hms.config import ConfigError
    from hms.training.tracking import EpochLogger

    with pytest.raises(ConfigError, match="train.logger must be one of"):
        EpochLogger(tiny_config(tmp_path, tmp_path, "train.logger=mlflow"), tmp_path, 0)


def test_a_bare_cuda_device_gets_an_index_for_set_device():
    """torch.cuda.set_device(torch.device("cuda")) raises in torch 2.11: every single-GPU run
    died before its first step (found on an H200)."""
    from hms.training.dist import cuda_indexed

    assert cuda_indexed(torch.device("cuda"), local_rank=1) == torch.device("cuda", 1)
    assert cuda_indexed(torch.device("cuda", 2)) == torch.device("cuda", 2)
    assert cuda_indexed(torch.device("cpu"), local_rank=1) == torch.device("cpu")


def test_panel_masking_makes_no_network_call():
    """albumentations' import asks PyPI for a newer release unless told not to: offline (the
    Kaggle notebook) that is a 2 s stall and a warning per loader worker."""
    import subprocess
    import sys

    code = ("import socket\n"
            "def refuse(*a, **k): raise SystemExit('network call: ' + repr(a))\n"
            "socket.socket.connect = refuse; socket.getaddrinfo = refuse\n"
            "from hms.inputs.transforms import PanelMasking\n"
            "PanelMasking(1.0)\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
