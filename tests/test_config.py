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
