"""Issue 12's training techniques: extra seeds and full-data fits, pseudo-labels, the decaying
low-vote weight, the random narrower band-pass, iterstrat folds."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from scipy import signal as sps

from conftest import tiny_config, train_frame
from hms.data import labels, schema

VOTES = list(schema.VOTE_COLUMNS)
TARGETS = [f"{c}_target" for c in schema.CLASSES]


# ---------------------------------------------------------------- seeds and full-data fits

def test_epochs_to_best_counts_each_stage_up_to_its_own_best_checkpoint():
    from hms.models.runs import epochs_to_best, full_fit_epochs

    # best at stage 0 epoch 2 (stage 0 ran 5 epochs, then stage 1 never improved)
    a = pd.DataFrame({"stage": [0, 0, 0, 0, 0, 1], "epoch": [0, 1, 2, 3, 4, 0],
                      "best": [True, True, True, False, False, False]})
    # best in stage 1 epoch 1; stage 0 ran 4 epochs but its best was epoch 2, and stage 1 started
    # from that checkpoint, not from epoch 3's weights: the full fit runs 3 epochs of stage 0
    b = pd.DataFrame({"stage": [0, 0, 0, 0, 1, 1], "epoch": [0, 1, 2, 3, 0, 1],
                      "best": [True, False, True, False, False, True]})
    # stage 1 never improved, so stage 2 started from stage 0's epoch 1: stage 1 counts nothing
    c = pd.DataFrame({"stage": [0, 0, 0, 0, 1, 1, 2], "epoch": [0, 1, 2, 3, 0, 1, 0],
                      "best": [True, True, False, False, False, False, True]})
    assert epochs_to_best(a, 2) == [3, 0]
    assert epochs_to_best(b, 2) == [3, 2]
    assert epochs_to_best(c, 3) == [2, 0, 1]
    assert full_fit_epochs([a, b, b], 2) == [3, 2]  # per-stage median over runs
    with pytest.raises(ValueError, match="no best epoch"):
        epochs_to_best(a.assign(best=False), 2)


def test_run_folders_are_named_once_and_found_by_the_loaders(tmp_path):
    from hms.models.runs import cv_runs, full_runs, run_dirs

    cfg = OmegaConf.create({"seed": 42, "folds": {"n_folds": 2}, "train": {"n_seeds": 2, "full_fits": 1}})
    runs = cv_runs(cfg) + full_runs(cfg, [3, 1])
    assert [r.name for r in runs] == ["fold0", "fold1", "fold0-seed1", "fold1-seed1", "full0"]
    assert len({r.seed for r in runs}) == len(runs)
    assert runs[-1].is_full and runs[-1].stage_epochs == (3, 1)
    for name in [r.name for r in runs] + ["fold0.old-123", "fold1-seed1.old-5", "notes"]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "best.pt").touch()
    assert [d.name for d in run_dirs(tmp_path)] == ["fold0", "fold0-seed1", "fold1", "fold1-seed1", "full0"]
    (tmp_path / "summary.json").write_text(json.dumps({"runs": ["fold0", "fold1"]}))  # full_fits back to 0
    assert [d.name for d in run_dirs(tmp_path)] == ["fold0", "fold1"]
    (tmp_path / "fold1" / "best.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"runs \['fold1'\] listed in summary.json have no best.pt"):
        run_dirs(tmp_path)


@pytest.fixture(scope="module")
def seeded(tiny_synth, tmp_path_factory):
    from hms.training.experiment import train_experiment

    work = tmp_path_factory.mktemp("seeded")
    cfg = tiny_config(tiny_synth, work, "train.n_seeds=2", "train.full_fits=1")
    return cfg, train_experiment(cfg, progress=False), work / "tiny"


def test_seeds_average_into_the_oof_and_every_run_into_the_test_mean(seeded):
    cfg, summary, root = seeded
    assert summary["runs"] == ["fold0", "fold1", "fold0-seed1", "fold1-seed1", "full0"]
    oof = pd.read_csv(root / "oof.csv")
    for k in (0, 1):
        a, b = (pd.read_csv(root / name / "val_pred.csv") for name in (f"fold{k}", f"fold{k}-seed1"))
        assert not np.allclose(a[VOTES], b[VOTES])  # another seed really trained another model
        mine = oof[oof.fold == k]
        np.testing.assert_allclose(mine[VOTES].to_numpy(), (a[VOTES].to_numpy() + b[VOTES].to_numpy()) / 2, atol=1e-9)
    assert not (root / "full0" / "val_pred.csv").exists()  # nothing held out
    tests = [pd.read_csv(root / name / "test_pred.csv")[VOTES].to_numpy() for name in summary["runs"]]
    np.testing.assert_allclose(pd.read_csv(root / "test_pred.csv")[VOTES].to_numpy(), np.mean(tests, axis=0), atol=1e-9)


def test_test_runs_full_keeps_the_full_fits_alone_and_the_loaders_follow(seeded):
    from hms.training.experiment import collect_experiment
    from hms.models.runs import run_dirs

    cfg, _, root = seeded
    try:
        summary = collect_experiment(OmegaConf.merge(cfg, {"train": {"test_runs": "full"}}))
        assert summary["runs"] == ["full0"] and [d.name for d in run_dirs(root)] == ["full0"]
        np.testing.assert_allclose(pd.read_csv(root / "test_pred.csv")[VOTES].to_numpy(),
                                   pd.read_csv(root / "full0" / "test_pred.csv")[VOTES].to_numpy(), atol=1e-9)
        cv = collect_experiment(OmegaConf.merge(cfg, {"train": {"test_runs": "cv"}}))
        assert cv["runs"] == ["fold0", "fold1", "fold0-seed1", "fold1-seed1"]
        with pytest.raises(ValueError, match="train.test_runs must be one of"):
            collect_experiment(OmegaConf.merge(cfg, {"train": {"test_runs": "best"}}))
    finally:
        collect_experiment(cfg)  # the module's other tests read every run's mean
    assert [d.name for d in run_dirs(root)][-1] == "full0" and len(run_dirs(root)) == 5


def test_full_fit_trains_the_cv_epochs_on_every_row(seeded):
    from hms.models.runs import full_fit_epochs

    cfg, _, root = seeded
    logs = [pd.read_csv(root / name / "log.csv") for name in ("fold0", "fold1", "fold0-seed1", "fold1-seed1")]
    expected = full_fit_epochs(logs, len(cfg.train.stages))
    full = pd.read_csv(root / "full0" / "log.csv")
    assert full.groupby("stage").size().reindex(range(2), fill_value=0).tolist() == expected
    assert full["best"].all() and "val_kl" not in full  # no validation: the last epoch is the model
    assert json.loads((root / "full0" / "metrics.json").read_text())["fold"] is None


def test_predict_experiment_loads_every_run_like_the_local_mean(seeded, tiny_synth):
    from hms.inference.predict import predict_experiment

    cfg, summary, root = seeded
    pred = predict_experiment(root, tiny_synth, root.parent, device="cpu", progress=False)
    local = pd.read_csv(root / "test_pred.csv")
    np.testing.assert_allclose(pred[VOTES].to_numpy(), local[VOTES].to_numpy(), atol=2e-5)


# ---------------------------------------------------------------- pseudo-labels

def oof_frame(rows: pd.DataFrame, probs) -> pd.DataFrame:
    out = rows[["eeg_id"]].copy()
    out[TARGETS] = rows[VOTES].to_numpy(np.float32)  # as val_pred.csv stores them
    out[VOTES] = probs
    return out


def test_pseudo_targets_mix_votes_and_oof_on_low_vote_rows_only():
    rows = pd.DataFrame({"eeg_id": [1, 1, 2, 3], labels.TOTAL_VOTES: [3, 3, 12, 2]})
    votes = np.array([[0, 1, 0, 0, 0, 2], [0, 1, 0, 0, 0, 2], [6, 0, 0, 0, 0, 6], [0, 0, 1, 0, 1, 0]], float)
    rows[VOTES] = votes / votes.sum(1, keepdims=True)
    items = rows.drop_duplicates("eeg_id")
    probs = np.array([[.1, .1, .1, .1, .1, .5], [.5, .1, .1, .1, .1, .1], [0, 0, .5, 0, .5, 0]])
    a = oof_frame(items, probs)
    b = oof_frame(items, probs[::-1][[2, 1, 0]])  # the same predictions from a second source, reordered
    b = b.iloc[::-1].reset_index(drop=True)
    out = labels.mix_pseudo_targets(rows, [a, b], 0.9, min_votes=10)
    expected_1 = 0.1 * np.array([0, 1 / 3, 0, 0, 0, 2 / 3]) + 0.9 * probs[0]
    np.testing.assert_allclose(out[VOTES].to_numpy()[0], expected_1)
    np.testing.assert_allclose(out[VOTES].to_numpy()[1], expected_1)  # every sub-window of the item
    np.testing.assert_allclose(out[VOTES].to_numpy()[2], rows[VOTES].to_numpy()[2])  # high-vote: the votes
    np.testing.assert_allclose(out[VOTES].to_numpy()[3], [0, 0, .5, 0, .5, 0])
    with pytest.raises(ValueError, match=r"1 low-vote rows \(eeg_id 3 first\)"):
        labels.mix_pseudo_targets(rows, [a[a.eeg_id != 3]], 0.9, min_votes=10)
    with pytest.raises(ValueError, match="within"):
        labels.mix_pseudo_targets(rows, [a], 1.5, min_votes=10)


def test_pseudo_stage_needs_its_teacher_trained_first(tiny_synth, tmp_path):
    from hms.training.pseudo import pseudo_labelled
    from hms.models.runs import RunSpec

    cfg = tiny_config(tiny_synth, tmp_path, "labels.pseudo.from=[teacher]")
    for run, missing in ((RunSpec("fold0", 0, 1), "fold0 is not trained"), (RunSpec("full0", None, 1), "oof.csv not found")):
        with pytest.raises(FileNotFoundError, match=f"{missing}; train 'teacher' first"):
            pseudo_labelled(pd.DataFrame(), cfg, run, torch.device("cpu"))


def test_a_students_fold_learns_only_from_teachers_that_never_saw_that_fold(seeded, tiny_synth, tmp_path):
    """Fold k's pseudo-labels come from the teacher's fold-k model alone: spoiling every other
    fold model and the OOF leaves them as they were. A full fit takes the teacher's OOF."""
    import shutil

    from hms.data.tables import load_train
    from hms.training.pseudo import pseudo_labelled
    from hms.models.runs import RunSpec

    cfg, _, root = seeded
    shutil.copytree(root, tmp_path / "teacher")
    scfg = OmegaConf.merge(cfg, {"name": "student", "paths": {"work_dir": str(tmp_path)},
                                 "labels": {"pseudo": {"from": ["teacher"], "weight": 1.0}}})
    train = load_train(cfg)
    rows = train[train.fold != 0]
    low = ~labels.high_vote_mask(rows, cfg.labels.min_votes_high)
    assert low.any() and (~low).any()
    before = pseudo_labelled(rows, scfg, RunSpec("fold0", 0, 1), torch.device("cpu"))
    np.testing.assert_array_equal(before[~low][VOTES].to_numpy(), rows[~low][VOTES].to_numpy())
    assert not np.allclose(before[low][VOTES].to_numpy(), rows[low][VOTES].to_numpy())
    state = torch.load(tmp_path / "teacher" / "fold1" / "best.pt", weights_only=True)
    torch.save({k: torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()},
               tmp_path / "teacher" / "fold1" / "best.pt")
    oof = pd.read_csv(tmp_path / "teacher" / "oof.csv")
    oof[VOTES] = 1 / 6
    oof.to_csv(tmp_path / "teacher" / "oof.csv", index=False)
    after = pseudo_labelled(rows, scfg, RunSpec("fold0", 0, 1), torch.device("cpu"))
    np.testing.assert_allclose(after[VOTES].to_numpy(), before[VOTES].to_numpy(), atol=1e-12)
    full = pseudo_labelled(train, scfg, RunSpec("full0", None, 1), torch.device("cpu"))
    np.testing.assert_allclose(full[~labels.high_vote_mask(train, 10)][VOTES].to_numpy(), 1 / 6, atol=1e-9)


