import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import eeg_frame, write_mini_dataset
from hms.cache.store import build_cache, open_cache
from hms.config import load_config
from hms.data import io, schema

# What every EEG cache holds, spelled out (hms-data.md's montage): the 16 double-banana pairs,
# the two midline pairs, then the EKG channel as recorded.
UNION_SIGNALS = ["Fp1-F7", "F7-T3", "T3-T5", "T5-O1", "Fp2-F8", "F8-T4", "T4-T6", "T6-O2",
                 "Fp1-F3", "F3-C3", "C3-P3", "P3-O1", "Fp2-F4", "F4-C4", "C4-P4", "P4-O2",
                 "Fz-Cz", "Cz-Pz", "EKG"]


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return write_mini_dataset(tmp_path_factory.mktemp("mini"), n_patients=3, eegs_per_patient=2, n_test=2)


def _cfg(tmp_path, *overrides):
    return load_config([], [f"paths.work_dir={tmp_path}", *overrides])


def test_eeg_cache_holds_the_raw_bipolar_span_with_nan_kept(mini, tmp_path):
    cfg = _cfg(tmp_path)
    train = io.read_train_csv(mini / schema.TRAIN_CSV)
    cache = open_cache(build_cache(cfg, mini, "train", "eeg", train, workers=1, progress=False))
    eeg_id = int(train.eeg_id.iloc[0])
    span = cache.row(eeg_id)
    frame = pd.read_parquet(io.eeg_path(mini, "train", eeg_id))
    first = int(span.t0 * 200)
    got = np.asarray(cache.data[span.start: span.start + span.length], dtype=np.float32)
    # the double banana's first and last pairs, the midline pairs and EKG, spelled out
    for col, (a, b) in ((0, ("Fp1", "F7")), (15, ("P4", "O2")), (16, ("Fz", "Cz")), (17, ("Cz", "Pz"))):
        expected = (frame[a] - frame[b]).to_numpy()[first: first + span.length]
        np.testing.assert_allclose(got[:, col], expected, rtol=1e-3, atol=1e-2)  # float16 storage
    np.testing.assert_allclose(got[:, 18], frame["EKG"].to_numpy()[first: first + span.length], rtol=1e-3, atol=1e-2)
    assert cache.data.dtype == np.float16 and list(cache.signal_names) == UNION_SIGNALS


def test_raw_nan_and_huge_values_survive_the_float16_cache(tmp_path):
    data = write_mini_dataset(tmp_path / "data", n_patients=2, eegs_per_patient=1, n_test=1)
    path = next((data / schema.TEST_EEG_DIR).iterdir())
    frame = pd.read_parquet(path)
    frame.loc[100:299, "Fp1"] = np.nan
    frame.loc[500, "F7"] = 90_000.0  # beyond float16: must not become inf
    frame.to_parquet(path, index=False)
    test = io.read_test_csv(data / schema.TEST_CSV)
    cache = open_cache(build_cache(_cfg(tmp_path), data, "test", "eeg", test, workers=1, progress=False))
    span = cache.row(int(path.stem))
    window = np.asarray(cache.data[span.start: span.start + span.length], dtype=np.float32)
    assert np.isnan(window[100:300, 0]).all() and not np.isnan(window[300:, 0]).any()
    assert np.isfinite(window[500, 0]) and window[500, 0] < -60_000  # Fp1-F7 clipped, not inf
    assert cache.index.loc[int(path.stem), "nan_share"] > 0


def test_one_eeg_cache_serves_every_montage_and_filter(mini, tmp_path):
    train = io.read_train_csv(mini / schema.TRAIN_CSV)
    a = build_cache(_cfg(tmp_path), mini, "train", "eeg", train, workers=1, progress=False)
    again = build_cache(_cfg(tmp_path, "signal.bandpass=[0.5,40]"), mini, "train", "eeg", train, workers=1,
                        progress=False)
    b = build_cache(_cfg(tmp_path, "signal.extras=[midline,ekg]"), mini, "train", "eeg", train, workers=1,
                    progress=False)
    assert a == again == b  # filters run per window, signals are selected per experiment: one cache
    assert (a / "meta.json").stat().st_mtime_ns == (b / "meta.json").stat().st_mtime_ns  # not rebuilt
    assert len(list((tmp_path / "cache").glob("eeg-train-*"))) == 1


