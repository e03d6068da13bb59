"""`hms validate`: every planted problem reported at once, with a count per kind; the
pre-flight stops on bad train files or, with --skip-bad, leaves them out loudly."""
from __future__ import annotations

import shutil

import pandas as pd
import pytest

from conftest import tiny_config
from hms.data import io
from hms.data.validate import EXCLUDED_CSV, REPORT_JSON, preflight, validate_dataset


@pytest.fixture
def damaged(tiny_synth, tmp_path):
    """A copy of the simulated dataset with one problem of each kind planted."""
    data = tmp_path / "data"
    shutil.copytree(tiny_synth, data)
    train = pd.read_csv(data / "train.csv")
    test = pd.read_csv(data / "test.csv")
    eegs = train.eeg_id.unique()
    planted = {
        "missing_file": data / "train_eegs" / f"{eegs[0]}.parquet",
        "unreadable_file": data / "train_spectrograms" / f"{train.spectrogram_id.iloc[-1]}.parquet",
        "wrong_schema": data / "train_eegs" / f"{eegs[1]}.parquet",
        "short_eeg": data / "test_eegs" / f"{test.eeg_id.iloc[0]}.parquet",
        "non_numeric": data / "test_spectrograms" / f"{test.spectrogram_id.iloc[1]}.parquet",
    }
    planted["missing_file"].unlink()
    victim = planted["unreadable_file"]
    victim.write_bytes(victim.read_bytes()[:200])
    pd.read_parquet(planted["wrong_schema"]).rename(columns={"Cz": "Cx"}).to_parquet(planted["wrong_schema"])
    pd.read_parquet(planted["short_eeg"]).iloc[:6000].to_parquet(planted["short_eeg"])
    pd.read_parquet(planted["non_numeric"]).assign(LL_0_59="x").rename(columns={"LL_0.59": "drop"}).drop(
        columns="drop").rename(columns={"LL_0_59": "LL_0.59"}).to_parquet(planted["non_numeric"])
    past = train.eeg_id != eegs[0]
    row = train.index[past & (train.eeg_id != eegs[1])][0]
    train.loc[row, "eeg_label_offset_seconds"] = 10_000.0
    planted["window_past_end"] = data / "train_eegs" / f"{train.eeg_id[row]}.parquet"
    train.loc[train.index[-1], "label_id"] = train.label_id.iloc[0]
    train.to_csv(data / "train.csv", index=False)
    return data, planted


def test_validate_reports_every_planted_problem_with_counts(damaged):
    data, planted = damaged
    report = validate_dataset(data)
    found = {(p.kind, p.file) for p in report.problems}
    for kind, path in planted.items():
        assert (kind, str(path)) in found, kind
    assert report.counts("train") == {"duplicate_label_id": 1, "missing_file": 1, "unreadable_file": 1,
                                      "wrong_schema": 1, "window_past_end": 1}
    assert report.counts("test") == {"non_numeric": 1, "short_eeg": 1}
    text = report.text()
    assert "train missing_file" in text and "Cx" in text and "labelled windows need" in text


def test_preflight_stops_listing_all_train_problems_then_skip_bad_leaves_them_out(damaged, tmp_path, capsys):
    from hms.data.tables import load_train

    data, planted = damaged
    work = tmp_path / "work"
    train = pd.read_csv(data / "train.csv")
    train.loc[train.index[-1], "label_id"] = train.label_id.max() + 1  # only file problems now
    train.to_csv(data / "train.csv", index=False)
    with pytest.raises(io.HMSDataError, match="4 problems in the training data") as err:
        preflight(data, work)
    for kind in ("missing_file", "unreadable_file", "wrong_schema", "window_past_end"):
        assert str(planted[kind]) in str(err.value)
    assert (work / REPORT_JSON).is_file()

    preflight(data, work, skip_bad=True)
    assert "WARNING: --skip-bad: leaving out 4 train files" in capsys.readouterr().out
    excluded = pd.read_csv(work / EXCLUDED_CSV)
    assert sorted(excluded.kind) == ["eeg", "eeg", "eeg", "spec"]
    rows = load_train(tiny_config(data, work, "folds.n_folds=2"))
    bad_eegs = set(excluded.id[excluded.kind == "eeg"])
    assert not rows.eeg_id.isin(bad_eegs).any() and len(rows) < len(train)
    assert "train rows left out" in capsys.readouterr().out


def test_duplicated_label_id_is_fatal_even_with_skip_bad(damaged, tmp_path):
    data, _ = damaged
    with pytest.raises(io.HMSDataError, match="duplicate_label_id"):
        preflight(data, tmp_path / "work", skip_bad=True)
