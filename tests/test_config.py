"""load_config refuses keys base.yaml does not define, except in its declared free-form sections."""
from pathlib import Path

import pytest

from hms.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("override, named, suggested", [
    ("train.batchsize=8", "train.batchsize", "train.batch_size"),
    ("signal.bandpas=[1,30]", "signal.bandpas", "signal.bandpass"),
    ("train.stages=[{rows: all, epoch: 3, lr: 0.001}]", "train.stages[].epoch", "train.stages[].epochs"),
])
def test_a_misspelled_override_names_the_key_and_the_closest_one(override, named, suggested):
    with pytest.raises(ConfigError) as err:
        load_config([], [override])
    assert f"{named} (did you mean {suggested}?)" in str(err.value)


def test_a_misspelled_key_in_an_experiment_file_names_the_file(tmp_path):
    exp = tmp_path / "typo.yaml"
    exp.write_text("name: typo\naugment: {lr_swap: 0.5, mixup_alhpa: 0.4}\n")
    with pytest.raises(ConfigError) as err:
        load_config([exp])
    assert str(exp) in str(err.value) and "augment.mixup_alhpa (did you mean augment.mixup_alpha?)" in str(err.value)


def test_an_inherited_file_is_checked_too(tmp_path):
    (tmp_path / "parent.yaml").write_text("train: {patiense: 2}\n")
    (tmp_path / "child.yaml").write_text("inherit: parent.yaml\nname: child\n")
    with pytest.raises(ConfigError, match=r"train\.patiense \(did you mean train\.patience\?\)"):
        load_config([tmp_path / "child.yaml"])


def test_free_form_sections_and_known_keys_load():
    cfg = load_config([], ["model.backbone_kwargs={in_chans: 3}", "model.anything=1", "train.batch_size=8",
                           "train.stages=[{rows: high, epochs: 1, lr: 0.1, low_vote_weight: [0.8, 0.2]}]",
                           "image.image_size=[64,128]"])
    assert cfg.model.backbone_kwargs.in_chans == 3 and cfg.train.batch_size == 8
    assert cfg.train.stages[0].low_vote_weight == [0.8, 0.2] and list(cfg.image.image_size) == [64, 128]
    assert "free_form" not in cfg  # the declaration is not a setting


def test_every_shipped_config_loads():
    from hms.jobs.throughput import THROUGHPUT_FILE

    files = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.name not in ("base.yaml", THROUGHPUT_FILE))
    assert len(files) >= 8
    for path in files:
        assert load_config([path]).model.kind, path


# ---------------------------------------------------------------- derived sampling rates

def test_mel_rates_follow_input_downsample_and_an_explicit_other_rate_names_both_keys():
    """mel.sr and timm_mel's model.sr are the signals' rate, 200 Hz / input.downsample: derived
    when left out, accepted when equal, refused (naming the key and input.downsample) otherwise."""
    from hms.models.network import build_network

    timm2d = ["input.downsample=4", "model.backbone=resnet10t", "image.sources=[eeg]", "mel.n_mels=16",
              "mel.width=32", "image.panel_height=16", "image.panel_width=32"]
    assert load_config([], timm2d).mel.sr is None
    assert build_network(load_config([], timm2d)).builder.sr == 50.0
    assert build_network(load_config([], [*timm2d, "mel.sr=50"])).builder.sr == 50
    with pytest.raises(ConfigError, match=r"mel\.sr: 200 does not match input\.downsample: 4 .* = 50 Hz"):
        load_config([], [*timm2d, "mel.sr=200"])
    mel_net = ROOT / "configs" / "demo_2d" / "screen_mel_today.yaml"  # input.downsample 2
    assert build_network(load_config([mel_net])).core.sr == 100.0
    with pytest.raises(ConfigError, match=r"model\.sr: 200 does not match input\.downsample: 2"):
        load_config([mel_net], ["model.sr=200"])
    with pytest.raises(ConfigError, match=r"model\.fs: 200 does not match input\.downsample: 4"):
        load_config([ROOT / "configs" / "demo" / "qeeg_trees.yaml"], ["model.fs=200"])


def test_todays_configs_come_through_the_run_config_upgrade_unchanged():
    """A run saved by today's code is read back as it was saved (its timm_mel sr stays derived,
    not the 200 Hz default written out for runs saved before the rates were derived)."""
    from omegaconf import OmegaConf

    from hms.config import upgrade_run_config
    from hms.jobs.plan import THROUGHPUT_FILE

    files = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.name not in ("base.yaml", THROUGHPUT_FILE))
    for path in files:
        saved = OmegaConf.create(OmegaConf.to_yaml(load_config([path]), resolve=True))  # as save_resolved writes it
        assert upgrade_run_config(saved) == saved, path
    explicit = load_config([ROOT / "configs" / "demo_2d" / "mel_mobilenetv3.yaml"], ["model.sr=50"])
    assert "sr" not in upgrade_run_config(explicit).model  # an explicit matching rate reads as derived