def _per_montage_cache_window(path, t0: float, extras) -> np.ndarray:
    """What a version-2 cache (one per montage) held for a window: the whole file read, its
    bipolar montage, clipped to float16's range, as float16 (the code before the union cache)."""
    from hms.signal import montage

    eeg = io.read_eeg_array(path)
    start = int(round(t0 * schema.SAMPLING_RATE))
    raw = montage.bipolar(eeg[start:start + schema.EEG_WINDOW_SAMPLES], extras)
    return np.clip(raw, -65_000, 65_000).astype(np.float16)


def test_conv1d_and_trees_read_one_cache_with_the_inputs_of_their_own_caches(tmp_path):
    """conv1d (16 signals) and qeeg_trees (+ midline) share one cache; each item's signal is
    bit-identical to what its own montage's cache gave before."""
    from hms.inputs.dataset import HMSDataset

    data = write_mini_dataset(tmp_path / "data", n_patients=2, eegs_per_patient=2, n_test=1)
    train = io.read_train_csv(data / schema.TRAIN_CSV)
    roots = {}
    for name in ("conv1d", "qeeg_trees"):
        cfg = load_config([f"configs/demo/{name}.yaml"], [f"paths.work_dir={tmp_path / 'work'}"])
        roots[name] = build_cache(cfg, data, "train", "eeg", train, workers=1, progress=False)
        ds = HMSDataset(train, open_cache(roots[name]), None, train=False, use_spec=False, signal_cfg=cfg.signal)
        assert ds[0]["signal"].shape[0] == {"conv1d": 16, "qeeg_trees": 18}[name]
        for i in range(len(ds)):
            row = ds.items.iloc[i]
            expected = _per_montage_cache_window(io.eeg_path(data, "train", row.eeg_id),
                                                 row.eeg_label_offset_seconds, list(cfg.signal.extras))
            np.testing.assert_array_equal(ds[i]["signal"].numpy(), expected)
    assert roots["conv1d"] == roots["qeeg_trees"]


def test_long_recordings_are_cached_a_slice_at_a_time_with_the_same_values(tmp_path, monkeypatch):
    """Slices (here 777 samples, so that none ends on a window edge) give the values of one
    whole-file read."""
    import hms.cache.store as store

    data = write_mini_dataset(tmp_path / "data", n_patients=1, eegs_per_patient=2, n_test=1)
    train = io.read_train_csv(data / schema.TRAIN_CSV)
    whole = open_cache(build_cache(_cfg(tmp_path / "a"), data, "train", "eeg", train, workers=1, progress=False))
    monkeypatch.setattr(store, "EEG_SLICE_SAMPLES", 777)
    sliced = open_cache(build_cache(_cfg(tmp_path / "b"), data, "train", "eeg", train, workers=1, progress=False))
    assert whole.data.shape[0] > 3 * 777
    np.testing.assert_array_equal(np.asarray(whole.data), np.asarray(sliced.data))
    pd.testing.assert_frame_equal(whole.index, sliced.index)


def test_sliced_reader_takes_other_dtypes_and_spellings_like_read_eeg(tmp_path):
    frame = eeg_frame(seconds=60).round(2)
    frame["Fp1"] = frame["Fp1"].astype(np.float64)
    frame["EKG"] = (frame["EKG"] * 100).astype(np.int32)  # an integer column
    frame = frame.rename(columns={"Fp1": "FP1"})
    frame = frame[list(reversed(frame.columns))]
    path = tmp_path / "x.parquet"
    frame.to_parquet(path, index=False)
    np.testing.assert_array_equal(io.EEGFile(path).rows(123, 4567), io.read_eeg_array(path)[123:4567])