# ---------------------------------------------------------------- low-vote weight schedule

def test_low_vote_weight_decays_linearly_over_the_stage():
    from hms.training.stage import Stage

    def stage(**weight):
        entry = OmegaConf.create({"rows": "all", "epochs": 4, "lr": 1e-3, **weight})
        return Stage.from_entry(entry, min_votes=10, default_weight=0.7)

    assert [round(stage(low_vote_weight=[0.8, 0.2]).weight_at(e), 6) for e in range(4)] == [0.8, 0.6, 0.4, 0.2]
    assert stage(low_vote_weight=0.5).weight_at(3) == 0.5
    assert stage().weight_at(3) == 0.7  # no weight of its own: the default (labels.low_vote_weight)


def test_train_step_reweights_low_vote_rows_with_this_epochs_weight():
    from hms.training.step import TrainStep

    seen = {}

    def fake_loss_net(batch, augmenter=None):
        seen["weight"] = batch["weight"].clone()
        return net(batch["signal"].mean(-1))

    net = torch.nn.Linear(2, 6)
    batch = {"signal": torch.randn(4, 2, 10), "spec": torch.zeros(4, 1, 1, 1), "target": torch.full((4, 6), 1 / 6),
             "weight": torch.ones(4), "low_vote": torch.tensor([True, False, True, False])}
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    cfg = OmegaConf.create({"train": {"grad_clip": 0}, "augment": {"mixup_alpha": 0.0, "mixup_p": 0.0}})
    TrainStep(net, opt, sched, cfg, torch.device("cpu"), "fp32", train_net=fake_loss_net)(batch, low_vote_weight=0.3)
    assert seen["weight"].tolist() == pytest.approx([0.3, 1.0, 0.3, 1.0])


