"""The spectrogram context branch (models/context.py): any model kind can add logits read from
the 10-minute Kaggle panels. It must start as the model alone, compute its fixed features as
their definitions say (or learn what only the spectrogram shows), make the dataset read the
panels, and survive a checkpoint round trip."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiny_config
from hms.data import schema

TINY_CONV1D = {"kind": "conv1d", "mix_channels": 8, "chain_channels": 4, "stage_channels": [16, 32],
               "kernel_sizes": [3, 7]}
TINY_CONTEXT = {"enabled": True, "kind": "conv", "bands": 10, "channels": [16, 16], "kernel_size": 5,
                "drop_rate": 0.0}
FEATURES = {"enabled": True, "kind": "features"}
FRAMES, FREQS = schema.SPEC_WINDOW_FRAMES, schema.SPEC_N_FREQS


def _net(context=TINY_CONTEXT):
    from hms.models.network import HMSNet

    return HMSNet(TINY_CONV1D, signal_cfg={}, input_cfg={"downsample": 4}, context_cfg=context)


@pytest.mark.parametrize("context", [TINY_CONTEXT, FEATURES], ids=["conv", "features"])
def test_the_branch_starts_as_the_model_alone(context):
    torch.manual_seed(0)
    net = _net(context).eval()
    batch = {"signal": torch.randn(3, 16, schema.EEG_WINDOW_SAMPLES),
             "spec": torch.randn(3, 4, schema.SPEC_N_FREQS, schema.SPEC_WINDOW_FRAMES)}
    with torch.no_grad():
        alone = net.core(net.inputs(batch))
        np.testing.assert_array_equal(net(batch).numpy(), alone.numpy())
        assert net.context(batch["spec"]).abs().max() == 0  # zero head: no logits yet


def test_it_learns_what_only_the_spectrogram_shows():
    """Every sample has the same EEG; only the spectrogram's slow power modulation (its
    period) tells the classes apart. Without the branch the net cannot beat the mean target."""
    torch.manual_seed(0)
    n = 12
    signal = torch.randn(1, 16, schema.EEG_WINDOW_SAMPLES).expand(n, -1, -1).contiguous()
    frames = torch.arange(schema.SPEC_WINDOW_FRAMES, dtype=torch.float32)
    classes = torch.arange(n) % schema.N_CLASSES
    period = 10.0 + 6.0 * classes.float()  # frames per cycle: 10 .. 40
    modulation = torch.sin(2 * np.pi * frames / period[:, None])  # (n, frames)
    spec = 0.3 * torch.randn(n, 4, schema.SPEC_N_FREQS, schema.SPEC_WINDOW_FRAMES) + modulation[:, None, None]
    target = torch.nn.functional.one_hot(classes, schema.N_CLASSES).float()
    batch = {"signal": signal, "spec": spec}

    def fitted_kl(context):
        torch.manual_seed(1)
        net = _net(context)
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        for _ in range(150):
            loss = torch.nn.functional.kl_div(torch.log_softmax(net(batch), 1), target, reduction="batchmean")
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            return float(torch.nn.functional.kl_div(torch.log_softmax(net(batch), 1), target,
                                                    reduction="batchmean"))

    assert fitted_kl(TINY_CONTEXT) < 0.1
    assert fitted_kl(None) > 1.0  # the mean of six one-hot classes leaves log(6) ~ 1.79


def _features(log_panels):
    from hms.models.context import SpectrogramFeatures

    names = ["evo_power_share", "evo_power_log", "evo_power_std", "evo_centroid_share", "evo_centroid_log",
             "evo_centroid_std", "asymmetry", "temporal_ratio", "centroid_LL", "centroid_RL", "centroid_LP",
             "centroid_RP", "peak_LL", "peak_RL", "peak_LP", "peak_RP"]
    values = SpectrogramFeatures().features(torch.as_tensor(log_panels, dtype=torch.float32))
    return [dict(zip(names, row.tolist())) for row in values]


def test_field_frequency_and_rhythm_features_follow_their_definitions():
    """Chain powers LL 4, RL 1, LP 4, RP 1 (x per-bin spectrum): |log left/right| = log 4,
    temporal/parasagittal = log 1; one chain's spectrum a single peak at bin 30 (its centroid is
    that bin's frequency, its peak/mean is log 100), the others flat (log peak/mean 0)."""
    spectrum = np.full((4, FREQS), 1e-3)
    spectrum[0] = 1.0
    spectrum[1:] = 1.0
    spectrum[2] = 1e-6
    spectrum[2, 30] = 100.0
    level = np.array([4.0, 1.0, 4.0, 1.0]) / spectrum.sum(1)  # total power per chain 4, 1, 4, 1
    power = (spectrum * level[:, None])[:, :, None] * np.ones(FRAMES)
    f = _features(np.log(power)[None])[0]
    assert f["asymmetry"] == pytest.approx(np.log(4.0), abs=1e-4)
    assert f["temporal_ratio"] == pytest.approx(0.0, abs=1e-4)
    assert f["centroid_LP"] == pytest.approx(schema.SPEC_FREQS[30], abs=1e-3)
    assert f["centroid_LL"] == pytest.approx(schema.SPEC_FREQS.mean(), abs=1e-3)
    assert f["peak_LP"] == pytest.approx(np.log(FREQS), abs=1e-3)
    assert f["peak_LL"] == pytest.approx(0.0, abs=1e-5)


