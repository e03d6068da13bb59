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