def test_dataset_flags_low_vote_items(tiny_synth, tmp_path):
    from hms.cache.prepare import prepare
    from hms.cache.store import open_cache
    from hms.data.tables import load_train
    from hms.inputs.dataset import HMSDataset

    cfg = tiny_config(tiny_synth, tmp_path)
    caches = prepare(cfg, ("train",), workers=1, progress=False)["train"]
    ds = HMSDataset(load_train(cfg), open_cache(caches["eeg"]), open_cache(caches["spec"]), train=True,
                    weighting=(10, 0.25), use_spec=False)
    flags = np.array([bool(ds[i]["low_vote"]) for i in range(len(ds))])
    np.testing.assert_array_equal(flags, ds.items[labels.TOTAL_VOTES].to_numpy() < 10)
    assert flags.any() and (~flags).any()
    np.testing.assert_array_equal(np.array([float(ds[i]["weight"]) for i in range(len(ds))]),
                                  np.where(flags, 0.25, 1.0))


# ---------------------------------------------------------------- random narrower band-pass

def tone_rms_after(freq_hz: float, low: float, high: float) -> float:
    from hms.signal.cleaner import WindowCleaner
    from hms.training.augment import narrow_bandpass

    t = np.arange(schema.EEG_WINDOW_SAMPLES) / schema.SAMPLING_RATE
    x = torch.tensor(np.sin(2 * np.pi * freq_hz * t), dtype=torch.float32)[None, None]
    cfg = OmegaConf.create({"bandpass_p": 1.0, "bandpass_low": [low, low], "bandpass_high": [high, high]})
    cleaner = WindowCleaner({"bandpass": None, "notch_hz": None, "clip_uv": None, "scale": 1.0})
    y = cleaner(x, narrow_bandpass(1, cfg))[0, 0, 2000:-2000].numpy()  # away from the window edges
    return float(np.sqrt(np.mean(y ** 2)) / np.sqrt(0.5))


