"""Models: shapes, trainability (overfit a tiny batch), GeM, the torch mel spectrogram
against librosa, backbone checkpoints and the factory's errors. CPU only, no network
(pretrained=False everywhere), tiny sizes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hms.data.schema import N_CLASSES
from hms.models import (
    GeM, OnTheFlyMelNet, TimmSpectrogramNet, TorchMelSpectrogram, build_model, model_input, registered,
)
from hms.models import registry

B = 4
T = 1000  # 5 s at 200 Hz: enough for every 1D model's downsampling
INPUT_SHAPES = {"image": (B, 1, 64, 128), "signal": (B, 16, T)}  # per registered input_kind
TINY = {  # a config per kind trained by gradient steps, small enough for 2 CPU cores
    "timm2d": {"kind": "timm2d", "backbone": "efficientnet_b0", "in_chans": 1},
    "timm_mel": {"kind": "timm_mel", "backbone": "mixnet_s", "n_mels": 32, "width": 64,
                 "fmax": 20.0, "layout": "chain_avg_stack"},
    "eeg_image": {"kind": "eeg_image", "backbone": "resnet10t", "rows_per_signal": 10,
                  "image_size": [64, 64]},  # 160 x 100, resized
    "conv1d": {"kind": "conv1d", "stage_channels": [16, 32], "kernel_sizes": [3, 9],
               "mix_channels": 8, "chain_channels": 4, "strides": 2, "pools": 4},
    "wavenet": {"kind": "wavenet", "channels": [4, 8], "dilation_levels": [4, 2], "pool": 4,
                "head_hidden": 16},
    "cnn_gru": {"kind": "cnn_gru", "channels": [16, 32], "strides": [4, 4], "hidden": 16,
                "rnn_layers": 1},
}


def tiny(kind):
    """(config, input shape) of a kind: the shape from the registry's input_kind."""
    return TINY[kind], INPUT_SHAPES[registered()[kind].input_kind]


