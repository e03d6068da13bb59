"""best.pt files written before the layout change (issue 29) load and predict identically.

tests/fixtures/checkpoints_before_layout/<member>/ was written by the code of e722c7f (the script
is made_by.py.txt beside it): one seeded network per model kind (conv1d, timm2d with the context
branch, timm_mel, eeg_image, wavenet, fitted trees), its resolved config.yaml, best.pt (a plain
state_dict) and the logits of a fixed random batch. Today's load_fold_network must build the
same network from the same config and state_dict, key for key, and give the same logits."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints_before_layout"
MEMBERS = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())


def fixed_batch(n_signals: int) -> dict:
    """The batch made_by.py.txt fed the networks (a seeded CPU generator)."""
    g = torch.Generator().manual_seed(0)
    return {"signal": (torch.randn(2, n_signals, 10_000, generator=g) * 40).half(),
            "spec": torch.randn(2, 4, 100, 300, generator=g).exp().log1p().half()}


def test_the_fixture_covers_every_kind_of_network():
    assert MEMBERS == ["conv1d", "eeg_image", "timm2d_ctx", "timm_mel", "trees", "wavenet"]


@pytest.mark.parametrize("member", MEMBERS)
def test_an_old_checkpoint_loads_key_for_key_and_predicts_identically(member, tmp_path):
    from hms.models.network import load_fold_network

    fold = FIXTURES / member
    expected = torch.load(fold / "expected.pt", weights_only=True)
    state = torch.load(fold / "best.pt", weights_only=True)
    overrides = {"paths": {"data_dir": str(tmp_path), "work_dir": str(tmp_path)}, "device": "cpu"}
    _, net = load_fold_network(fold, overrides)  # load_state_dict is strict: every key, no more
    assert sorted(net.state_dict()) == sorted(state)
    with torch.no_grad():
        logits = net(fixed_batch(int(expected["n_signals"])))
    torch.testing.assert_close(logits, expected["logits"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("member", MEMBERS)
def test_an_old_run_config_upgrades_to_todays_keys_once(member):
    """The fixtures' config.yaml files carry input.spec_normalize (which decided) beside a
    kaggle_spec.normalize only the cache hash read, and base.yaml's mel.sr 200 whatever the
    signals' rate (timm2d_ctx set 50 for its 50 Hz signals)."""
    from omegaconf import OmegaConf

    from hms.config import load_run_config, upgrade_run_config

    old = OmegaConf.load(FIXTURES / member / "config.yaml")
    assert old.input.spec_normalize == "panel" and old.mel.sr == (50 if member == "timm2d_ctx" else 200)
    old.input.spec_normalize = "none"  # the key that decided wins over the one that did not
    new = upgrade_run_config(old)
    assert "spec_normalize" not in new.input and new.kaggle_spec.normalize == "none"
    assert new.mel.sr is None and "sr" not in new.model  # derived from input.downsample (or unread)
    assert upgrade_run_config(new) == new and old.input.spec_normalize == "none"  # a copy; once is enough
    assert load_run_config(FIXTURES / member) == OmegaConf.merge(new, {"kaggle_spec": {"normalize": "panel"}})


def test_an_old_run_that_fed_a_mel_bank_another_rate_keeps_it():
    """A run saved when the rates were set by hand is rebuilt at the rate it trained on: an explicit
    mel.sr that differs from its signals', and timm_mel's old 200 Hz default under input.downsample 2."""
    from omegaconf import OmegaConf

    from hms.config import upgrade_run_config
    from hms.models.network import build_network

    old = OmegaConf.load(FIXTURES / "timm2d_ctx" / "config.yaml")
    old.input.downsample = 2  # 100 Hz signals into its 50 Hz mel bank
    new = upgrade_run_config(old)
    assert new.mel.sr == 50 and build_network(new).builder.sr == 50
    old = OmegaConf.load(FIXTURES / "timm_mel" / "config.yaml")
    old.input.downsample = 2
    new = upgrade_run_config(old)
    assert new.model.sr == 200 and build_network(new).core.sr == 200
    old.model.sr = 100  # a matching rate is derived
    assert "sr" not in upgrade_run_config(old).model and build_network(upgrade_run_config(old)).core.sr == 100


# made_by.py.txt's experiment files and overrides, per member
MADE_FROM = {
    "conv1d": ("demo/conv1d.yaml", ["model.stage_channels=[16,32]", "model.kernel_sizes=[3,7]"]),
    "timm2d_ctx": ("demo_2d/cand_kaggle_eeg_ch_ctx.yaml", ["model.backbone=test_convnext"]),
    "timm_mel": ("recipe/mixnet_xl_mel_zoom.yaml", ["model.backbone=test_efficientnet", "model.pretrained=false"]),
    "eeg_image": ("recipe/effnet_b5_raw_image.yaml", ["model.backbone=test_efficientnet", "model.pretrained=false"]),
    "wavenet": ("exp/wavenet.yaml", []),
    "trees": ("demo/qeeg_trees.yaml", ["model.max_iter=5"]),
}


def todays_config(member: str):
    from hms.config import config_dir, load_config

    path, extra = MADE_FROM[member]
    return load_config([config_dir() / path], ["paths.data_dir=input/simulated", "paths.work_dir=/tmp/ckfx", *extra])


def test_the_fingerprint_check_calls_an_unchanged_experiment_unchanged_across_the_settings_move(tmp_path):
    """Each old run's config.yaml against today's config of the same experiment: the moved keys
    (input.spec_normalize; mel.sr, 200 or 50 then, derived now) are no change; a run saved today
    joins an old one; an old run whose moved key held another value is a change, named where it
    lives now."""
    from omegaconf import OmegaConf

    from hms.config import save_resolved
    from hms.models.fingerprint import changed_runs, check_same_runs

    assert sorted(MADE_FROM) == MEMBERS
    for member in MEMBERS:
        cfg = todays_config(member)
        assert changed_runs(cfg, [FIXTURES / member]) == {}, member
        save_resolved(cfg, tmp_path / member / "today" / "config.yaml")
        check_same_runs(tmp_path / member, [FIXTURES / member, tmp_path / member / "today"])
    old = OmegaConf.load(FIXTURES / "timm2d_ctx" / "config.yaml")
    old.input.spec_normalize = "none"
    (tmp_path / "edited").mkdir()
    OmegaConf.save(old, tmp_path / "edited" / "config.yaml")
    assert changed_runs(todays_config("timm2d_ctx"), [tmp_path / "edited"]) == {
        "edited": {"kaggle_spec.normalize": ("none", "panel")}}
