import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import eeg_frame, spectrogram_frame
from hms.config import load_config
from hms.data import schema
from hms.signal import denoise, filters, kaggle_spec, montage
from hms.signal.spectrogram import eeg_panels, librosa_reference

FS = schema.SAMPLING_RATE


def test_montage_pairs_follow_the_double_banana_order():
    names = montage.montage_names()
    assert names[:4] == ["Fp1-F7", "F7-T3", "T3-T5", "T5-O1"]  # LL first, as Kaggle's regions
    assert names[4] == "Fp2-F8" and names[8] == "Fp1-F3" and names[15] == "P4-O2"
    assert montage.montage_names(["midline", "ekg"])[-3:] == ["Fz-Cz", "Cz-Pz", "EKG"]


def test_bipolar_is_anode_minus_cathode():
    eeg = eeg_frame(seconds=1).to_numpy()
    out = montage.bipolar(eeg, ["ekg"])
    col = {c: i for i, c in enumerate(schema.EEG_CHANNELS)}
    np.testing.assert_allclose(out[1], eeg[:, col["F7"]] - eeg[:, col["T3"]])
    np.testing.assert_allclose(out[-1], eeg[:, col["EKG"]])
    assert out.shape == (17, FS) and out.dtype == np.float32
    with pytest.raises(ValueError, match="unknown montage extras"):
        montage.bipolar(eeg, ["bogus"])


def _sine(freq, seconds=20):
    t = np.arange(seconds * FS) / FS
    return np.sin(2 * np.pi * freq * t).astype(np.float32)[None]


def _gain(x, y):
    core = slice(FS * 5, -FS * 5)  # ignore edge transients
    return np.std(y[..., core]) / np.std(x[..., core])


def test_bandpass_passes_10hz_and_attenuates_slow_drift_and_mains():
    assert _gain(_sine(10), filters.bandpass(_sine(10), 0.5, 20)) == pytest.approx(1, abs=0.05)
    assert _gain(_sine(0.1), filters.bandpass(_sine(0.1), 0.5, 20)) < 0.1
    assert _gain(_sine(60), filters.bandpass(_sine(60), 0.5, 20)) < 0.01
    assert _gain(_sine(60), filters.notch(_sine(60), 60, 30)) < 0.05
    assert _gain(_sine(10), filters.notch(_sine(10), 60, 30)) == pytest.approx(1, abs=0.02)


def test_clean_fills_nan_clips_and_scales():
    cfg = load_config().signal
    x = np.random.default_rng(0).normal(0, 5000, size=(2, 4000)).astype(np.float32)
    x[0, 100:300] = np.nan
    out, mask = filters.clean(x, cfg)
    assert np.isfinite(out).all() and mask[0, 100:300].all() and not mask[1].any()
    assert np.abs(out).max() <= cfg.clip_uv / cfg.scale + 1e-6


def test_wavelet_denoise_keeps_shape_and_reduces_white_noise():
    rng = np.random.default_rng(0)
    clean = _sine(3)
    noisy = clean + rng.normal(0, 0.5, clean.shape).astype(np.float32)
    for threshold in denoise.THRESHOLDS:
        out = denoise.wavelet_denoise(noisy, "db8", 1, threshold)
        assert out.shape == noisy.shape
        assert np.sqrt(np.mean((out - clean) ** 2)) < 0.85 * np.sqrt(np.mean((noisy - clean) ** 2))


def test_torch_panels_match_librosa_within_005_db():
    cfg = load_config().mel
    signals = np.random.default_rng(1).normal(0, 30, size=(2, 16, 10_000)).astype(np.float32)
    ours = eeg_panels(signals, cfg).numpy()
    ref = librosa_reference(signals, cfg)
    assert ours.shape == ref.shape == (2, 4, 128, 256)
    assert np.abs(ours - ref).max() * 40 < 0.05  # panels are (dB + 40) / 40