def test_spectrogram_windows_start_at_the_first_frame_at_or_after_their_offset(tmp_path):
    """Real frames sit at odd seconds (1, 3, ..., fixture: first and last test frame times).
    A spectrogram labelled first at an even offset and later at an odd one: each window starts
    at the file's first frame at or after its own offset, not 2 s late."""
    from pathlib import Path

    from hms.inputs.dataset import HMSDataset

    real = json.loads((Path(__file__).parent / "fixtures" / "real_files.json").read_text())
    first, last = real["spectrogram_time_first_last_test"]  # 1, 599 for 300 rows
    times = np.arange(first, last + 2 * 200 + 1, schema.SPEC_STEP_SECONDS).astype(real["spectrogram_time_dtype"]["train"])
    spec = pd.DataFrame(np.repeat(times[:, None].astype(np.float32), len(schema.SPEC_COLUMNS), 1),
                        columns=list(schema.SPEC_COLUMNS))  # every bin's power = the frame's time
    spec.insert(0, schema.SPEC_TIME_COLUMN, times)
    data = write_mini_dataset(tmp_path / "data", n_patients=1, eegs_per_patient=1, n_test=1)
    train = io.read_train_csv(data / schema.TRAIN_CSV).iloc[:1]
    spec_id = int(train.spectrogram_id.iloc[0])
    spec.to_parquet(data / schema.TRAIN_SPEC_DIR / f"{spec_id}.parquet", index=False)
    offsets = [0.0, 11.0, 74.0, 133.0]  # even first (as spectrogram 1219001's 0, 18, 74, ...), then odd
    rows = pd.concat([train.assign(spectrogram_label_offset_seconds=o, spectrogram_sub_id=i, eeg_sub_id=i,
                                   **{c: v for c, v in zip(schema.VOTE_COLUMNS, np.eye(6, dtype=int)[i] * 3)})
                      for i, o in enumerate(offsets)], ignore_index=True)
    cfg = _cfg(tmp_path, "kaggle_spec.log_clip=[-4.0,8.0]")
    cache = open_cache(build_cache(cfg, data, "train", "spec", rows, workers=1, progress=False))
    assert cache.row(spec_id).t0 == first  # the first cached frame's own time
    eeg = open_cache(build_cache(cfg, data, "train", "eeg", rows, workers=1, progress=False))
    ds = HMSDataset(rows, eeg, cache, train=False)
    for i in range(len(ds)):
        offset = float(ds.items.spectrogram_label_offset_seconds.iat[i])
        expected = times[times >= offset][:schema.SPEC_WINDOW_FRAMES]
        got = np.exp(ds[i]["spec"].numpy()[0, 0].astype(np.float64))  # LL's lowest bin over time
        np.testing.assert_allclose(got, expected, rtol=2e-3)


def test_an_old_format_cache_stays_readable_and_a_new_build_says_so_once(mini, tmp_path, capsys):
    cfg = _cfg(tmp_path)
    train = io.read_train_csv(mini / schema.TRAIN_CSV)
    root = build_cache(cfg, mini, "train", "eeg", train, workers=1, progress=False)
    old = root.with_name("eeg-train-0123456789abcdef")
    old.mkdir()
    # a version-2 cache of the 16 pairs alone: open_cache still reads it, selecting by name
    cache = open_cache(root)
    np.save(old / "data.npy", np.asarray(cache.data[:, :16]))
    cache.index.reset_index().to_csv(old / "index.csv", index=False)
    (old / "meta.json").write_text(json.dumps({"kind": "eeg", "split": "train", "params": {"extras": []},
                                               "version": 2}))
    v2 = open_cache(old)
    assert v2.signal_names == tuple(UNION_SIGNALS[:16]) and v2.columns(UNION_SIGNALS[:16]) == slice(0, 16)
    with pytest.raises(io.HMSDataError, match="no signals .'Fz-Cz'"):
        v2.columns(UNION_SIGNALS[:18])
    import shutil

    shutil.rmtree(root)
    build_cache(cfg, mini, "train", "eeg", train, workers=1, progress=False)
    out = capsys.readouterr().out
    assert out.count("cache format 3") == 1 and old.name in out and "hms prepare --clean" in out


def test_cache_workers_follow_the_cores_this_process_may_use(tmp_path, monkeypatch):
    import os

    from hms.cache.store import cache_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert cache_workers(_cfg(tmp_path)) == 3  # fewer cores than the cap of 8
    assert cache_workers(_cfg(tmp_path, "cache.workers=2")) == 2
    assert cache_workers(_cfg(tmp_path, "cache.workers=2"), workers=5) == 5  # an explicit --workers wins