def _batch(shape, seed=0):
    """Random inputs + soft targets. Signals get per-sample amplitude and rhythm: iid
    white noise has the same statistics in every sample, so a model that pools over time
    (as it should) could not tell the samples apart, and the overfit check would test
    the data rather than the model."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    if len(shape) == 3:
        n, t = shape[0], shape[-1]
        x = x * torch.linspace(0.2, 3.0, n).view(n, 1, 1) + torch.sin(
            torch.arange(t) * torch.linspace(0.05, 0.6, n).view(n, 1, 1))
    target = torch.distributions.Dirichlet(torch.ones(N_CLASSES)).sample((shape[0],))
    return x, target


def test_every_registered_kind_has_an_input_type_and_a_tiny_config():
    models = registered()
    fitted = {k for k, c in models.items() if getattr(c, "fitted_once", False)}
    assert fitted == {"qeeg_trees"}  # no gradient steps: tests/test_trees.py holds it
    assert set(models) == set(TINY) | fitted  # a new kind needs its tiny config here
    assert {k: c.input_kind for k, c in models.items() if k in ("timm2d", "wavenet", "eeg_image")} == {
        "timm2d": "image", "wavenet": "signal", "eeg_image": "signal"}
    assert all(model_input({"kind": k}) == c.input_kind for k, c in models.items())
    assert {k for k, c in models.items() if getattr(c, "reads_spec", False)} == {"qeeg_trees"}


@pytest.mark.parametrize("kind", sorted(registered()))
def test_every_registered_kind_rejects_an_unknown_key_naming_the_allowed_ones(kind):
    from hms.models.factory import model_kwargs

    allowed = sorted(model_kwargs(kind))
    with pytest.raises(ValueError, match=rf"'{kind}'.*\['not_a_key'\].*allowed: \[{allowed[0]!r}"):
        build_model({"kind": kind, "not_a_key": 1})


def test_the_kinds_that_build_their_own_image_take_the_timm_head_keys_of_timm2d():
    """timm_mel and eeg_image hand their timm keys to the one head (TimmSpectrogramNet) through
    **timm: the same keys and defaults as timm2d less in_chans (their image decides it), and
    each reaches the head."""
    from hms.models.factory import model_kwargs

    own = {k for k, c in registered().items() if getattr(c, "builds_own_image", False)}
    assert own == {"timm_mel", "eeg_image"}
    head = {k: v for k, v in model_kwargs("timm2d").items() if k != "in_chans"}
    for kind in sorted(own):
        accepted = model_kwargs(kind)
        assert "in_chans" not in accepted and {k: accepted[k] for k in head} == head
        with pytest.raises(ValueError, match="unknown keys \\['in_chans'\\]"):
            build_model({"kind": kind, "in_chans": 3})
    net = build_model({"kind": "eeg_image", "backbone": "resnet10t", "drop_rate": 0.5, "gem_p": 2.0,
                       "gem_trainable": False, "n_classes": 3})
    assert isinstance(net.net, TimmSpectrogramNet) and net.net.backbone_name == "resnet10t"
    assert net.net.dropout.p == 0.5 and net.net.pool.p.item() == 2.0 and not net.net.pool.p.requires_grad
    assert net(torch.randn(2, 16, 1000)).shape == (2, 3)


def test_a_new_kind_is_one_decorated_class(monkeypatch):
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))  # leave the real registry as it was

    @registry.register("toy_mean")
    class ToyMean(torch.nn.Module):
        input_kind = "signal"

        def __init__(self, n_signals: int = 16, scale: float = 1.0):
            super().__init__()
            self.head = torch.nn.Linear(n_signals, N_CLASSES)

        def forward(self, x):
            return self.head(x.mean(-1))

    assert ToyMean.kind == "toy_mean" and "toy_mean" in registered()
    assert model_input({"kind": "toy_mean"}) == "signal"
    assert build_model({"kind": "toy_mean", "scale": 2.0})(torch.randn(2, 16, 50)).shape == (2, N_CLASSES)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("toy_mean")(type("Other", (torch.nn.Module,), {"input_kind": "signal"}))
    with pytest.raises(TypeError, match="input_kind"):
        registry.register("no_input")(type("NoInput", (torch.nn.Module,), {}))


@pytest.mark.parametrize("kind", sorted(TINY))
def test_every_kind_returns_finite_logits(kind):
    torch.manual_seed(0)
    cfg, shape = tiny(kind)
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model(torch.randn(shape))
    assert out.shape == (B, N_CLASSES)
    assert torch.isfinite(out).all()
    assert out.std() > 0  # not a constant head


@pytest.mark.parametrize("kind", sorted(TINY))
def test_each_family_overfits_a_tiny_batch(kind):
    torch.manual_seed(0)
    cfg, shape = tiny(kind)
    model = build_model({**cfg, "drop_rate": 0.0}).train()
    x, target = _batch(shape)
    # the tiny WaveNet (gated tanh*sigmoid units, few channels) learns slowly at 3e-3
    opt = torch.optim.Adam(model.parameters(), lr=1e-2 if kind == "wavenet" else 3e-3)
    kl = torch.nn.KLDivLoss(reduction="batchmean")
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = kl(F.log_softmax(model(x), dim=1), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all()
    print(kind, "loss ratio", losses[-1] / losses[0])
    assert losses[-1] < 0.3 * losses[0], (kind, losses[0], losses[-1])


def test_gem_p1_is_average_pooling_and_p_learns():
    x = torch.rand(2, 3, 5, 7) + 0.1
    gem = GeM(p=1.0)
    torch.testing.assert_close(gem(x), F.adaptive_avg_pool2d(x, 1).flatten(1))
    big = GeM(p=60.0, trainable=False)(x)  # large p approaches max pooling
    assert (big > x.mean(dim=(2, 3)) + 0.2).all()
    assert torch.allclose(big, x.amax(dim=(2, 3)), rtol=0.1)
    gem3 = GeM()
    assert gem3.p.item() == pytest.approx(3.0)
    gem3(x).sum().backward()
    assert gem3.p.grad is not None and gem3.p.grad.abs().item() > 0


REFERENCE_CALL = dict(sr=200, hop_divisor=256, top_db=80.0)  # the librosa call's rate, hop (T // 256), floor
MEL_PARAMETER_SETS = [
    dict(n_fft=1024, win_length=128, n_mels=128, fmin=0.0, fmax=20.0),  # the starter recipe
    dict(n_fft=1024, win_length=128, n_mels=64, fmin=0.5, fmax=30.0),  # 3rd place's variant
    dict(n_fft=512, win_length=127, n_mels=32, fmin=0.0, fmax=40.0),  # odd window: no centre sample
    dict(n_fft=256, win_length=256, n_mels=48, fmin=1.0, fmax=25.0),  # window fills n_fft
]


@pytest.mark.parametrize("params", MEL_PARAMETER_SETS, ids=lambda p: f"win{p['win_length']}-mels{p['n_mels']}")
def test_torch_mel_matches_librosa(params):
    librosa = pytest.importorskip("librosa")
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(10_000) * 20).astype(np.float32)
    hop = 10_000 // 256
    ref = librosa.power_to_db(
        librosa.feature.melspectrogram(y=x, sr=200, hop_length=hop, **params), ref=np.max, top_db=80)
    out = TorchMelSpectrogram(**params, **REFERENCE_CALL)(torch.from_numpy(x)).numpy()
    assert out.shape == ref.shape == (params["n_mels"], 1 + 10_000 // hop)
    assert np.abs(out - ref).max() < 0.05
    assert ref.max() == 0 and ref.min() < -20  # the comparison spans a real dB range


@pytest.mark.parametrize("sr, n_fft, n_mels, fmin, fmax", [
    (200, 1024, 128, 0.0, 20.0), (50, 256, 32, 0.0, 20.0), (200, 1024, 64, 0.5, 30.0),
    (22050, 2048, 128, 0.0, 11025.0),  # audio rates reach the log part of Slaney's scale
])
def test_mel_filter_bank_equals_librosa(sr, n_fft, n_mels, fmin, fmax):
    librosa = pytest.importorskip("librosa")
    from hms.signal.melspec import mel_filter_bank

    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    np.testing.assert_allclose(mel_filter_bank(sr, n_fft, n_mels, fmin, fmax).numpy(), ref, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("params", MEL_PARAMETER_SETS, ids=lambda p: f"win{p['win_length']}-mels{p['n_mels']}")
def test_banded_mel_filters_rebuild_the_dense_bank(params):
    mel = TorchMelSpectrogram(**params, **REFERENCE_CALL)
    rebuilt = torch.zeros_like(mel.mel_fb).scatter_add_(1, mel.band_bins, mel.band_weights)
    torch.testing.assert_close(rebuilt, mel.mel_fb, atol=0, rtol=0)


def starter_mel() -> TorchMelSpectrogram:
    """The starter's mel at 200 Hz, from base.yaml's `mel:` section (its one home)."""
    from hms.config import load_config
    from hms.signal.spectrogram import mel_module

    return mel_module(load_config().mel)


def test_the_mel_numbers_are_stated_by_each_kind_not_by_the_transform():
    """TorchMelSpectrogram states no rate, STFT, mel or floor numbers of its own (base.yaml's `mel:`
    states timm2d's and the viewer's, timm_mel's constructor its own), and needs a hop."""
    import inspect

    params = inspect.signature(TorchMelSpectrogram.__init__).parameters
    numbers = ("sr", "n_fft", "win_length", "n_mels", "fmin", "fmax", "top_db")
    assert all(params[k].default is inspect.Parameter.empty for k in numbers)
    with pytest.raises(TypeError, match="sr"):
        TorchMelSpectrogram(**MEL_PARAMETER_SETS[0], hop_divisor=256, top_db=80.0)
    with pytest.raises(ValueError, match="hop_length or hop_divisor"):
        TorchMelSpectrogram(**MEL_PARAMETER_SETS[0], sr=200, top_db=80.0)


@pytest.mark.parametrize("group", [1, 4])
def test_fused_mean_db_equals_the_per_signal_autograd_path(group):
    """Without gradients, group means come from one log of a product per group, a few
    signals at a time; with gradients, from per-signal dB. Both must give the same numbers."""
    mel = starter_mel()
    x = torch.randn(2, 16, 10_000) * 20
    x[0, 3] = 0.0  # a flat channel: every bin at the amin floor
    fused = mel.mean_db(x, group)
    differentiable = mel.mean_db(x.clone().requires_grad_(True), group)
    assert fused.shape == (2, 16 // group, 128, 257) and differentiable.requires_grad
    torch.testing.assert_close(fused, differentiable.detach(), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="groups of 3"):
        mel.mean_db(x, 3)
    # a pure 5 Hz tone leaves most bins on the -80 dB floor: a product of 16 floors (1e-128)
    # would underflow float32 to -inf, so groups that large must take the per-signal path
    tone = (20 * torch.sin(2 * torch.pi * 5 * torch.arange(10_000) / 200)).expand(1, 16, -1).clone()
    whole = mel.mean_db(tone, 16)
    assert torch.isfinite(whole).all()
    torch.testing.assert_close(whole[:, 0], mel(tone).mean(1), atol=1e-3, rtol=0)
    x_grad = x.clone().requires_grad_(True)
    mel.mean_db(x_grad, group)[..., 10:20, :].sum().backward()  # input saliency needs a differentiable path
    assert torch.isfinite(x_grad.grad).all() and x_grad.grad.abs().sum() > 0


def test_torch_mel_batches_independently():
    mel = TorchMelSpectrogram(**{**MEL_PARAMETER_SETS[0], **REFERENCE_CALL, "n_mels": 32})
    x = torch.randn(2, 3, 2000)
    x[1, 2] *= 100  # a loud signal must not change the others' max reference
    out = mel(x)
    assert out.shape[:3] == (2, 3, 32)
    torch.testing.assert_close(out[0, 1], mel(x[0, 1]))
    torch.testing.assert_close(out[1, 2], mel(x[1, 2]))


@pytest.mark.parametrize("layout,channels,height", [
    ("chain_avg_stack", 1, 4 * 16), ("chain_avg_channels", 4, 16),
    ("pairs_stack", 1, 16 * 16), ("pairs_channels", 16, 16),
])
def test_mel_layouts(layout, channels, height):
    model = OnTheFlyMelNet(backbone="resnet18", n_mels=16, width=32, layout=layout)
    img = model.signals_to_image(torch.randn(2, 16, 1000))
    assert img.shape == (2, channels, height, 32)


def test_chain_average_is_the_mean_of_pair_panels():
    model = OnTheFlyMelNet(backbone="resnet18", n_mels=16, width=32, n_signals=18,
                           layout="chain_avg_channels")
    x = torch.randn(1, 18, 1000)
    img = model.signals_to_image(x)
    pairs = (model.mel(x)[..., :32] + 40) / 40
    assert img.shape[1] == 5  # 4 chains + the 2 midline pairs as a fifth group
    torch.testing.assert_close(img[0, 1], pairs[0, 4:8].mean(0))
    torch.testing.assert_close(img[0, 4], pairs[0, 16:18].mean(0))
    resized = OnTheFlyMelNet(backbone="resnet18", n_mels=16, width=32, image_size=(48, 40))
    assert resized.signals_to_image(torch.randn(1, 16, 1000)).shape == (1, 1, 48, 40)


def test_backbone_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    source = TimmSpectrogramNet(backbone="resnet18", in_chans=1)
    path = tmp_path / "backbone.pt"
    torch.save(source.backbone.state_dict(), path)
    torch.manual_seed(2)
    loaded = TimmSpectrogramNet(backbone="resnet18", in_chans=1, checkpoint_path=str(path))
    fresh = TimmSpectrogramNet(backbone="resnet18", in_chans=1)
    for key, value in source.backbone.state_dict().items():
        torch.testing.assert_close(loaded.backbone.state_dict()[key], value)
    assert not torch.equal(fresh.backbone.conv1.weight, source.backbone.conv1.weight)


def test_three_channel_checkpoint_is_adapted_to_one_channel(tmp_path):
    rgb = TimmSpectrogramNet(backbone="resnet18", in_chans=3)
    path = tmp_path / "rgb.pt"
    torch.save({"state_dict": rgb.backbone.state_dict()}, path)
    gray = build_model({"kind": "timm2d", "backbone": "resnet18", "in_chans": 1,
                        "checkpoint_path": str(path)})
    expected = rgb.backbone.conv1.weight.sum(dim=1, keepdim=True)
    torch.testing.assert_close(gray.backbone.conv1.weight, expected)


def test_missing_checkpoint_names_the_path(tmp_path):
    missing = tmp_path / "nope" / "weights.pth"
    with pytest.raises(FileNotFoundError, match="weights.pth"):
        build_model({"kind": "timm2d", "backbone": "resnet18", "checkpoint_path": str(missing)})


def test_factory_errors_name_kind_and_allowed_values():
    with pytest.raises(ValueError, match="transformer.*allowed.*cnn_gru"):
        build_model({"kind": "transformer"})
    with pytest.raises(ValueError, match="'wavenet'.*n_layerz"):
        build_model({"kind": "wavenet", "n_layerz": 3})
    with pytest.raises(ValueError, match="layout"):
        build_model({"kind": "timm_mel", "backbone": "resnet18", "layout": "diagonal"})


def test_factory_accepts_omegaconf():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"kind": "cnn_gru", "channels": [8, 8], "strides": [4, 4], "hidden": 8})
    model = build_model(cfg)
    assert model(torch.randn(2, 16, 400)).shape == (2, N_CLASSES)


