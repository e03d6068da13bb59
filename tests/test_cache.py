import numpy as np
import pytest

from conftest import write_mini_dataset
from hms.cache import build_cache, open_cache
from hms.config import load_config
from hms.data import io, schema
from hms.signal import filters, montage


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return write_mini_dataset(tmp_path_factory.mktemp("mini"), n_patients=3, eegs_per_patient=2, n_test=2)


def _cfg(tmp_path, *overrides):
    return load_config([], [f"paths.work_dir={tmp_path}", *overrides])


def test_eeg_cache_holds_the_cleaned_bipolar_span(mini, tmp_path):
    cfg = _cfg(tmp_path)
    train = io.read_train_csv(mini / schema.TRAIN_CSV)
    cache = open_cache(build_cache(cfg, mini, "train", "eeg", train, workers=1, progress=False))
    eeg_id = int(train.eeg_id.iloc[0])
    span = cache.row(eeg_id)
    raw = io.read_eeg_array(io.eeg_path(mini, "train", eeg_id))
    first = int(span.t0 * schema.SAMPLING_RATE)
    expected, _ = filters.clean(montage.bipolar(raw[first: first + span.length]), cfg.signal)
    got = np.asarray(cache.data[span.start: span.start + span.length], dtype=np.float32).T
    np.testing.assert_allclose(got, expected, atol=2e-2)  # float16 storage
    assert cache.data.dtype == np.float16 and cache.data.shape[1] == 16


def test_changed_parameter_builds_a_new_cache_and_reuses_an_identical_one(mini, tmp_path):
    train = io.read_train_csv(mini / schema.TRAIN_CSV)
    a = build_cache(_cfg(tmp_path), mini, "train", "eeg", train, workers=1, progress=False)
    again = build_cache(_cfg(tmp_path), mini, "train", "eeg", train, workers=1, progress=False)
    b = build_cache(_cfg(tmp_path, "signal.bandpass=[0.5,40]"), mini, "train", "eeg", train, workers=1,
                    progress=False)
    assert a == again and a != b
    assert (a / "meta.json").stat().st_mtime_ns == (again / "meta.json").stat().st_mtime_ns  # not rebuilt


def test_interrupted_build_resumes_where_it_stopped(mini, tmp_path, monkeypatch):
    import hms.cache as cache_mod

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