def test_narrow_bandpass_matches_a_zero_phase_butterworth():
    # scipy's 4th-order Butterworth high-pass at 3 Hz and low-pass at 8 Hz, forward and backward
    for f in (1.0, 2.5, 5.0, 9.0, 15.0):
        _, hp = sps.sosfreqz(sps.butter(4, 3.0, "highpass", fs=200, output="sos"), worN=[f], fs=200)
        _, lp = sps.sosfreqz(sps.butter(4, 8.0, "lowpass", fs=200, output="sos"), worN=[f], fs=200)
        expected = float(np.abs(hp[0]) ** 2 * np.abs(lp[0]) ** 2)
        assert tone_rms_after(f, 3.0, 8.0) == pytest.approx(expected, abs=0.01), f


def test_narrow_bandpass_is_off_by_default_and_drawn_per_window():
    from hms.training.augment import narrow_bandpass

    assert narrow_bandpass(4, OmegaConf.create({"bandpass_p": 0.0})) is None
    cfg = OmegaConf.create({"bandpass_p": 0.5, "bandpass_low": [0.5, 2.0], "bandpass_high": [10.0, 20.0]})
    torch.manual_seed(0)
    gains = narrow_bandpass(64, cfg)(torch.fft.rfftfreq(1024, 1 / 200))
    assert gains.shape == (64, 1, 513)
    untouched = (gains == 1).all(-1).flatten()
    assert 16 < int(untouched.sum()) < 48  # about half the windows keep their band
    assert len({round(float(g[0, 100]), 6) for g in gains[~untouched]}) > 10  # edges differ per window