@pytest.mark.parametrize("offset, first_valid, last_valid", [
    (0, 0, 299),      # window starts at the file's first frame
    (200, 0, 299),    # an interior window
    (1000, 0, 199),   # runs 100 frames past the end: NaN rows there
])
def test_kaggle_window_extraction_at_boundaries(offset, first_valid, last_valid):
    frames = spectrogram_frame(seconds=1400)  # times 1, 3, ..., 1399: 700 frames
    times = frames[schema.SPEC_TIME_COLUMN].to_numpy()
    values = frames[list(schema.SPEC_COLUMNS)].to_numpy()
    start = kaggle_spec.window_start(times[0], offset)
    window = kaggle_spec.take_window(values, start)
    assert window.shape == (300, 400)
    valid = np.flatnonzero(np.isfinite(window[:, 0]))
    assert (valid.min(), valid.max()) == (first_valid, last_valid)
    assert times[start] == offset + 1  # first frame inside [offset, offset + 600)
    np.testing.assert_array_equal(window[0], values[start])


def test_panels_are_normalised_and_nan_safe():
    window = np.log(spectrogram_frame().iloc[:, 1:].to_numpy())
    window[:50] = np.nan
    panels = kaggle_spec.to_panels(window)
    assert panels.shape == (4, 100, 300) and np.isfinite(panels).all()
    assert abs(panels[:, :, 50:].mean()) < 1e-4 and (panels[:, :, :50] == 0).all()


def test_zoomed_centre_view_is_the_mel_of_the_central_seconds():
    import torch.nn.functional as F

    from hms.models.network import ImageBuilder
    from hms.signal.spectrogram import centre_crop

    mel = {**dict(load_config().mel), "center_seconds": 10, "n_mels": 32}
    builder = ImageBuilder(sources=["eeg", "eeg_center"], layout="channels", panel_height=32, panel_width=64, mel=mel)
    signal = torch.randn(2, 16, 10_000)
    image = builder({"signal": signal, "spec": torch.zeros(2, 4, 1, 1)})
    assert image.shape == (2, 8, 32, 64) and builder.in_chans == 8
    centre = builder.eeg_panels(centre_crop(signal, 10))
    torch.testing.assert_close(image[:, 4:], F.interpolate(centre, size=(32, 64), mode="bilinear", align_corners=False))
    assert not torch.allclose(image[:, :4], image[:, 4:])
    with pytest.raises(ValueError, match="center_seconds"):
        ImageBuilder(sources=["eeg_center"], mel={**mel, "center_seconds": None})


# ---------------------------------------------------------------- per-window cleaning

def test_device_cleaner_matches_scipy_filtfilt_away_from_the_edges():
    import torch

    from hms.config import load_config
    from hms.signal.cleaner import WindowCleaner

    cfg = load_config([], [])
    rng = np.random.default_rng(0)
    raw = (np.cumsum(rng.normal(size=(2, 16, 10_000)), -1) * 3 + 300).astype(np.float32)  # drift + DC
    reference, _ = filters.clean(raw, cfg.signal)  # scipy sosfiltfilt + filtfilt, clip, scale
    got = WindowCleaner(dict(cfg.signal))(torch.from_numpy(raw)).numpy()
    interior = np.s_[..., 1000:-1000]  # 5 s in: only the edge rule differs (odd extension vs zi)
    rms = reference[interior].std()
    assert np.abs(got[interior] - reference[interior]).max() < 0.01 * rms
    assert np.sqrt(np.mean((got - reference) ** 2)) < 0.1 * rms


def test_cleaner_crops_the_centre_and_decimates():
    import torch

    from hms.signal.cleaner import WindowCleaner

    ramp = torch.arange(10_000, dtype=torch.float32).repeat(1, 2, 1)
    out = WindowCleaner({"scale": 2.0}, signal_seconds=10, downsample=4)(ramp)
    assert out.shape == (1, 2, 500)
    assert out[0, 0, 0] == 4000 / 2 and out[0, 0, 1] == 4004 / 2  # samples 4000, 4004, ... of the 50 s


