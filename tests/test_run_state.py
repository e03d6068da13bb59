"""Where a run stands (hms.training.state.RunState): best score and patience, the resume point,
and last.pt's dict, as written before RunState and after, through a weights_only load."""
from __future__ import annotations

import numpy as np
import torch

from hms.training.state import RunState


def test_record_tracks_the_best_score_and_the_epochs_since():
    state = RunState()
    assert state.record({"epoch": 0}, {"val_kl_high": 0.9}) and state.best == 0.9 and state.bad_epochs == 0
    assert not state.record({"epoch": 1}, {"val_kl_high": 0.9 - 1e-7})  # below the noise: not better
    assert not state.record({"epoch": 2}, {"val_kl_high": 1.2})
    assert state.bad_epochs == 2 and state.out_of_patience(2) and not state.out_of_patience(3)
    assert state.record({"epoch": 3}, {"val_kl_high": 0.5}) and (state.best, state.bad_epochs) == (0.5, 0)
    assert [row["best"] for row in state.history] == [True, False, False, True]
    assert list(state.history[0]) == ["epoch", "best"]  # log.csv's column order: best last
    state.bad_epochs = 4
    state.restart_patience()
    assert state.bad_epochs == 0


def test_a_full_fits_every_epoch_is_its_best():
    state = RunState()
    assert state.record({"epoch": 0}, {}) and state.record({"epoch": 1}, {})
    assert np.isnan(state.best) and state.bad_epochs == 0


def test_a_stage_that_ends_resumes_at_the_next_stages_start():
    state = RunState()
    state.saved_after(0, 2, stage_over=False, snapshot={"fingerprint": "a"})
    assert (state.stage, state.epoch) == (0, 2) and state.resumes_in(0) and not state.resumes_in(1)
    state.saved_after(0, 3, stage_over=True, snapshot={"fingerprint": "b"})
    assert (state.stage, state.epoch) == (1, -1) and not state.resumes_in(1)
    assert state.snapshot == {"fingerprint": "b"}


def test_last_pt_round_trips_through_a_weights_only_load(tmp_path):
    net = torch.nn.Linear(3, 2)
    state = RunState()
    state.record({"stage": 0, "epoch": 0, "train_loss": 1.5}, {"val_kl_high": 0.7})
    state.saved_after(0, 0, False, {"model": net.state_dict(), "rng": torch.get_rng_state(), "fingerprint": "f"})
    torch.save(state.to_dict(), tmp_path / "last.pt")
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert isinstance(saved, dict) and saved["stage"] == 0 and saved["fingerprint"] == "f"
    back = RunState.from_dict(saved)
    assert (back.stage, back.epoch, back.best, back.bad_epochs, back.history) == (0, 0, 0.7, 0, state.history)
    assert torch.equal(back.snapshot["model"]["weight"], net.weight.detach())
    assert set(back.snapshot) == {"model", "rng", "fingerprint"}


def test_a_last_pt_written_before_run_state_resumes(tmp_path):
    """The dict FoldRun saved before RunState (its keys, as torch.save wrote them)."""
    net = torch.nn.Linear(3, 2)
    old = {"stage": 1, "epoch": 0, "best": 0.42, "bad_epochs": 1,
           "history": [{"stage": 0, "epoch": 0, "train_loss": 1.0, "val_kl": 0.5, "val_kl_high": 0.42,
                        "lr_stage": 1e-3, "seconds": 1.0, "best": True}],
           "model": net.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "scheduler": {"last_epoch": 3},
           "rng": torch.get_rng_state(), "fingerprint": "0123456789abcdef", "ema": net.state_dict()}
    torch.save(old, tmp_path / "last.pt")
    state = RunState.from_dict(torch.load(tmp_path / "last.pt", weights_only=True))
    assert (state.stage, state.epoch, state.best, state.bad_epochs) == (1, 0, 0.42, 1)
    assert state.resumes_in(1) and not state.resumes_in(0) and state.history == old["history"]
    assert state.snapshot["fingerprint"] == "0123456789abcdef" and "ema" in state.snapshot
    again = state.to_dict()
    assert set(again) == set(old) and again["scheduler"] == {"last_epoch": 3}
    assert RunState.from_dict({}) == RunState()  # keys it lacks: a fresh run's values