# ---------------------------------------------------------------- iterstrat folds

def test_multilabel_folds_group_patients_and_are_recorded(tmp_path):
    from hms.data.folds import class_mix_spread, load_or_make_folds, make_folds

    train = train_frame(n_patients=30, eegs_per_patient=3, seed=1)
    folds = make_folds(train, 5, seed=3, method="multilabel")
    assert folds.groupby("patient_id").fold.nunique().max() == 1
    assert sorted(folds.fold.unique()) == [0, 1, 2, 3, 4]
    assert set(folds.eeg_id) == set(train.eeg_id)
    pd.testing.assert_frame_equal(folds, make_folds(train, 5, seed=3, method="multilabel"))
    spread = class_mix_spread(train, folds)
    assert sum(spread["eegs_per_fold"]) == train.eeg_id.nunique() and spread["mean_std"] >= 0
    path = tmp_path / "folds.csv"
    load_or_make_folds(train, path, 5, 3, "multilabel")
    assert json.loads(path.with_suffix(".json").read_text()) == {"n_folds": 5, "seed": 3, "method": "multilabel"}
    load_or_make_folds(train, path, 5, 3)  # back to the default: rebuilt, the old one kept aside
    assert path.with_suffix(".stale.csv").is_file()
    with pytest.raises(ValueError, match="folds.method"):
        make_folds(train, 5, seed=3, method="kfold")


def test_the_main_job_trains_pseudo_label_teachers_before_their_students():
    from hms.config import ConfigError
    from hms.jobs.experiments import teachers_first

    def exp(name, *sources):
        return OmegaConf.create({"name": name, "labels": {"pseudo": {"from": list(sources)}}})

    order = teachers_first([exp("student", "teacher", "elsewhere"), exp("mel"), exp("teacher")])
    assert [c.name for c in order] == ["mel", "teacher", "student"]
    with pytest.raises(ConfigError, match="cycle"):
        teachers_first([exp("a", "b"), exp("b", "a")])