def test_gradcam_target_gets_activations_and_gradients():
    model = build_model(TINY["timm2d"]).eval()
    seen = {}
    layer = model.gradcam_target_layer()

    def hook(module, inputs, output):
        seen["act"] = output
        output.register_hook(lambda grad: seen.update(grad=grad))

    layer.register_forward_hook(hook)
    model(torch.randn(1, 1, 64, 128))[0, 2].backward()
    assert seen["act"].ndim == 4 and seen["act"].shape[1] == model.backbone.num_features
    assert seen["grad"].shape == seen["act"].shape and seen["grad"].abs().sum() > 0


# ---------------------------------------------------------------- timm families: pooling, Grad-CAM
# Small real timm models (random weights) shrunk through backbone_kwargs where a family's
# smallest variant is still heavy on 2 cores; 64 x 64 images.
FAMILIES = {
    "cnn": ("resnet10t", {}, "NCHW"),
    "vit_tokens": ("vit_tiny_patch16_224", {"img_size": 64, "depth": 2}, "NLC"),
    "swin_channels_last": ("swin_tiny_patch4_window7_224",
                           {"img_size": 64, "window_size": 2, "embed_dim": 24, "depths": (1, 1, 1, 1),
                            "num_heads": (1, 1, 1, 1)}, "NHWC"),
    "tiny_vit": ("tiny_vit_5m_224", {"depths": (1, 1, 1, 1)}, "NCHW"),
    "maxvit": ("maxvit_nano_rw_256", {"img_size": 64}, "NCHW"),
}