@pytest.mark.slow
def test_concurrent_prepares_build_each_cache_once_with_a_serial_build_s_bytes(tmp_path):
    """Two `hms prepare` processes on an empty work dir (as two folds, GPUs or Slurm tasks start):
    one builds each cache under its lock, the other waits and reuses it; the files equal a
    serial build's byte for byte."""
    data = write_mini_dataset(tmp_path / "data", n_patients=3, eegs_per_patient=2, n_test=2)
    cmd = [sys.executable, "-m", "hms", "prepare", "configs/demo/qeeg_trees.yaml", f"paths.data_dir={data}"]
    serial = subprocess.run([*cmd, f"paths.work_dir={tmp_path / 'serial'}"], capture_output=True, text=True)
    assert serial.returncode == 0, serial.stderr
    both = [subprocess.Popen([*cmd, f"paths.work_dir={tmp_path / 'shared'}"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in both]
    assert [p.returncode for p in both] == [0, 0], outputs
    for d in sorted((tmp_path / "serial" / "cache").glob("*-*-*")):
        twin = tmp_path / "shared" / "cache" / d.name
        if d.is_dir():
            for f in ("data.npy", "index.csv", "meta.json"):
                assert (twin / f).read_bytes() == (d / f).read_bytes(), f"{d.name}/{f}"
            assert not list(twin.glob("*.partial.npy"))


def test_interrupted_build_resumes_where_it_stopped(mini, tmp_path, monkeypatch):
    import hms.cache.store as cache_mod

    cfg = _cfg(tmp_path)
    train = io.read_train_csv(mini / schema.TRAIN_CSV)
    real_work, done = cache_mod._work, []

    def counting(job, fail_after=None):
        if fail_after is not None and len(done) == fail_after:
            raise RuntimeError("simulated crash")
        done.append(job[1])
        return real_work(job)

    monkeypatch.setattr(cache_mod, "_work", lambda job: counting(job, fail_after=3))
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_cache(cfg, mini, "train", "eeg", train, workers=1, progress=False)
    first = list(done)
    monkeypatch.setattr(cache_mod, "_work", counting)
    root = build_cache(cfg, mini, "train", "eeg", train, workers=1, progress=False)
    n_items = train.eeg_id.nunique()
    assert len(first) == 3 and sorted(done[3:]) == sorted(set(range(n_items)) - set(first))
    assert (root / "meta.json").is_file() and not (root / "data.partial.npy").exists()


def test_truncated_parquet_names_the_file(mini, tmp_path):
    import shutil

    broken = tmp_path / "data"
    shutil.copytree(mini, broken)
    victim = next((broken / schema.TEST_EEG_DIR).iterdir())
    victim.write_bytes(victim.read_bytes()[:100])
    test = io.read_test_csv(broken / schema.TEST_CSV)
    with pytest.raises(io.HMSDataError, match=victim.name):
        build_cache(_cfg(tmp_path), broken, "test", "eeg", test, workers=1, progress=False)


def test_a_train_file_damaged_past_its_footer_stops_prepare_with_the_way_on(mini, tmp_path):
    """validate reads footers: a file whose data pages are damaged passes it, and prepare must
    say how to go on, not only which file."""
    import shutil

    from hms.data.validate import preflight

    broken = tmp_path / "data"
    shutil.copytree(mini, broken)
    train = io.read_train_csv(broken / schema.TRAIN_CSV)
    victim = io.eeg_path(broken, "train", int(train.eeg_id.iloc[0]))
    raw = bytearray(victim.read_bytes())
    raw[4:3000] = np.random.default_rng(0).integers(0, 256, 2996, dtype=np.uint8).tobytes()  # footer intact
    victim.write_bytes(bytes(raw))
    preflight(broken, tmp_path / "work")  # passes: footers only
    with pytest.raises(io.HMSDataError) as err:
        build_cache(_cfg(tmp_path), broken, "train", "eeg", train, workers=1, progress=False)
    assert victim.name in str(err.value) and "--skip-bad" in str(err.value) and "hms download" in str(err.value)


# ---------------------------------------------------------------- the tree member's feature caches

TREES_TINY = ["folds.n_folds=2", "train.batch_size=8", "model.max_iter=5", "model.min_samples_leaf=2"]
PREPARE_FEATURES = ("import sys; from hms.cache import features; features.CHUNK_ITEMS = 2; "
                    "from hms.config import load_config; from hms.training.experiment import prepare_experiment; "
                    "prepare_experiment(load_config(['configs/demo/qeeg_trees.yaml'], sys.argv[1:]), progress=False)")


@pytest.mark.slow
def test_concurrent_feature_builds_finish_alike_with_a_serial_build_s_bytes(tmp_path):
    """Two processes preparing a tree experiment on an empty work dir: one extracts each feature
    cache under its lock (2-window chunks over the cache workers), the other waits and reuses it;
    both finish, and the files equal a serial build's byte for byte."""
    data = write_mini_dataset(tmp_path / "data", n_patients=3, eegs_per_patient=2, n_test=2)
    cmd = [sys.executable, "-c", PREPARE_FEATURES, f"paths.data_dir={data}", *TREES_TINY]
    serial = subprocess.run([*cmd, f"paths.work_dir={tmp_path / 'serial'}", "cache.workers=1"],
                            capture_output=True, text=True)
    assert serial.returncode == 0, serial.stderr
    both = [subprocess.Popen([*cmd, f"paths.work_dir={tmp_path / 'shared'}"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in both]
    assert [p.returncode for p in both] == [0, 0], outputs
    built = sorted((tmp_path / "serial" / "cache").glob("features-train-*"))
    assert len(built) == 2  # plain and mirrored (infer.tta_lr_swap)
    for d in built:
        twin = tmp_path / "shared" / "cache" / d.name
        for f in ("data.npy", "windows.csv", "meta.json"):
            assert (twin / f).read_bytes() == (d / f).read_bytes(), f"{d.name}/{f}"
        assert not list(twin.glob("*.partial.npy"))
        assert np.isfinite(np.load(d / "data.npy")).all()


def test_an_interrupted_feature_build_resumes_where_it_stopped(tmp_path, monkeypatch):
    from hms.cache import features as fc

    windows = pd.DataFrame({"eeg_id": np.arange(10), "eeg_label_offset_seconds": 0.0,
                            "spectrogram_id": np.arange(10) + 100, "spectrogram_label_offset_seconds": 2.0})
    monkeypatch.setattr(fc, "CHUNK_ITEMS", 3)
    extractor = (_fake_extractor, (4,))
    real_job, seen = fc._chunk_job, []

    def crashing(job):
        if len(seen) == 2:
            raise RuntimeError("simulated crash")
        seen.append(job[0])
        return real_job(job)

    monkeypatch.setattr(fc, "_chunk_job", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fc.build_feature_cache(tmp_path, "train", {"k": 1}, windows, 4, extractor, workers=1, progress=False)
    monkeypatch.setattr(fc, "_chunk_job", lambda job: seen.append(job[0]) or real_job(job))
    root = fc.build_feature_cache(tmp_path, "train", {"k": 1}, windows, 4, extractor, workers=1, progress=False)
    assert seen == [0, 1, 2, 3]  # the two finished chunks were not extracted again
    cache = fc.open_feature_cache(root)
    np.testing.assert_array_equal(cache.data, _fake_features(windows, 4))
    shuffled = windows.sample(frac=1, random_state=0)
    np.testing.assert_array_equal(cache.data[cache.positions(shuffled)], _fake_features(shuffled, 4))
    assert (cache.positions(windows.assign(eeg_label_offset_seconds=1.0)) == -1).all()  # another window
    assert not (root / "data.partial.npy").exists()


def _fake_features(windows: pd.DataFrame, n: int) -> np.ndarray:
    return windows.eeg_id.to_numpy()[:, None] * 10.0 + windows.spectrogram_label_offset_seconds.to_numpy()[:, None] \
        + np.arange(n)


def _fake_extractor(n: int):
    return lambda windows: _fake_features(windows, n)