def test_a_train_window_and_the_same_50_s_as_a_test_file_give_the_same_model_input(tmp_path):
    """The model input of a 50 s window must not depend on where the window came from: a long
    train EEG (cached as one span, with NaN outside the window) or a 50 s test file."""
    import pandas as pd
    import torch

    from conftest import eeg_frame, tiny_config
    from hms.cache.store import build_cache, open_cache
    from hms.inputs.dataset import HMSDataset
    from hms.models.network import build_network

    long = eeg_frame(seconds=120, seed=3) + 150.0  # a DC offset, as raw referential EEG has
    long.loc[5 * 200: 9 * 200, "Fp1"] = np.nan  # outside the window: must not change its fill
    long.loc[40 * 200: 41 * 200, "T3"] = np.nan  # inside the window
    data = tmp_path / "data"
    for d in (schema.TRAIN_EEG_DIR, schema.TEST_EEG_DIR):
        (data / d).mkdir(parents=True)
    long.to_parquet(data / schema.TRAIN_EEG_DIR / "7.parquet", index=False)
    long.iloc[30 * 200: 80 * 200].to_parquet(data / schema.TEST_EEG_DIR / "8.parquet", index=False)
    votes = [[3, 0, 0, 0, 0, 0], [0, 3, 0, 0, 0, 0], [0, 0, 3, 0, 0, 0]]  # one item per offset
    train = pd.DataFrame([{"eeg_id": 7, "eeg_sub_id": i, "eeg_label_offset_seconds": off, "spectrogram_id": 1,
                           "spectrogram_sub_id": i, "spectrogram_label_offset_seconds": off, "label_id": i,
                           "patient_id": 1, "expert_consensus": "x", **dict(zip(schema.VOTE_COLUMNS, v))}
                          for i, (off, v) in enumerate(zip((0.0, 30.0, 70.0), votes))])
    test = pd.DataFrame({"spectrogram_id": [2], "eeg_id": [8], "patient_id": [2]})
    cfg = tiny_config(data, tmp_path / "work", "input.downsample=1")
    caches = {split: open_cache(build_cache(cfg, data, split, "eeg", table, workers=1, progress=False))
              for split, table in (("train", train), ("test", test))}
    from_train = HMSDataset(train, caches["train"], None, train=False, use_spec=False,
                            signal_cfg=cfg.signal)
    from_test = HMSDataset(test, caches["test"], None, train=False, use_spec=False,
                           signal_cfg=cfg.signal)
    item = int(np.flatnonzero(from_train.items.eeg_label_offset_seconds.to_numpy() == 30.0)[0])
    net = build_network(cfg)
    with torch.no_grad():
        a = net.model_signal(from_train[item]["signal"][None])
        b = net.model_signal(from_test[0]["signal"][None])
    assert a.shape == b.shape == (1, 16, 10_000)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_mirror_order_swaps_left_and_right_electrodes_by_name():
    """data.schema's left/right mirror order (used by the datasets, TTA and qEEG features), held to
    the double-banana montage's literal pairs rather than to the chains the schema builds it from."""
    from hms.data import schema

    mirror = {"Fp1-F7": "Fp2-F8", "F7-T3": "F8-T4", "T3-T5": "T4-T6", "T5-O1": "T6-O2",
              "Fp1-F3": "Fp2-F4", "F3-C3": "F4-C4", "C3-P3": "C4-P4", "P3-O1": "P4-O2"}
    mirror.update({right: left for left, right in mirror.items()})
    names = list(schema.BIPOLAR_NAMES)
    assert [names[i] for i in schema.MIRROR_SIGNALS] == [mirror[n] for n in names]
    assert [schema.CHAIN_NAMES[i] for i in schema.MIRROR_PANELS] == ["RL", "LL", "RP", "LP"]
    assert schema.mirror_order(18)[16:] == [16, 17]  # extras (midline) stay in place