def test_evolution_features_see_a_slow_cycle_and_not_a_fast_one():
    """Total power swinging with a 40 s period (inside 18-70 s) puts almost all its modulation
    power in the band; a 6 s swing (outside) almost none; the std is the swing's, sqrt(1/2)."""
    t = np.arange(FRAMES) * schema.SPEC_STEP_SECONDS

    def panels(period_s):
        log_total = np.sin(2 * np.pi * t / period_s)
        return np.broadcast_to(log_total, (4, FREQS, FRAMES)) - np.log(FREQS)

    slow, fast = _features(np.stack([panels(40.0), panels(6.0)]))
    assert slow["evo_power_share"] > np.log(0.9)
    assert fast["evo_power_share"] < np.log(0.05)
    assert slow["evo_power_std"] == pytest.approx(np.sqrt(0.5), rel=0.05)
    assert slow["evo_centroid_std"] == pytest.approx(0.0, abs=1e-3)  # the spectrum's shape never moved


def test_missing_frames_count_as_the_bin_mean_and_leave_features_finite():
    """A NaN stretch (26 missing rows, as in a real train spectrogram) inside a steady window
    changes nothing; an all-NaN window (past a file's end) still gives finite numbers."""
    rng = np.random.default_rng(0)
    steady = np.broadcast_to(rng.normal(0, 1, (4, FREQS, 1)), (4, FREQS, FRAMES)).copy()
    holed = steady.copy()
    holed[..., 140:166] = np.nan
    empty = np.full_like(steady, np.nan)
    a, b, c = _features(np.stack([steady, holed, empty]))
    assert a == pytest.approx(b, abs=1e-4)
    assert np.isfinite(list(c.values())).all()


def test_a_training_batch_of_one_row_passes():
    """705 training rows in batches of 32 leave a last batch of one: nn.BatchNorm1d on the
    features raised there and killed a fold of the demo."""
    net = _net(FEATURES).train()
    batch = {"signal": torch.randn(1, 16, schema.EEG_WINDOW_SAMPLES), "spec": torch.randn(1, 4, FREQS, FRAMES)}
    assert torch.isfinite(net(batch)).all()


@pytest.mark.parametrize("bands, kernel_size, message", [(7, 5, "must divide"), (10, 4, "odd kernel_size")])
def test_bad_branch_settings_are_clear_errors(bands, kernel_size, message):
    from hms.models.context import SpectrogramContext

    with pytest.raises(ValueError, match=message):
        SpectrogramContext(bands=bands, kernel_size=kernel_size)


def test_an_unknown_branch_kind_names_the_allowed_ones():
    from hms.models.context import build_context

    with pytest.raises(ValueError, match=r"context.kind must be one of \('features', 'conv'\), got 'gru'"):
        build_context({"enabled": True, "kind": "gru"})


