"""`hms plan` and the main job's choice and 3-hour stop: the plan's counts against independent
ones (runs, items per epoch, cache bytes), on the embedded-style dataset and on a table shaped
like the real train.csv; the throughput file against README's table and a fresh FLOP count."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hms.cli import main
from hms.data import schema

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONV1D = "configs/demo/conv1d.yaml"
DEMO_TREES = "configs/demo/qeeg_trees.yaml"
REAL_SHAPE = {"rows": 106_800, "eegs": 17_089, "patients": 1_950, "spectrograms": 11_138, "max_offset": 3_370}


def real_shaped_train(seed: int = 0, rows: int = 106_800, eegs: int = 17_089, patients: int = 1_950,
                      spectrograms: int = 11_138, max_offset: int = 3_370) -> pd.DataFrame:
    """A train.csv with the real one's shape (hms-data.md): its rows, eeg_ids, patients and
    spectrogram_ids; a few sub-windows per EEG and a heavy tail up to offsets of ~3,370 s; a
    spectrogram shared by several EEGs continues its offsets across them; ~40% of EEGs with
    10-28 votes, the rest 1-7; ~11% with a second vote vector on their later rows."""
    rng = np.random.default_rng(seed)
    weights = rng.lognormal(0.0, 1.6, eegs)
    per_eeg = np.minimum(1 + rng.multinomial(rows - eegs, weights / weights.sum()), max_offset // 2)
    longest = int(np.argmax(per_eeg))
    per_eeg[longest] += rows - per_eeg.sum()
    eeg_ids = 10**6 + rng.choice(4 * 10**9, eegs, replace=False)
    spec_ids = 10**5 + rng.choice(2 * 10**9, spectrograms, replace=False)
    patient_of = np.concatenate([np.arange(patients), rng.integers(0, patients, eegs - patients)])
    spec_of = np.concatenate([np.arange(spectrograms), rng.integers(0, spectrograms, eegs - spectrograms)])
    high = rng.random(eegs) < 0.4
    total = np.where(high, rng.integers(10, 29, eegs), rng.integers(1, 8, eegs))
    class_p = rng.dirichlet(np.full(schema.N_CLASSES, 0.4), eegs)
    spec_end = np.zeros(spectrograms)
    parts = []
    for i, k in enumerate(per_eeg):
        span = max_offset if i == longest else min(max_offset, int(2 * k + rng.integers(0, 3 * k + 1)))
        offsets = np.sort(rng.choice(span // 2 + 1, k, replace=False)) * 2.0
        offsets[-1] = max_offset if i == longest else offsets[-1]
        base = min(spec_end[spec_of[i]], max_offset - offsets[-1])
        spec_end[spec_of[i]] = base + offsets[-1] + schema.EEG_WINDOW_SECONDS
        votes = np.tile(rng.multinomial(total[i], class_p[i]), (k, 1))
        if k > 1 and rng.random() < 0.11:  # a second annotation of the later sub-windows
            votes[k // 2:] = rng.multinomial(total[i], class_p[i])
        parts.append((np.full(k, i), np.arange(k), offsets, base + offsets, votes))
    eeg_i, sub, offsets, spec_offsets, votes = (np.concatenate(c) for c in zip(*parts))
    votes[votes.sum(axis=1) == 0, -1] = 1
    frame = pd.DataFrame({"eeg_id": eeg_ids[eeg_i], "eeg_sub_id": sub, "eeg_label_offset_seconds": offsets,
                          "spectrogram_id": spec_ids[spec_of[eeg_i]], "spectrogram_sub_id": 0,
                          "spectrogram_label_offset_seconds": spec_offsets,
                          "label_id": np.arange(len(sub), dtype=np.int64) + 2**31 + 7,
                          "patient_id": 10_000 + patient_of[eeg_i],
                          "expert_consensus": np.asarray(schema.CONSENSUS_NAMES)[votes.argmax(1)]})
    frame["spectrogram_sub_id"] = frame.groupby("spectrogram_id").cumcount()
    frame[list(schema.VOTE_COLUMNS)] = votes
    return frame[list(schema.TRAIN_COLUMNS)]


def write_tables(root: Path, train: pd.DataFrame) -> Path:
    """train.csv and the real public test.csv's one row: all a plan reads (no parquet files)."""
    root.mkdir(parents=True, exist_ok=True)
    train.to_csv(root / schema.TRAIN_CSV, index=False)
    pd.DataFrame({"spectrogram_id": [853520], "eeg_id": [3911565283], "patient_id": [6885]}).to_csv(
        root / schema.TEST_CSV, index=False)
    return root


@pytest.fixture(scope="module")
def real_shaped(tmp_path_factory) -> Path:
    return write_tables(tmp_path_factory.mktemp("real_shaped"), real_shaped_train())


