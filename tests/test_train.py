import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiny_config
from hms.data import io, schema
from hms.training.losses import kl_loss
from hms.metric import kl_score


def test_loss_equals_the_metric_on_the_same_tensors():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 6, generator=g)
    votes = torch.randint(0, 4, (50, 6), generator=g).float()
    votes[votes.sum(1) == 0, 5] = 1
    target = votes / votes.sum(1, keepdim=True)
    expected = kl_score(votes.numpy(), torch.softmax(logits, 1).double().numpy())
    assert kl_loss(logits, target).item() == pytest.approx(expected, rel=1e-5)
    weights = torch.rand(50, generator=g)
    per_row = torch.stack([kl_loss(logits[i:i + 1], target[i:i + 1]) for i in range(50)])
    assert kl_loss(logits, target, weights).item() == pytest.approx(
        float((per_row * weights).sum() / weights.sum()), rel=1e-5)


FAMILIES = {
    "timm2d": ["model={kind: timm2d, backbone: resnet10t, drop_rate: 0.0}", "image.layout=channels",
               "image.panel_height=32", "image.panel_width=64", "mel.sr=50", "mel.n_fft=256",
               "mel.win_length=32", "mel.n_mels=32"],
    "timm_mel": ["model={kind: timm_mel, backbone: resnet10t, drop_rate: 0.0, sr: 50, n_fft: 256, "
                 "win_length: 32, n_mels: 32, layout: chain_avg_channels, image_size: [32, 64]}"],
    "conv1d": [],
    "cnn_gru": ["model={kind: cnn_gru, channels: [16, 32], strides: [4, 4], hidden: 32, rnn_layers: 1}"],
    "wavenet": ["model={kind: wavenet, channels: [4, 8], dilation_levels: [3, 2], pool: 4, head_hidden: 16}",
                "input.signal_seconds=10"],  # a full-length WaveNet is GPU-sized
}


@pytest.mark.parametrize("family", FAMILIES)
def test_each_model_family_learns_a_real_batch(family, tiny_synth, tmp_path):
    from hms.cache.store import open_cache
    from hms.inputs.dataset import HMSDataset
    from hms.models.network import build_network
    from hms.data.tables import load_train
    from hms.cache.prepare import prepare

    cfg = tiny_config(tiny_synth, tmp_path, *FAMILIES[family])
    caches = prepare(cfg, ("train",), workers=1, progress=False)["train"]
    ds = HMSDataset(load_train(cfg), open_cache(caches["eeg"]), open_cache(caches["spec"]), train=False)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=16)))
    torch.manual_seed(0)
    net = build_network(cfg)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2 if family == "wavenet" else 3e-3)  # gated convs start slow
    losses = []
    for _ in range(60 if family == "wavenet" else 25):
        loss = kl_loss(net(batch), batch["target"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], f"{family}: {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_items_ship_float16_and_mirror_hemispheres_per_item(tiny_synth, tmp_path):
    from hms.data.schema import MIRROR_PANELS, MIRROR_SIGNALS
    from hms.cache.store import open_cache
    from hms.inputs.dataset import HMSDataset
    from hms.inference.batch import to_device
    from hms.data.tables import load_train
    from hms.cache.prepare import prepare

    cfg = tiny_config(tiny_synth, tmp_path, "image.sources=[kaggle, eeg]")
    caches = prepare(cfg, ("train",), workers=1, progress=False)["train"]
    args = (load_train(cfg), open_cache(caches["eeg"]), open_cache(caches["spec"]))
    items = {}
    for p in (0.0, 1.0):
        torch.manual_seed(3)  # the same sub-window: it is drawn before the mirror coin
        items[p] = HMSDataset(*args, train=True, lr_swap=p)[5]
    plain, mirrored = items[0.0], items[1.0]
    assert plain["signal"].dtype == plain["spec"].dtype == torch.float16
    n = len(MIRROR_SIGNALS)
    assert torch.equal(mirrored["signal"][:n], plain["signal"][MIRROR_SIGNALS])
    assert torch.equal(mirrored["signal"][n:], plain["signal"][n:])  # midline and EKG stay
    torch.testing.assert_close(mirrored["spec"], plain["spec"][MIRROR_PANELS], equal_nan=True, atol=0, rtol=0)
    assert not torch.equal(mirrored["signal"], plain["signal"])
    from hms.inference.batch import mirrored as mirrored_batch  # test-time augmentation: the same swap, batched
    tta = mirrored_batch({k: plain[k][None] for k in ("signal", "spec")})
    assert torch.equal(tta["signal"][0], mirrored["signal"])
    torch.testing.assert_close(tta["spec"][0], mirrored["spec"], equal_nan=True, atol=0, rtol=0)
    on_device = to_device({k: v[None] for k, v in plain.items()}, "cpu")
    assert on_device["signal"].dtype == on_device["spec"].dtype == torch.float32
    assert on_device["index"].dtype == torch.int64
    torch.manual_seed(3)
    assert torch.equal(HMSDataset(*args, train=False, lr_swap=1.0)[5]["signal"],
                       HMSDataset(*args, train=False)[5]["signal"])  # never in evaluation


@pytest.fixture(scope="module")
def trained(tiny_synth, tmp_path_factory):
    from hms.training.experiment import train_experiment

    work = tmp_path_factory.mktemp("work")
    cfg = tiny_config(tiny_synth, work)
    return cfg, train_experiment(cfg, progress=False), work


def test_oof_covers_every_training_eeg_once_and_folds_do_not_leak(trained, tiny_synth):
    cfg, summary, work = trained
    assert summary["complete"] and np.isfinite(summary["oof_kl_high"])
    train = io.read_train_csv(tiny_synth / schema.TRAIN_CSV)
    oof = pd.read_csv(work / "tiny" / "oof.csv")
    assert set(oof.eeg_id) == set(train.eeg_id)
    assert oof.groupby("eeg_id").fold.nunique().max() == 1  # each eeg_id predicted by one fold only
    assert not oof.duplicated(["eeg_id", *[f"{c}_target" for c in schema.CLASSES]]).any()
    folds = pd.read_csv(work / "folds.csv")
    assert folds.groupby("patient_id").fold.nunique().max() == 1
    probs = oof[list(schema.VOTE_COLUMNS)].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-6)