def test_a_config_without_the_section_builds_without_the_branch():
    """Runs trained before the branch existed have no `context` in their config.yaml."""
    from omegaconf import OmegaConf

    from hms.config import load_config
    from hms.models.factory import uses_kaggle_spec
    from hms.models.network import build_network

    cfg = load_config(["configs/demo/conv1d.yaml"], [])
    old = OmegaConf.create({k: v for k, v in OmegaConf.to_container(cfg).items() if k != "context"})
    assert build_network(old).context is None and not uses_kaggle_spec(old)
    with_branch = load_config(["configs/demo/conv1d.yaml"], ["context.enabled=true"])
    assert build_network(with_branch).context is not None and uses_kaggle_spec(with_branch)


def test_the_dataset_hands_a_context_model_the_panels_it_asks_for(tiny_synth, tmp_path):
    """A 1D model alone gets a (4, 1, 1) placeholder; with the branch, the item's 10-minute log
    panels as the spectrogram file holds them around the labelled window."""
    from hms.cache.prepare import prepare
    from hms.cache.store import open_cache
    from hms.data import io
    from hms.data.tables import load_train
    from hms.signal import kaggle_spec
    from hms.inputs.dataset import make_dataset

    cfg = tiny_config(tiny_synth, tmp_path, "context.enabled=true", "augment.lr_swap=0")
    caches = prepare(cfg, ("train",), progress=False)["train"]
    rows = load_train(cfg)
    eeg, spec = open_cache(caches["eeg"]), open_cache(caches["spec"])
    plain = make_dataset(tiny_config(tiny_synth, tmp_path), rows, (eeg, spec), "train", (10, 1.0))
    assert tuple(plain[0]["spec"].shape) == (4, 1, 1)
    ds = make_dataset(cfg, rows, (eeg, spec), "train", (10, 1.0))
    ds.train = False  # the middle sub-window, no random choice
    item, row = ds[0], ds.items.iloc[0]
    path = tiny_synth / schema.TRAIN_SPEC_DIR / f"{int(row.spectrogram_id)}.parquet"
    window = kaggle_spec.read_log_window(path, float(row.spectrogram_label_offset_seconds),
                                         schema.SPEC_WINDOW_FRAMES, tuple(cfg.kaggle_spec.log_clip))
    expected = kaggle_spec.raw_panels(window)
    assert tuple(item["spec"].shape) == (4, schema.SPEC_N_FREQS, schema.SPEC_WINDOW_FRAMES)
    np.testing.assert_allclose(item["spec"].float().numpy(), expected, rtol=2e-3, atol=2e-3)
    assert io.read_spectrogram(path).shape[1] == 1 + len(schema.SPEC_COLUMNS)


@pytest.mark.slow
def test_a_trained_context_fold_predicts_the_same_after_reloading(tiny_synth, tmp_path):
    from hms.training.experiment import train_experiment
    from hms.models.network import load_fold_network

    cfg = tiny_config(tiny_synth, tmp_path, "context.enabled=true", "train.stages=[{rows: all, epochs: 2, lr: 3.0e-3}]")
    train_experiment(cfg, folds=[0], progress=False)
    fold = tmp_path / "tiny" / "fold0"
    _, net = load_fold_network(fold, {})
    assert net.context is not None
    assert net.context.head[-1].weight.abs().max() > 0  # it trained away from its zero start
    saved = pd.read_csv(fold / "val_pred.csv")
    assert np.isfinite(saved[list(schema.VOTE_COLUMNS)].to_numpy()).all()
    from hms.cache.prepare import prepare
    from hms.cache.store import open_cache
    from hms.data.tables import load_train
    from hms.inputs.dataset import HMSDataset
    from hms.inputs.loaders import make_loader
    from hms.inference.batch import predict_probs

    caches = prepare(cfg, ("train",), progress=False)["train"]
    rows = load_train(cfg)
    ds = HMSDataset(rows[rows.fold == 0], open_cache(caches["eeg"]), open_cache(caches["spec"]), train=False,
                    use_spec=True, signal_cfg=cfg.signal)
    probs = predict_probs(net, make_loader(ds, cfg, shuffle=False), "cpu", tta_lr_swap=cfg.infer.tta_lr_swap)
    np.testing.assert_allclose(saved[list(schema.VOTE_COLUMNS)].to_numpy(), probs, atol=1e-6)