def json_line(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_the_real_shaped_table_has_the_real_counts(real_shaped):
    train = pd.read_csv(real_shaped / schema.TRAIN_CSV)
    assert (len(train), train.eeg_id.nunique(), train.patient_id.nunique(), train.spectrogram_id.nunique()) == (
        REAL_SHAPE["rows"], REAL_SHAPE["eegs"], REAL_SHAPE["patients"], REAL_SHAPE["spectrograms"])
    assert train.eeg_label_offset_seconds.max() == REAL_SHAPE["max_offset"]
    assert train.spectrogram_label_offset_seconds.max() <= REAL_SHAPE["max_offset"]
    assert train.groupby("eeg_id").patient_id.nunique().max() == 1
    assert train.label_id.is_unique and train.label_id.min() > 2**31


def independent_counts(data_dir: Path, cfg) -> dict:
    """Items per stage and run, the way training makes them: load_train's folds and targets,
    the training dataset's own grouping (labels.dedup_per_eeg)."""
    from hms.data import labels
    from hms.data.tables import load_train

    train = load_train(cfg)
    high = labels.high_vote_mask(train, cfg.labels.min_votes_high)
    out = {}
    for k in range(cfg.folds.n_folds):
        rest = train[train.fold != k]
        out[f"fold{k}"] = ([len(labels.dedup_per_eeg(rest)), len(labels.dedup_per_eeg(rest[high[train.fold != k]]))],
                           len(labels.dedup_per_eeg(train[train.fold == k])))
    out["full"] = ([len(labels.dedup_per_eeg(train)), len(labels.dedup_per_eeg(train[high]))], 0)
    return out


def test_plan_counts_runs_items_and_cache_bytes_on_the_embedded_dataset(tiny_synth, tmp_path, capsys):
    from hms.cache.store import cache_rows
    from hms.config import load_config
    from hms.data import io
    from hms.jobs.plan import CACHE_ITEM_BYTES, EEG_CACHE_COLUMNS

    overrides = [f"paths.data_dir={tiny_synth}", f"paths.work_dir={tmp_path / 'work'}", "train.n_seeds=2"]
    assert main(["plan", DEMO_CONV1D, DEMO_TREES, *overrides]) == 0
    out = capsys.readouterr().out
    summary = json_line(out)
    assert not (tmp_path / "work").exists()  # nothing written: no folds.csv, no caches
    cfg = load_config([DEMO_CONV1D], overrides)
    n_folds, stages = cfg.folds.n_folds, [int(s.epochs) for s in cfg.train.stages]
    assert summary["members"]["conv1d"]["runs"] == n_folds * 2 + cfg.train.full_fits  # 2 seeds
    assert summary["members"]["qeeg_trees"]["runs"] == n_folds * 2 + 1
    assert summary["runs"] == summary["members"]["conv1d"]["runs"] + summary["members"]["qeeg_trees"]["runs"]
    expected = independent_counts(tiny_synth, cfg)
    for run in ("fold0", "fold1-seed1", "full0"):
        (all_items, high_items), val = expected["full" if run.startswith("full") else run.split("-")[0]]
        line = next(line for line in out.splitlines() if line.strip().startswith(run) and "x 10" in line)
        assert f"items x epochs {all_items:,} x {stages[0]} + {high_items:,} x {stages[1]}" in line, line
        assert (f"val {val:,}," in line) == (val > 0), line

    train, test = io.read_train_csv(tiny_synth / schema.TRAIN_CSV), io.read_test_csv(tiny_synth / schema.TEST_CSV)
    eeg_seconds = sum(g.eeg_label_offset_seconds.max() - g.eeg_label_offset_seconds.min() + 50
                      for _, g in train.groupby("eeg_id")) + 50 * test.eeg_id.nunique()
    spec_frames = sum(int(round((g.spectrogram_label_offset_seconds.max() - g.spectrogram_label_offset_seconds.min()
                                 + 600) / 2)) for _, g in train.groupby("spectrogram_id")) + 300 * len(test)
    expected_bytes = (eeg_seconds * 200 * 19 + spec_frames * 400) * 2
    assert EEG_CACHE_COLUMNS == 19 and CACHE_ITEM_BYTES == 2
    assert sum(summary["cache_bytes"].values()) == expected_bytes
    assert summary["cache_gb"] == round(expected_bytes / 1e9, 2)
    assert cache_rows(train, "train", "eeg") == round(eeg_seconds - 50 * test.eeg_id.nunique()) * 200


def test_plan_on_a_table_shaped_like_the_real_train_csv(real_shaped, tmp_path, capsys):
    overrides = [f"paths.data_dir={real_shaped}", f"paths.work_dir={tmp_path / 'work'}", "device=cpu"]
    assert main(["plan", DEMO_CONV1D, DEMO_TREES, *overrides]) == 0
    out = capsys.readouterr().out
    summary = json_line(out)
    assert summary["train_rows"] == REAL_SHAPE["rows"] and summary["eegs"] == REAL_SHAPE["eegs"]
    assert summary["runs"] == 6 + 6  # conv1d: 5 folds + 1 full fit; trees: 5 folds + 1
    train = pd.read_csv(real_shaped / schema.TRAIN_CSV)
    items = len(train.assign(**{c: train[c] / train[list(schema.VOTE_COLUMNS)].sum(axis=1) for c in schema.VOTE_COLUMNS})
                .drop_duplicates(["eeg_id", *schema.VOTE_COLUMNS]))
    assert summary["items"] == items
    assert REAL_SHAPE["eegs"] < items < 1.2 * REAL_SHAPE["eegs"]
    # spans at 200 Hz x 19 float16 columns: at least 50 s per EEG, at most its rows' windows
    per_eeg = train.groupby("eeg_id").eeg_label_offset_seconds
    eeg_gb = ((per_eeg.max() - per_eeg.min() + 50).sum() + 50) * 200 * 19 * 2 / 1e9
    assert summary["cache_gb"] > eeg_gb > REAL_SHAPE["eegs"] * 50 * 200 * 19 * 2 / 1e9
    assert summary["gpu_hours_1"] > 0 and summary["gpu_hours_n"]["8"] < summary["gpu_hours_1"]
    assert summary["kaggle_t4_minutes"] > 0
    assert "estimated" in out or "measured" in out


def test_no_argument_main_job_on_real_shaped_data_without_gpu_stops_before_training(real_shaped, tmp_path,
                                                                                   monkeypatch, capsys):
    work = tmp_path / "work"
    monkeypatch.setenv("HMS_DATA_DIR", str(real_shaped))
    monkeypatch.setenv("HMS_WORK_DIR", str(work))
    monkeypatch.setenv("HMS_DEVICE", "cpu")
    assert main(["run"]) == 3
    captured = capsys.readouterr()
    assert captured.out.startswith("[hms] no CUDA device (device cpu): training the demo (configs/demo/")
    hours = json_line(captured.out)["hours_here"]
    assert hours > 3
    err = captured.err
    said = re.search(r"estimate on this device \(cpu x\d+\) is ([\d.]+) h", err)
    assert said and float(said.group(1)) == pytest.approx(hours, abs=0.06), err
    assert "--yes" in err and "explicit configs" in err and "hms run CONFIG.yaml" in err
    assert not (work / "cache").exists() and not any(work.glob("*/fold0"))


def test_throughput_file_matches_readme_and_a_fresh_flop_count():
    """README's H200 table quotes configs/throughput.yaml; every figure in one is in the other,
    and each entry's forward GFLOPs is what the flop counter says for its config today."""
    from hms.config import load_config
    from hms.jobs.flops import forward_gflops
    from hms.jobs.throughput import throughput_table

    table = throughput_table()
    h200 = table["devices"][table["gpu_reference"]]["experiments"]
    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `(\w+)`[^|]*\| ([\d,]+) \| ([\d,]+) \| (\d+) \|$", readme, flags=re.M)
    quoted = {name: (int(sps.replace(",", "")), int(bare.replace(",", "")), int(batch)) for name, sps, bare, batch in rows}
    assert quoted == {name: (e["samples_per_s"], e["bare"], e["batch"]) for name, e in h200.items()}
    name, entry = min(h200.items(), key=lambda kv: kv[1]["forward_gflops"])  # the cheapest to count
    assert forward_gflops(load_config([ROOT / entry["config"]])) == pytest.approx(entry["forward_gflops"], rel=0.02)


def test_a_saved_bench_result_makes_a_member_measured_and_others_scale_by_flops(tiny_synth, tmp_path, capsys):
    from hms.config import load_config
    from hms.jobs.throughput import device_name, save_train_bench

    overrides = [f"paths.data_dir={tiny_synth}", f"paths.work_dir={tmp_path / 'work'}", "device=cpu"]
    cfg = load_config([DEMO_CONV1D], overrides)
    result = {"device_name": device_name("cpu"), "experiment": "conv1d", "samples_per_s": 250.0,
              "forward_gflops": 0.0523, "family": "1d", "batch": 32}
    save_train_bench(cfg, result)
    save_train_bench(cfg, {**result, "samples_per_s": 500.0})  # the latest line wins
    assert main(["plan", DEMO_CONV1D, "configs/exp/conv1d_midline.yaml", *overrides]) == 0
    out = capsys.readouterr().out
    members = json_line(out)["members"]
    assert members["conv1d"]["measured"] and members["conv1d"]["samples_per_s"] == 500.0
    midline = members["conv1d_midline"]
    assert not midline["measured"]
    assert midline["samples_per_s"] == pytest.approx(min(500.0 * 0.0523 / midline["gflops"], 500.0), rel=0.01)
    assert "estimated from conv1d" in out


@pytest.mark.parametrize("args", [["run", "--yes"], ["run", DEMO_CONV1D, DEMO_TREES]])
def test_yes_or_explicit_configs_go_past_the_plan(args, real_shaped, tmp_path, monkeypatch, capsys):
    """Both ways on pass the 3-hour check and reach the caches, which this table (CSV files
    only) cannot build: the data error proves the job went on."""
    monkeypatch.setenv("HMS_DATA_DIR", str(real_shaped))
    monkeypatch.setenv("HMS_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("HMS_DEVICE", "cpu")
    assert main(args) == 2
    captured = capsys.readouterr()
    assert json_line(captured.out)["hours_here"] > 3
    assert "stopped" not in captured.err and "not a dataset in Kaggle layout" in captured.err