def _family(name):
    backbone, kwargs, fmt = FAMILIES[name]
    torch.manual_seed(0)
    model = build_model({"kind": "timm2d", "backbone": backbone, "in_chans": 1, "backbone_kwargs": kwargs})
    return model.eval(), fmt


def _reference_pool(model, raw):
    """Each family's pooling written out from timm's conventions, on forward_features' raw output."""
    bb = model.backbone
    if model.feature_format == "NLC":  # vit_tiny's global_pool 'token': the class token (already normed)
        assert bb.global_pool == "token"
        return raw[:, 0]
    if model.feature_format == "NHWC":  # Swin: average over positions of the LayerNormed map
        return raw.mean(dim=(1, 2))
    if model.pool is not None:  # GeM, p = 3
        return raw.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)
    pooled = raw.mean(dim=(2, 3), keepdim=True)  # MaxViT / TinyViT: average, then the head's norm if any
    norm = getattr(bb.head, "norm", torch.nn.Identity())
    return norm(pooled).flatten(1)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_timm_family_pools_to_its_width_as_timm_does(name):
    model, fmt = _family(name)
    assert model.feature_format == fmt
    assert (model.pool is not None) == (name == "cnn")  # GeM only on activation maps
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        raw = model.backbone.forward_features(x)
        feats = model.forward_features(x)
        pooled = model.pool_features(feats)
        logits = model(x)
    assert pooled.shape == (2, model.head.in_features) and logits.shape == (2, N_CLASSES)
    assert model.head.in_features == model.backbone.num_features
    torch.testing.assert_close(pooled, _reference_pool(model, raw))
    if fmt != "NLC":  # Grad-CAM's tap sees (B, C, h, w) for every map family
        assert feats.ndim == 4 and feats.shape[1] == model.backbone.num_features
    assert torch.isfinite(logits).all() and logits.std() > 0


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_gradcam_works_on_map_families_and_refuses_tokens_by_name(name):
    from hms.report.explain import gradcam

    model, fmt = _family(name)
    image = torch.randn(1, 1, 64, 64)
    if fmt == "NLC":
        with pytest.raises(ValueError, match="vit_tiny_patch16_224 gives tokens"):
            model.gradcam_target_layer()
        return
    cam, probs, k = gradcam(model, model.gradcam_target_layer(), image)
    assert cam.shape == (64, 64) and cam.min() == 0 and cam.max() == pytest.approx(1, abs=1e-6)
    assert probs.sum() == pytest.approx(1) and k == int(probs.argmax())