def test_fold_artefacts_and_test_predictions(trained, tiny_synth):
    cfg, _, work = trained
    fold = work / "tiny" / "fold0"
    state = torch.load(fold / "best.pt", weights_only=True)  # a plain state_dict
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    assert not (fold / "last.pt").exists()
    log = pd.read_csv(fold / "log.csv")
    assert list(log.stage) == [0, 0, 1]
    test = io.read_test_csv(tiny_synth / schema.TEST_CSV)
    pred = pd.read_csv(work / "tiny" / "test_pred.csv")
    assert list(pred.eeg_id) == list(test.eeg_id)


def test_finished_fold_is_skipped_unless_forced(trained):
    from hms.training.experiment import train_experiment

    cfg, _, work = trained
    best = work / "tiny" / "fold0" / "best.pt"
    before = best.stat().st_mtime_ns
    train_experiment(cfg, folds=[0], progress=False)
    assert best.stat().st_mtime_ns == before
    train_experiment(cfg, folds=[0], force=True, progress=False)
    assert list((work / "tiny").glob("fold0.old-*/best.pt"))  # the old fold was kept aside


def test_killed_run_resumes_from_its_last_epoch(tiny_synth, tmp_path, monkeypatch, capsys):
    import hms.training.loop as train_mod
    from hms.training.experiment import train_experiment

    cfg = tiny_config(tiny_synth, tmp_path)
    real_save = train_mod.FoldRun.save_state

    def save_then_die(self, state, s_idx, epoch, *args):
        real_save(self, state, s_idx, epoch, *args)
        if (s_idx, epoch) == (0, 0):
            raise KeyboardInterrupt  # as if killed right after epoch 0 was saved

    monkeypatch.setattr(train_mod.FoldRun, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_experiment(cfg, folds=[0], progress=False)
    assert (tmp_path / "tiny" / "fold0" / "last.pt").is_file()
    monkeypatch.setattr(train_mod.FoldRun, "save_state", real_save)
    train_experiment(cfg, folds=[0], progress=True)
    assert "resuming at stage 0 epoch 1" in capsys.readouterr().out
    log = pd.read_csv(tmp_path / "tiny" / "fold0" / "log.csv")
    assert list(zip(log.stage, log.epoch)) == [(0, 0), (0, 1), (1, 0)]


def test_every_shipped_config_builds_its_network():
    from pathlib import Path

    from hms.config import load_config
    from hms.models.factory import fitted_once
    from hms.models.network import build_network

    configs = sorted(Path("configs").glob("*/*.yaml"))
    assert len(configs) >= 6
    for path in configs:
        cfg = load_config([path])
        if "pretrained" in cfg.model:  # the recipe's ImageNet weights: no network in tests
            cfg.model.pretrained = False
        net = build_network(cfg)
        if fitted_once(cfg):  # trees: no weights until fitted, but all their features named
            assert net.core.trees.n_trees == 0 and len(net.core.names) > 100, path
        else:
            assert sum(p.numel() for p in net.parameters()) > 1000, path


def test_torchrun_ddp_on_two_cpu_processes(tiny_synth, tmp_path):
    """DDP end to end with the gloo backend: ranks share the training shards, rank 0 writes."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "HMS_DATA_DIR": str(tiny_synth), "HMS_WORK_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    assert not any(tmp_path.iterdir())  # no caches, no folds: rank 0 builds them while rank 1 waits
    # lr 0: the weights never change, but BatchNorm's running statistics do (every epoch trains in
    # train mode), so an epoch may still improve; patience 1 stops the stage at the first that does not
    cmd = [str(torchrun), "--nproc_per_node=2", "-m", "hms", "train", "configs/demo/conv1d.yaml",
           "folds.n_folds=2", "train.patience=1", "train.stages=[{rows: all, epochs: 4, lr: 0.0}]"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "DDP: 2 processes, gloo, collective timeout 120 min" in proc.stdout
    oof = pd.read_csv(tmp_path / "conv1d" / "oof.csv")
    train = io.read_train_csv(tiny_synth / schema.TRAIN_CSV)
    assert set(oof.eeg_id) == set(train.eeg_id)
    for fold in (0, 1):  # early stopping fired on both ranks alike (a disagreement would hang)
        log = pd.read_csv(tmp_path / "conv1d" / f"fold{fold}" / "log.csv")
        best = list(log.best)
        assert list(log.epoch) == list(range(len(log))) and all(best[:-1]) and (len(log) == 4 or not best[-1])


@pytest.mark.parametrize("extras, n_signals", [([], 16), (["midline"], 18), (["midline", "ekg"], 19)])
def test_signal_models_take_as_many_signals_as_the_montage_makes(extras, n_signals, tmp_path):
    """signal.extras=[midline] once crashed every 1D model in its first step (split sizes of 16)."""
    from hms.signal.montage import montage_names
    from hms.models.network import build_network

    assert len(montage_names(extras)) == n_signals
    cfg = tiny_config(tmp_path, tmp_path, f"signal.extras={extras}")
    net = build_network(cfg).eval()
    with torch.no_grad():
        out = net({"signal": torch.randn(2, n_signals, schema.EEG_WINDOW_SAMPLES)})
    assert out.shape == (2, 6) and torch.isfinite(out).all()


def test_runs_left_out_of_the_test_mean_write_no_test_predictions_until_asked(tiny_synth, tmp_path):
    """train.test_runs: full: the CV runs' test predictions would be read by no one, so they are not
    made (issue 31: the demo's 15 CV runs each predicted the test for nothing). Switching the setting
    afterwards (it does not change what a run learns) predicts them from best.pt, the same numbers
    a run writes when it trains."""
    from hms.training.experiment import collect_experiment, exp_dir, train_experiment

    cfg = tiny_config(tiny_synth, tmp_path, "train.full_fits=1", "train.test_runs=full")
    assert train_experiment(cfg, progress=False)["complete"]
    root = exp_dir(cfg)
    assert not (root / "fold0" / "test_pred.csv").exists() and not (root / "fold1" / "test_pred.csv").exists()
    written = pd.read_csv(root / "full0" / "test_pred.csv")
    pd.testing.assert_frame_equal(pd.read_csv(root / "test_pred.csv"), written)

    (root / "full0" / "test_pred.csv").unlink()  # predicted again from best.pt: the same numbers
    collect_experiment(cfg)
    pd.testing.assert_frame_equal(pd.read_csv(root / "full0" / "test_pred.csv"), written, atol=1e-9, rtol=0)

    every = tiny_config(tiny_synth, tmp_path, "train.full_fits=1", "train.test_runs=all")
    summary = collect_experiment(every)
    assert summary["runs"] == ["fold0", "fold1", "full0"]
    frames = [pd.read_csv(root / r / "test_pred.csv") for r in summary["runs"]]
    votes = list(schema.VOTE_COLUMNS)
    np.testing.assert_allclose(pd.read_csv(root / "test_pred.csv")[votes].to_numpy(),
                               np.mean([f[votes].to_numpy() for f in frames], axis=0), atol=1e-9)
