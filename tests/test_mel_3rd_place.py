"""The MixNet member's image (configs/recipe/mixnet_xl_mel_zoom.yaml) against 3rd place's
published transform (github.com/darraghdog/kaggle-hms-3rd-place-solution, models/mdl_4.py and
configs/cfg_5a.py), recomputed here with librosa and numpy from their code's own numbers and
tables, not from this package's constants; plus absolute dB's two promises: a zeroed pair is
dark and amplitude changes the image. CPU, pretrained=False."""
from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import eeg_frame
from hms.data import schema
from hms.models import OnTheFlyMelNet, TorchMelSpectrogram, build_model

RECIPE = "configs/recipe/mixnet_xl_mel_zoom.yaml"
# 3rd place's pairs (their ds_1.py s0 - s1) and each pair's two neighbours (mdl_4.py mirror_ids2),
# in their order
THEIR_S0 = ["Fp1", "Fp2", "F7", "F8", "T3", "T4", "T5", "T6", "Fp1", "Fp2", "F3", "F4", "C3", "C4", "P3", "P4"]
THEIR_S1 = ["F7", "F8", "T3", "T4", "T5", "T6", "O1", "O2", "F3", "F4", "C3", "C4", "P3", "P4", "O1", "O2"]
THEIR_NEIGHBOURS = [[2, 8], [3, 9], [4, 0], [5, 1], [6, 2], [7, 3], [14, 4], [15, 5], [10, 0], [11, 1],
                    [12, 8], [13, 9], [14, 10], [15, 11], [6, 12], [7, 13]]
# cfg_5a.py: spec_args, spec_args_center, enlarge_len, cut_from_large_mel; AmplitudeToDB(top_db=100)
MAIN = dict(n_fft=512, win_length=128, hop_length=32)
CENTRE = dict(n_fft=2048, win_length=16, hop_length=4)
MELS = dict(sr=200, n_mels=64, fmin=0.53, fmax=30.0)
ENLARGE_LEN, CUT, TOP_DB = 2400, 0.2, 100.0


def recipe_model() -> OnTheFlyMelNet:
    cfg = OmegaConf.to_container(OmegaConf.load(RECIPE).model)
    return build_model({**cfg, "pretrained": False}).eval()


def their_mel_db(x: np.ndarray, stft: dict) -> np.ndarray:
    """torchaudio MelSpectrogram(**args) + AmplitudeToDB(top_db=100) on (16, T) signals, one
    sample: torchaudio's defaults are librosa's htk=True, norm=None, pad_mode='reflect'; dB re 1,
    and a 3D input is floored at its overall max - top_db."""
    power = np.stack([librosa.feature.melspectrogram(y=s, center=True, pad_mode="reflect", power=2.0,
                                                     htk=True, norm=None, **MELS, **stft) for s in x])
    db = 10.0 * np.log10(np.maximum(power, 1e-10))
    return np.maximum(db, db.max() - TOP_DB)


