"""A training stage decided once (hms.training.stage.Stage): the low-vote weight per epoch, the
stage's rows, and the weighting every dataset takes (the bench's included)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import tiny_config
from hms.config import ConfigError, load_config
from hms.data import labels, schema
from hms.training.stage import Stage, first_stage, stages_of


def entry(**keys):
    return OmegaConf.create({"rows": "all", "epochs": 5, "lr": 1e-3, **keys})


# ---------------------------------------------------------------- the low-vote weight

def test_a_number_is_the_weight_at_every_epoch_and_is_not_scheduled():
    stage = Stage.from_entry(entry(low_vote_weight=0.3), min_votes=10)
    assert [stage.weight_at(e) for e in range(5)] == [0.3] * 5
    assert not stage.scheduled and stage.weighting == (10, 0.3)


def test_start_end_decays_over_the_configured_epochs_even_when_a_full_fit_trains_fewer():
    stage = Stage.from_entry(entry(low_vote_weight=[0.8, 0.2]), min_votes=7, run_epochs=2)
    assert stage.scheduled and (stage.epochs, stage.run_epochs) == (5, 2)
    assert [round(stage.weight_at(e), 6) for e in range(5)] == [0.8, 0.65, 0.5, 0.35, 0.2]
    assert stage.weighting == (7, 0.8)  # the dataset starts at the first epoch's weight


def test_a_one_epoch_schedule_takes_its_start():
    assert Stage.from_entry(entry(epochs=1, low_vote_weight=[0.8, 0.2]), 10).weight_at(0) == 0.8


@pytest.mark.parametrize("bad", [[0.8, 0.5, 0.2], "heavy", [0.8]])
def test_a_weight_that_is_neither_a_number_nor_start_end_is_a_config_error(bad):
    with pytest.raises(ConfigError, match=r"train.stages\[0\].low_vote_weight must be a number or \[start, end\]"):
        Stage.from_entry(entry(low_vote_weight=bad), 10)


def test_the_stage_key_is_the_weights_home_and_labels_low_vote_weight_only_its_default():
    """base.yaml's stages: the first sets 1.0, the second none; an older config's
    labels.low_vote_weight reaches only the stage without its own weight."""
    old = load_config([], ["labels.low_vote_weight=0.4",
                           "train.stages=[{rows: all, epochs: 3, lr: 1.0e-3, low_vote_weight: 0.6},"
                           " {rows: all, epochs: 2, lr: 1.0e-4}]"])
    first, second = stages_of(old)
    assert first.weight_at(0) == 0.6 and second.weight_at(0) == 0.4
    base = stages_of(load_config())
    assert [s.weight_at(0) for s in base] == [1.0, 1.0] and [s.rows for s in base] == ["all", "high"]


def test_stages_of_takes_a_full_fits_epochs_per_stage():
    cfg = load_config([], ["train.stages=[{rows: all, epochs: 6, lr: 1.0e-3}, {rows: high, epochs: 4, lr: 1.0e-4}]"])
    assert [(s.epochs, s.run_epochs) for s in stages_of(cfg, (3, 1))] == [(6, 3), (4, 1)]
    assert [(s.epochs, s.run_epochs) for s in stages_of(cfg, ())] == [(6, 6), (4, 4)]  # a CV run
    assert first_stage(cfg).lr == pytest.approx(1e-3)


# ---------------------------------------------------------------- the rows

def votes_frame(totals) -> pd.DataFrame:
    frame = pd.DataFrame({c: 0 for c in schema.VOTE_COLUMNS}, index=range(len(totals)))
    frame[schema.VOTE_COLUMNS[0]] = totals
    frame[labels.TOTAL_VOTES] = totals
    return frame


def test_rows_all_keeps_every_row_and_high_those_with_min_votes():
    rows = votes_frame([3, 10, 12, 9, 20])
    assert Stage.from_entry(entry(rows="all"), 10).rows_of(rows).index.tolist() == [0, 1, 2, 3, 4]
    assert Stage.from_entry(entry(rows="high"), 10).rows_of(rows).index.tolist() == [1, 2, 4]
    assert Stage.from_entry(entry(rows="high"), 12).rows_of(rows).index.tolist() == [2, 4]


def test_unknown_rows_or_a_missing_key_is_named_at_build_time():
    with pytest.raises(ConfigError, match=r"train.stages\[0\].rows must be 'all' or 'high', got 'low'"):
        Stage.from_entry(entry(rows="low"), 10)
    with pytest.raises(ConfigError, match=r"train.stages\[1\] lacks lr"):
        stages_of(load_config([], ["train.stages=[{rows: all, epochs: 1, lr: 0.1}, {rows: high, epochs: 1}]"]))


# ---------------------------------------------------------------- the bench's dataset

@pytest.mark.parametrize("weight, expected", [("0.5", 0.5), ("[0.8, 0.2]", 0.8)])
def test_the_bench_dataset_is_weighted_as_a_runs_first_stage(weight, expected, tiny_synth, tmp_path):
    """labels.low_vote_weight (1.0) no longer overrides the stage's weight in `hms bench train`."""
    from hms.jobs.bench import training_dataset

    cfg = tiny_config(tiny_synth, tmp_path, f"train.stages=[{{rows: all, epochs: 3, lr: 1.0e-3, "
                                            f"low_vote_weight: {weight}}}, {{rows: high, epochs: 1, lr: 1.0e-4}}]")
    assert cfg.labels.low_vote_weight == 1.0
    ds = training_dataset(cfg)
    low = ~labels.high_vote_mask(ds.items, cfg.labels.min_votes_high)
    assert low.any() and (~low).any()
    np.testing.assert_allclose(ds.weights[low], expected)
    np.testing.assert_allclose(ds.weights[~low], 1.0)
    assert ds.low_vote.tolist() == low.tolist()
