"""The tree member: torch trees against scikit-learn's own predictions, soft-target fitting,
the qEEG features against scipy references and signals with known answers, and a whole
experiment through the fold machinery and `hms predict`."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import signal as sps
from scipy import stats
from sklearn.ensemble import HistGradientBoostingClassifier

from conftest import tiny_config
from hms.data import schema
from hms.models.qeeg import BANDS_HZ, PER_SIGNAL, EEGFeatures
from hms.models.trees import QEEGTrees, TreeEnsemble
from hms.signal.montage import montage_names

VOTES = list(schema.VOTE_COLUMNS)
FS = 50.0
N = int(schema.EEG_WINDOW_SECONDS * FS)


def fitted_sklearn(classes, seed=0, n=400):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    score = x[:, 0] + 0.5 * x[:, 1] + 0.5 * rng.normal(size=n)
    y = np.asarray(classes)[np.digitize(score, np.quantile(score, np.linspace(0, 1, len(classes) + 1)[1:-1]))]
    x[rng.random(x.shape) < 0.1] = np.nan  # NaN in training: splits learn which side missing goes
    model = HistGradientBoostingClassifier(max_iter=20, max_depth=4, random_state=0).fit(x, y)
    test = rng.normal(size=(200, 6))
    test[rng.random(test.shape) < 0.1] = np.nan
    return model, test


def torch_probs(trees: TreeEnsemble, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(trees(torch.from_numpy(x)), dim=1).numpy()


@pytest.mark.parametrize("classes", [[0, 1, 2, 3, 4, 5], [0, 2, 5], [1, 4]], ids=["six", "three", "binary"])
def test_torch_trees_reproduce_sklearn_probabilities(classes):
    model, test = fitted_sklearn(classes)
    trees = TreeEnsemble()
    trees.load_sklearn(model)
    probs = torch_probs(trees, test)
    np.testing.assert_allclose(probs[:, classes], model.predict_proba(test), rtol=0, atol=1e-12)
    absent = [c for c in range(6) if c not in classes]
    assert probs[:, absent].max(initial=0.0) < 1e-10  # no votes for a class: no probability


def test_fitted_trees_load_into_an_empty_ensemble_through_a_weights_only_checkpoint(tmp_path):
    model, test = fitted_sklearn(list(range(6)))
    trees = TreeEnsemble()
    trees.load_sklearn(model)
    torch.save(trees.state_dict(), tmp_path / "best.pt")
    fresh = TreeEnsemble()
    assert fresh.n_trees == 0
    fresh.load_state_dict(torch.load(tmp_path / "best.pt", weights_only=True))
    assert fresh.n_trees == 20 * 6
    np.testing.assert_array_equal(torch_probs(fresh, test), torch_probs(trees, test))


def test_fit_learns_vote_distributions_not_majority_labels():
    """Soft targets as weighted class rows: the fit converges to the vote shares."""
    rng = np.random.default_rng(0)
    group = rng.integers(0, 2, 2000)
    features = np.c_[group + rng.normal(0, 0.05, 2000), rng.normal(size=(2000, 3))]
    shares = np.array([[0.7, 0.3, 0, 0, 0, 0], [0, 0, 0.2, 0, 0, 0.8]])
    net = QEEGTrees(max_iter=200, learning_rate=0.1, min_samples_leaf=20)
    net.fit(features, shares[group], np.ones(2000))
    with torch.no_grad():
        probs = torch.softmax(net.trees(torch.from_numpy(features)), 1).numpy()
    for g in (0, 1):
        np.testing.assert_allclose(probs[group == g].mean(0), shares[g], atol=0.02)


def test_fit_names_non_finite_features():
    net = QEEGTrees()
    features = np.zeros((10, len(net.names)))
    features[3, 5] = np.inf
    targets = np.tile(np.eye(6)[[0, 1]], (5, 1))
    with pytest.raises(ValueError, match=net.names[5]):
        net.fit(features, targets, np.ones(10))


# ---------------------------------------------------------------- qEEG features

def features_of(x: np.ndarray, extras=()) -> pd.Series:
    module = EEGFeatures(montage_names(list(extras)), FS)
    values = module(torch.as_tensor(x)[None])[0].numpy()
    assert values.shape == (module.n_features,) and len(set(module.names)) == module.n_features
    return pd.Series(values, index=module.names)


def signals(fn, n_signals=16, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(N) / FS
    return np.stack([fn(t, i) + 0.01 * rng.normal(size=N) for i in range(n_signals)])


def test_band_shares_and_centroid_match_scipys_periodogram():
    x = signals(lambda t, i: np.sin(2 * np.pi * 1.0 * t) + 0.5 * np.sin(2 * np.pi * (6 + i / 4) * t + i)
                + 0.2 * np.random.default_rng(i).normal(size=t.size))
    f = features_of(x)
    hz, power = sps.periodogram(x, FS, window=np.hanning(N), detrend=False)  # a scaled |rfft|^2
    bands = np.stack([power[:, (hz >= lo) & (hz < hi)].sum(1) for _, lo, hi in BANDS_HZ], 1)
    shares = np.log(bands / bands.sum(1, keepdims=True))
    in_range = (hz >= 0.5) & (hz < 20)
    centroid = (power[:, in_range] * hz[in_range]).sum(1) / power[:, in_range].sum(1)
    for chain_index, chain in enumerate(schema.CHAIN_NAMES):
        rows = slice(4 * chain_index, 4 * chain_index + 4)
        for band_index, (band, _, _) in enumerate(BANDS_HZ):
            assert f[f"{chain}_log_share_{band}"] == pytest.approx(shares[rows, band_index].mean(), abs=1e-6)
        assert f[f"{chain}_centroid_hz"] == pytest.approx(centroid[rows].mean(), abs=1e-6)


def test_an_alpha_rhythm_is_all_alpha():
    f = features_of(signals(lambda t, i: np.sin(2 * np.pi * 10 * t)))
    assert f["LL_log_share_alpha"] > -0.01 and f["LL_log_share_delta"] < -8
    assert f["RP_centroid_hz"] == pytest.approx(10.0, abs=0.05)


def test_kurtosis_and_line_length_match_their_definitions():
    x = np.random.default_rng(1).standard_t(5, size=(16, N))
    f = features_of(x)
    assert f["LL_log_kurtosis"] == pytest.approx(np.log(stats.kurtosis(x[:4], axis=1, fisher=False)).mean(), abs=1e-6)
    assert f["RL_log_line_length"] == pytest.approx(np.log(np.abs(np.diff(x[4:8])).mean(1)).mean(), abs=1e-9)


def test_periodic_discharges_show_their_period():
    period = 1.25  # seconds: a periodic discharge rate of 0.8 Hz

    def spikes(t, i):
        return 5 * np.exp(-0.5 * (((t + 0.1 * i) % period - period / 2) / 0.04) ** 2)

    f = features_of(signals(spikes))
    noise = features_of(np.random.default_rng(2).normal(size=(16, N)))
    assert f["LL_period_s"] == pytest.approx(period, abs=0.03)
    assert f["LL_periodicity"] > 0.8 and noise["LL_periodicity"] < 0.3


def test_laterality_synchrony_and_groups():
    same = np.random.default_rng(3).normal(size=N)
    left_louder = np.stack([same * (2.0 if i in (0, 1, 2, 3, 8, 9, 10, 11) else 1.0) for i in range(16)])
    f = features_of(left_louder)
    assert f["asym_log_power"] == pytest.approx(np.log(4.0), abs=1e-6)
    assert f["sync_all"] == pytest.approx(1.0, abs=1e-6) and f["sync_left_right"] == pytest.approx(1.0, abs=1e-6)
    independent = features_of(np.random.default_rng(4).normal(size=(16, N)))
    assert independent["sync_all"] < 0.05 and independent["asym_log_power"] < 0.1
    with_midline = features_of(np.random.default_rng(5).normal(size=(18, N)), extras=["midline"])
    assert len(with_midline) == len(independent) + len(PER_SIGNAL)
    assert "midline_log_power" in with_midline


def test_features_need_the_double_banana_first():
    with pytest.raises(ValueError, match="double-banana"):
        EEGFeatures(["Fz-Cz", *schema.BIPOLAR_NAMES], FS)


# ---------------------------------------------------------------- an experiment

TREES = ["model={kind: qeeg_trees, max_iter: 20, min_samples_leaf: 5}", "train.full_fits=1",
         "train.test_runs=full", "train.stages=[{rows: all, epochs: 1, lr: 0.0, low_vote_weight: 0.5}]"]


@pytest.fixture(scope="module")
def trees_experiment(tiny_synth, tmp_path_factory):
    from hms.training.experiment import train_experiment

    cfg = tiny_config(tiny_synth, tmp_path_factory.mktemp("trees"), *TREES)
    return cfg, train_experiment(cfg, progress=False)


def test_a_trees_experiment_runs_through_folds_full_fit_and_oof(trees_experiment):
    from hms.training.experiment import exp_dir

    cfg, summary = trees_experiment
    root = exp_dir(cfg)
    assert summary["complete"] and summary["runs"] == ["full0"]
    oof = pd.read_csv(root / "oof.csv")
    assert oof.groupby("eeg_id").fold.nunique().max() == 1 and set(oof.fold) == {0, 1}
    np.testing.assert_allclose(oof[VOTES].sum(axis=1), 1.0, atol=1e-6)
    log = pd.read_csv(root / "fold0" / "log.csv")
    assert len(log) == 1 and log.best.all() and log.val_kl_high.notna().all()
    state = torch.load(root / "fold0" / "best.pt", weights_only=True)
    assert state["core.trees.feature"].shape[0] > 0  # the checkpoint holds the fitted trees


def test_hms_predict_reruns_the_saved_trees_like_the_run(trees_experiment, tiny_synth):
    from hms.inference.predict import predict_experiment
    from hms.training.experiment import exp_dir

    cfg, _ = trees_experiment
    root = exp_dir(cfg)
    pred = predict_experiment(root, tiny_synth, root.parent, device="cpu", progress=False)
    local = pd.read_csv(root / "test_pred.csv")
    np.testing.assert_allclose(pred[VOTES].to_numpy(), local[VOTES].to_numpy(), atol=1e-6)
    assert pred[VOTES].std().max() > 0  # not the uniform distribution of an empty ensemble


def test_trees_refuse_the_context_branch(tiny_synth, tmp_path):
    from hms.models.network import build_network

    cfg = tiny_config(tiny_synth, tmp_path, *TREES, "context.enabled=true")
    with pytest.raises(ValueError, match="context.enabled: false"):
        build_network(cfg)


# ---------------------------------------------------------------- the feature caches

def reference_run(cfg, fold: int):
    """Today's path for one CV run, extracting its own features: (fit features, fitted core,
    validation probabilities with the TTA) through the run's loaders, as TreeRun did before the
    feature caches."""
    from hms.cache.prepare import prepare
    from hms.cache.store import open_cache
    from hms.data.tables import load_train
    from hms.inputs.dataset import HMSDataset
    from hms.inputs.loaders import make_loader
    from hms.inference.trees import feature_matrix
    from hms.models.network import build_network
    from hms.inference.batch import predict_probs

    caches = prepare(cfg, progress=False)
    eeg, spec = open_cache(caches["train"]["eeg"]), open_cache(caches["train"]["spec"])
    train = load_train(cfg)
    fit_rows = HMSDataset(train[train.fold != fold], eeg, spec, train=False, weighting=(cfg.labels.min_votes_high, 0.5),
                          use_spec=True, signal_cfg=cfg.signal)
    net = build_network(cfg)
    features = feature_matrix(net, make_loader(fit_rows, cfg, shuffle=False), torch.device("cpu"))
    net.core.fit(features, fit_rows.targets, fit_rows.weights, seed=cfg.seed)
    val = HMSDataset(train[train.fold == fold], eeg, spec, train=False, use_spec=True, signal_cfg=cfg.signal)
    probs = predict_probs(net, make_loader(val, cfg, shuffle=False), torch.device("cpu"), tta_lr_swap=True)
    return features, net, probs, fit_rows


def test_cached_features_and_fitted_trees_are_bit_identical_to_extracting_per_run(trees_experiment, monkeypatch):
    """The runs read features built once by the cache workers (other processes, one thread each,
    other batches); the features, the fitted trees and the TTA OOF equal, bit for bit, what a run
    extracting its own features through its loaders computed."""
    import shutil

    from hms.cache import features as feature_cache
    from hms.cache.prepare import prepare
    from hms.data.tables import load_train
    from hms.training.experiment import exp_dir
    from hms.inference.trees import ItemFeatures

    cfg, _ = trees_experiment
    features, net, probs, fit_rows = reference_run(cfg, fold=0)
    caches = prepare(cfg, progress=False)
    for built in (Path(cfg.paths.work_dir) / "cache").glob("features-train-*"):
        shutil.rmtree(built)  # rebuilt below in 7-window chunks over 2 worker processes
    monkeypatch.setattr(feature_cache, "CHUNK_ITEMS", 7)
    cached = ItemFeatures(cfg, "train", load_train(cfg), caches["train"]["eeg"], caches["train"]["spec"], False,
                          workers=2)
    assert len(cached.caches[False].windows) > 2 * 7  # several chunks, so both workers took some
    np.testing.assert_array_equal(cached.of(fit_rows.items), features)
    saved = torch.load(exp_dir(cfg) / "fold0" / "best.pt", weights_only=True)
    for name, value in net.state_dict().items():
        assert torch.equal(saved[name], value), name
    oof = pd.read_csv(exp_dir(cfg) / "fold0" / "val_pred.csv")
    np.testing.assert_array_equal(oof[VOTES].to_numpy(), probs)


def test_an_experiment_extracts_each_window_once(tiny_synth, tmp_path, monkeypatch):
    """Five... here two folds and a full fit, their TTA validation and test predictions, then
    `hms predict`: every train and test window is extracted once per view (plain, mirrored)."""
    from hms.data.tables import load_test, load_train
    from hms.inference.predict import predict_experiment
    from hms.inference import trees as loop
    from hms.training.experiment import exp_dir, train_experiment

    extracted = []
    original = loop.feature_matrix

    def counting(net, loader, device, *args, **kwargs):
        out = original(net, loader, device, *args, **kwargs)
        extracted.append(len(out))
        return out

    monkeypatch.setattr(loop, "feature_matrix", counting)
    cfg = tiny_config(tiny_synth, tmp_path, *TREES, "cache.workers=1")
    assert train_experiment(cfg, progress=False)["complete"]
    n_train = len(load_train(cfg).drop_duplicates(["eeg_id", *VOTES]))
    n_test = len(load_test(cfg))
    assert sum(extracted) == 2 * (n_train + n_test)  # plain and mirrored (infer.tta_lr_swap), once each
    predict_experiment(exp_dir(cfg), tiny_synth, tmp_path, device="cpu", progress=False)
    assert sum(extracted) == 2 * (n_train + n_test)  # hms predict reads the test caches too


def test_hms_run_prepares_each_experiment_once(tiny_synth, tmp_path, monkeypatch):
    """build_once prepares (validate report, caches, folds, feature caches) and hands that to
    train_experiment, which no longer prepares and hashes it all again; `hms train` alone
    still prepares for itself."""
    from hms.jobs.run import run_all
    from hms.training import experiment

    calls = []
    real = experiment.prepare
    monkeypatch.setattr(experiment, "prepare", lambda cfg, **kw: calls.append(cfg.name) or real(cfg, **kw))
    overrides = [f"paths.data_dir={tiny_synth}", f"paths.work_dir={tmp_path / 'work'}",
                 f"paths.submission_dir={tmp_path / 'sub'}", "folds.n_folds=2", "train.batch_size=16",
                 "model.max_iter=20", "model.min_samples_leaf=5"]
    result = run_all(["configs/demo/qeeg_trees.yaml"], overrides)
    assert calls == ["qeeg_trees"] and (tmp_path / "sub" / "submission.csv").is_file()
    assert result["rows"][0]["model"] == "qeeg_trees"
    from hms.config import load_config

    experiment.train_experiment(load_config(["configs/demo/qeeg_trees.yaml"], overrides), progress=False)
    assert calls == ["qeeg_trees", "qeeg_trees"]  # alone, it prepares (every run is done: nothing retrains)


def test_a_tree_run_joins_no_process_group_and_sets_up_no_gradient_steps(trees_experiment, monkeypatch):
    """TreeRun shares Run's folder, rows, validation and files, not FoldRun's torchrun set-up
    (DDP refuses a network without parameters) nor its precision and micro-batch set-up; under
    torchrun it still refuses before building anything."""
    from hms.cache.prepare import prepare
    from hms.config import ConfigError
    from hms.data.tables import load_train
    from hms.models.runs import RunSpec
    from hms.training import loop

    def refuse(*args, **kwargs):
        raise AssertionError("a tree run set up what only gradient steps need")

    cfg, _ = trees_experiment
    train, caches = load_train(cfg), prepare(cfg, progress=False)
    monkeypatch.setattr(loop, "init_distributed", refuse)
    monkeypatch.setattr(loop, "device_setup", refuse)
    run = loop.TreeRun(cfg, RunSpec("fold0", 0, 42), train, caches, False)
    assert run.is_main and not hasattr(run, "train_net")
    assert run.stages[0].weighting == (cfg.labels.min_votes_high, 0.5)  # the first stage's, not labels.*'s 1.0
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="fitted once, in one process"):
        loop.TreeRun(cfg, RunSpec("fold0", 0, 42), train, caches, False)