def test_a_backbone_whose_features_contradict_its_metadata_is_named():
    model, _ = _family("cnn")
    model.feature_format = "NLC"  # as if timm's metadata said tokens
    with pytest.raises(ValueError, match=r"resnet10t returned features \(1, 512, 2, 2\), not the NLC layout"):
        model(torch.randn(1, 1, 64, 64))


def test_raw_eeg_image_stacks_each_signals_rows_in_order():
    model = build_model({**TINY["eeg_image"], "image_size": None})
    x = torch.arange(16 * 1003, dtype=torch.float32).reshape(1, 16, 1003)
    image = model.signals_to_image(x)
    assert image.shape == (1, 1, 160, 100)  # the 3 samples past the last full row dropped
    torch.testing.assert_close(image[0, 0, 10], x[0, 1, :100])  # signal 1's first row
    torch.testing.assert_close(image[0, 0, 19], x[0, 1, 900:1000])  # and its last
    with pytest.raises(ValueError, match="expected 16 signals, got 18"):
        model.signals_to_image(torch.randn(1, 18, 1000))


@pytest.mark.parametrize("layout", ["pairs_stack", "chain_avg_channels"])
def test_mel_zoom_view_sits_right_of_the_full_view(layout):
    common = dict(backbone="resnet10t", layout=layout, n_fft=256, win_length=64, hop_length=16, n_mels=16,
                  fmin=0.5, fmax=30.0, width=64)
    plain = OnTheFlyMelNet(**common)
    zoomed = OnTheFlyMelNet(**common, zoom_seconds=2.0, zoom_n_fft=512, zoom_win_length=16, zoom_hop_length=4,
                            zoom_width=96)
    x = torch.randn(2, 16, 2000)  # 10 s at 200 Hz
    full, both = plain.signals_to_image(x), zoomed.signals_to_image(x)
    assert both.shape[:-1] == full.shape[:-1] and both.shape[-1] == 64 + 96
    torch.testing.assert_close(both[..., :64], full)
    centre = x[..., 800:1200]  # the central 2 s
    expected = zoomed._panels_db(centre, zoomed.zoom, 96)
    if layout.endswith("_stack"):
        expected = expected.flatten(1, 2).unsqueeze(1)
    torch.testing.assert_close(both[..., 64:], (expected + 40) / 40)
    assert zoomed(x).shape == (2, N_CLASSES)


def test_the_1d_and_tree_paths_do_not_import_timm():
    """timm (and the torchvision it pulls in) costs ~2.5 s per process: every 1D and tree run,
    and every CLI process, would pay it for nothing. It loads when a 2D model is built."""
    import subprocess
    import sys

    probe = ("import sys, hms.jobs.run, hms.training.loop, hms.models; "
             "print(*[m in sys.modules for m in ('timm', 'torchvision')]); "
             "hms.models.build_model({'kind': 'timm2d', 'backbone': 'resnet10t', 'pretrained': False}); "
             "print('timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "True"]