def their_image(window: np.ndarray) -> np.ndarray:
    """mdl_4.py's forward at eval (centre = win_len // 2) on (16, 10_000) signals in their pair
    order, written out with numpy: (3, 16 * 64, W)."""
    length = window.shape[-1]
    centre = length // 2
    start = min(max(centre - ENLARGE_LEN // 2, 0), length - ENLARGE_LEN)
    full = their_mel_db(window, MAIN)
    zoom = their_mel_db(window[:, start: start + ENLARGE_LEN], CENTRE)
    w = full.shape[-1]
    buff = int((w * CUT) // 2)
    cs = min(max(w * centre // length - buff, 0), w - buff * 2 - 1)
    img = np.concatenate([full[..., :cs], zoom, full[..., cs + 2 * buff:]], axis=-1)  # (16, 64, W)
    others = np.stack([np.delete(img, i, axis=0).mean(0) for i in range(16)])
    near = np.stack([img[nb].mean(0) for nb in THEIR_NEIGHBOURS])
    stacked = np.stack([img, img - others, img - near], axis=1)  # (16, 3, 64, W)
    return stacked.transpose(1, 0, 2, 3).reshape(3, 16 * 64, -1)


def fixture_window(zero_pair: bool = True) -> dict[str, np.ndarray]:
    """Electrode signals of a 50 s fixture EEG, scaled as 3rd place scale them (/32); with
    O1 = T5 the pair T5-O1 is flat zero."""
    frame = eeg_frame(seconds=50, seed=3)
    t = np.arange(len(frame)) / 200.0
    frame["T3"] += 60 * np.sin(2 * np.pi * 2.0 * t)  # a rhythm, so the panels differ
    if zero_pair:
        frame["O1"] = frame["T5"]
    return {c: frame[c].to_numpy(np.float64) / 32.0 for c in frame.columns}


def our_input(electrodes: dict[str, np.ndarray]) -> torch.Tensor:
    return torch.tensor(np.stack([electrodes[a] - electrodes[b] for a, b in schema.BIPOLAR_PAIRS]),
                        dtype=torch.float32)[None]


def test_recipe_image_matches_3rd_places_transform_recomputed_with_librosa():
    electrodes = fixture_window()
    theirs = their_image(np.stack([electrodes[a] - electrodes[b] for a, b in zip(THEIR_S0, THEIR_S1)]))
    model = recipe_model()
    with torch.no_grad():
        ours = model.signals_to_image(our_input(electrodes))[0].double().numpy()
    assert theirs.shape == ours.shape == (3, 1024, 852)  # 313 - 62 + 601 columns
    # float32 STFT against librosa's float64: a few thousandths of a dB on a 100 dB range
    np.testing.assert_allclose(ours, theirs, atol=5e-3, rtol=0)
    zeroed = THEIR_S0.index("T5")  # their panel 6: T5-O1
    panel = ours[0, zeroed * 64:(zeroed + 1) * 64]
    assert panel.max() == pytest.approx(theirs[0].max() - TOP_DB, abs=5e-3)  # the floor, everywhere


def test_recipe_config_builds_their_input_and_stem():
    model = recipe_model()
    stem = model.net.backbone.conv_stem
    assert (stem.in_channels, stem.kernel_size, stem.stride, stem.padding) == (3, (3, 3), (2, 2), (1, 1))
    image = model.signals_to_image(torch.randn(2, 16, 10_000))
    assert image.shape == (2, 3, 1024, 852)
    assert stem(image).shape == (2, 40, 512, 426)


def small_model(**kw) -> OnTheFlyMelNet:
    return OnTheFlyMelNet(backbone="resnet10t", layout="pairs_stack", n_fft=256, win_length=64, hop_length=32,
                          n_mels=16, fmin=0.5, fmax=30.0, width=63, **kw)


ABSOLUTE = dict(db_reference="absolute", top_db=100.0, db_offset=0.0, db_scale=1.0)


def panel(image: torch.Tensor, pair: int, n_mels: int = 16) -> torch.Tensor:
    return image[:, 0, pair * n_mels:(pair + 1) * n_mels]


def test_absolute_db_keeps_a_zeroed_pair_dark_and_a_quiet_pair_quieter():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 2000)
    x[0, 5] = 0.0  # a dropped pair (channel_dropout) or a flat channel
    model = small_model(**ABSOLUTE)
    image = model.signals_to_image(x)
    dark = panel(image, 5)[0]
    assert dark.max() < image[0].min() + 1e-4  # at the floor: the darkest value of the image
    assert dark.max() < panel(image, 4)[0].min()  # under every bin of a normal pair
    quiet = x.clone()
    quiet[:, 3] /= 50
    shift = panel(model.signals_to_image(quiet), 3) - panel(image, 3)
    torch.testing.assert_close(shift, torch.full_like(shift, -20 * np.log10(50)), atol=1e-3, rtol=0)


def test_max_referenced_db_is_todays_image_and_ignores_amplitude():
    """Today's default stays what it was (other configs): each pair's loudest bin is 0 dB."""
    torch.manual_seed(0)
    x = torch.randn(1, 16, 2000)
    model = small_model()
    quiet = x.clone()
    quiet[:, 3] /= 50
    torch.testing.assert_close(model.signals_to_image(quiet), model.signals_to_image(x), atol=1e-4, rtol=0)


def test_centre_zoom_replaces_the_central_fifth_of_the_full_view():
    common = dict(zoom_seconds=2.0, zoom_n_fft=512, zoom_win_length=16, zoom_hop_length=4, zoom_width=101)
    x = torch.randn(1, 16, 2000)  # 63 frames at hop 32
    right = small_model(**common).signals_to_image(x)
    centre = small_model(**common, zoom_placement="centre").signals_to_image(x)
    # 63 frames: 12 central columns (6 either side of column 31, from 25) give way to 101
    assert centre.shape[-1] == 63 - 12 + 101
    torch.testing.assert_close(centre[..., :25], right[..., :25])
    torch.testing.assert_close(centre[..., 25:126], right[..., 63:])
    torch.testing.assert_close(centre[..., 126:], right[..., 37:63])


@pytest.mark.parametrize("stft", [MAIN, CENTRE])
def test_torchaudio_style_mel_equals_librosa_htk_reflect_absolute(stft):
    rng = np.random.default_rng(1)
    x = rng.normal(0, 2, size=2400)
    mel = TorchMelSpectrogram(**MELS, **stft, mel_scale="htk", norm=None, pad_mode="reflect",
                              reference="absolute", top_db=TOP_DB)
    ours = mel(torch.tensor(x, dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(ours, their_mel_db(x[None], stft)[0], atol=2e-3, rtol=0)


@pytest.mark.parametrize("bad, match", [
    (dict(zoom_placement="middle"), "zoom_placement"),
    (dict(db_reference="peak"), "db_reference"),
    (dict(contrast_channels=True, layout="pairs_channels"), "pairs_stack"),
    (dict(panel_order="left_right", layout="chain_avg_stack"), "pairs layout"),
])
def test_mel_transform_options_refuse_bad_values(bad, match):
    kw = dict(backbone="resnet10t", layout="pairs_stack", n_mels=16, width=32)
    with pytest.raises(ValueError, match=match):
        OnTheFlyMelNet(**{**kw, **bad})
