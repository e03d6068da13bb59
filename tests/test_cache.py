import numpy as np
import pandas as pd
import pytest

from conftest import write_mini_dataset
from hms.cache.store import build_cache, open_cache
from hms.config import load_config
from hms.data import io, schema


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
    # the double banana's first and last pairs, spelled out: Fp1-F7 (LL) and P4-O2 (RP)
    for col, (a, b) in ((0, ("Fp1", "F7")), (15, ("P4", "O2"))):
        expected = (frame[a] - frame[b]).to_numpy()[first: first + span.length]
        np.testing.assert_allclose(got[:, col], expected, rtol=1e-3, atol=1e-2)  # float16 storage
    assert cache.data.dtype == np.float16 and cache.data.shape[1] == 16


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


def test_montage_change_builds_a_new_cache_filter_change_reuses_it(mini, tmp_path):
    train = io.read_train_csv(mini / schema.TRAIN_CSV)
    a = build_cache(_cfg(tmp_path), mini, "train", "eeg", train, workers=1, progress=False)
    again = build_cache(_cfg(tmp_path, "signal.bandpass=[0.5,40]"), mini, "train", "eeg", train, workers=1,
                        progress=False)
    b = build_cache(_cfg(tmp_path, "signal.extras=[midline]"), mini, "train", "eeg", train, workers=1,
                    progress=False)
    assert a == again and a != b  # filters run per window at training time: no new cache for them
    assert (a / "meta.json").stat().st_mtime_ns == (again / "meta.json").stat().st_mtime_ns  # not rebuilt
    assert open_cache(b).data.shape[1] == 18


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
