"""EDA report, OOF evaluation and explanations (Grad-CAM, occlusion) on the tiny simulated dataset."""
import argparse
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

from conftest import tiny_config
from hms.data import schema


def trained_tiny_work(tiny_synth, tmp_path_factory):
    """A work dir with one trained tiny conv1d experiment ('tiny') and an ensemble.json, shared
    by this module and test_app.py (built once per session, in the session's base temp dir)."""
    from hms.inference.ensemble import write_submission
    from hms.data.tables import load_test
    from hms.training.experiment import train_experiment

    work = tmp_path_factory.getbasetemp() / "report_work"
    cfg = tiny_config(tiny_synth, work, f"paths.submission_dir={work / 'submissions'}",
                      "train.stages=[{rows: all, epochs: 1, lr: 3.0e-3}]")  # one epoch: only the outputs matter
    if not (work / "submissions" / "ensemble.json").is_file():
        train_experiment(cfg, progress=False)
        write_submission([work / "tiny"], load_test(cfg), work / "submissions", cfg.labels.min_votes_high)
    return cfg, work


@pytest.fixture(scope="module")
def tiny_work(tiny_synth, tmp_path_factory):
    return trained_tiny_work(tiny_synth, tmp_path_factory)


def test_eda_report_has_every_section_and_its_figures(tiny_synth, tmp_path):
    from hms.config import load_config
    from hms.report.eda import SECTIONS, build_report

    result = build_report(tiny_synth, tmp_path / "eda", load_config().mel, nan_sample=20)
    page = (tmp_path / "eda" / "index.html").read_text()
    for heading in SECTIONS:
        assert f"<h2>{heading}</h2>" in page.replace("&amp;", "&"), heading
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == len(result["figures"]) >= 4 + 3 * 3  # summary plots + 3 views per example class
    assert all((tmp_path / "eda" / s).is_file() and not s.startswith("/") for s in sources)
    counts_table = page.split("<h2>Counts</h2>")[1].split("</table>")[0]
    assert "<th>0</th>" not in counts_table and "<th>rows</th>" in counts_table  # no stray index column
    train = pd.read_csv(tiny_synth / schema.TRAIN_CSV)
    assert result["counts"] == {"rows": len(train), "eeg_ids": train.eeg_id.nunique(),
                                "spectrogram_ids": train.spectrogram_id.nunique(),
                                "patients": train.patient_id.nunique()}


def test_an_empty_vote_bucket_has_no_class_mix(tiny_synth):
    from hms.report.eda import class_mix_by_bucket

    train = pd.read_csv(tiny_synth / schema.TRAIN_CSV)
    total = train[list(schema.VOTE_COLUMNS)].sum(axis=1)
    mix = class_mix_by_bucket(train[~total.between(8, 9)])
    assert mix.loc["8-9", "rows"] == 0 and mix.loc["8-9", list(schema.CONSENSUS_NAMES)].isna().all()
    full = mix.drop(index="8-9")
    assert np.allclose(full[list(schema.CONSENSUS_NAMES)].sum(axis=1)[full.rows > 0], 1.0, atol=1e-3)


def test_vote_buckets_cover_every_count():
    from hms.report.views import vote_bucket

    b = vote_bucket([1, 2, 3, 7, 8, 9, 10, 15, 16, 28])
    assert list(b.astype(str)) == ["1-2", "1-2", "3-7", "3-7", "8-9", "8-9", "10-15", "10-15", "16+", "16+"]


def test_evaluation_matches_a_direct_sklearn_computation(tiny_work, tiny_synth):
    from hms.metric import kl_score
    from hms.report.evaluate import evaluate_experiment

    cfg, work = tiny_work
    result = evaluate_experiment(work / "tiny", tiny_synth, 10)
    oof = pd.read_csv(work / "tiny" / "oof.csv")
    probs = oof[list(schema.VOTE_COLUMNS)].to_numpy()
    target = oof[[f"{c}_target" for c in schema.CLASSES]].to_numpy()
    y = target.argmax(1)
    checked = 0
    for k, cls in enumerate(schema.CLASSES):
        if 0 < (y == k).sum() < len(y):
            assert result["per_class"][cls]["roc_auc"] == pytest.approx(roc_auc_score(y == k, probs[:, k]))
            assert result["per_class"][cls]["pr_auc"] == pytest.approx(average_precision_score(y == k, probs[:, k]))
            checked += 1
        else:
            assert math.isnan(result["per_class"][cls]["roc_auc"])
    assert checked >= 3
    assert result["confusion"] == confusion_matrix(y, probs.argmax(1), labels=range(6)).tolist()
    assert result["oof_kl"] == pytest.approx(kl_score(target, probs))
    # bucket means weighted by their counts give back the overall KL: no row lost or doubled
    buckets = [v for v in result["kl_by_votes"].values() if v["n"]]
    assert sum(v["n"] for v in buckets) == len(oof)
    assert sum(v["kl"] * v["n"] for v in buckets) / len(oof) == pytest.approx(result["oof_kl"])
    rel = result["reliability"]["other"]
    assert sum(r["n"] for r in rel) == len(oof) and all(0 <= r["pred"] <= 1 for r in rel)
    test = result["test"]  # the simulator wrote answers: model vs oracle on test
    assert test is not None and test["oracle_kl"] < test["prior_kl"]
    saved = json.loads((work / "tiny" / "eval" / "evaluation.json").read_text())
    assert saved["confusion"] == result["confusion"]
    assert all((work / "tiny" / "eval" / f).is_file() for f in result["figures"])


def _first_eeg(tiny_synth) -> int:
    return int(pd.read_csv(tiny_synth / schema.TRAIN_CSV).eeg_id.iloc[0])


@pytest.mark.parametrize("family", ["timm2d", "timm_mel"])
def test_gradcam_map_has_the_image_shape_and_is_not_constant(family, tiny_synth, tmp_path):
    import torch
    from test_train import FAMILIES

    from hms.models.network import build_network
    from hms.report.explain import explain_sample, sample_for

    cfg = tiny_config(tiny_synth, tmp_path, *FAMILIES[family])
    torch.manual_seed(0)
    net = build_network(cfg).eval()  # untrained: Grad-CAM only needs gradients
    exp = explain_sample(cfg, net, sample_for(cfg, _first_eeg(tiny_synth)))
    assert exp.kind == "gradcam"
    assert exp.importance.shape == exp.image.shape[-2:]
    assert exp.importance.std() > 1e-3 and exp.importance.min() >= 0 and exp.importance.max() <= 1
    assert exp.probs.sum() == pytest.approx(1, abs=1e-5)
    explained = explain_sample(cfg, net, sample_for(cfg, _first_eeg(tiny_synth)), target_class=3)
    assert explained.target_class == 3


def test_occlusion_of_a_network_with_a_context_branch_shows_its_whole_prediction(tiny_synth, tmp_path):
    """The occlusion probabilities are the network's (1D model + spectrogram branch), not the
    1D model's alone."""
    import torch

    from hms.report.explain import explain_sample, sample_for
    from hms.models.network import build_network

    cfg = tiny_config(tiny_synth, tmp_path, "context.enabled=true")
    torch.manual_seed(0)
    net = build_network(cfg).eval()
    torch.nn.init.normal_(net.context.head[-1].weight)  # a branch that moves the prediction
    batch = sample_for(cfg, _first_eeg(tiny_synth))
    with torch.no_grad():
        whole = torch.softmax(net(batch), 1)[0].double().numpy()
        alone = torch.softmax(net.core(net.model_signal(batch["signal"])), 1)[0].double().numpy()
    exp = explain_sample(cfg, net, batch)
    np.testing.assert_allclose(exp.probs, whole, atol=1e-6)
    assert np.abs(exp.probs - alone).max() > 1e-3


def test_occlusion_curve_of_a_trained_1d_model(tiny_work, tiny_synth):
    from hms.report.explain import explain, fold_of

    cfg, work = tiny_work
    eeg_id = _first_eeg(tiny_synth)
    info = explain(work / "tiny", eeg_id, paths=cfg.paths)
    exp = info["explanation"]
    assert info["method"] == "occlusion" and info["fold"] == fold_of(work / "tiny", eeg_id)
    n = exp.signal.shape[-1]
    fs = schema.SAMPLING_RATE / cfg.input.downsample
    assert len(exp.importance) == len(exp.times) == len(exp.kl) == math.ceil(n / (2.0 * fs))  # 2 s windows
    assert np.all(exp.kl >= -1e-9) and exp.kl.max() > 0 and np.abs(exp.importance).max() > 0
    cls = info["explained_class"]
    stem = work / "tiny" / "explain" / f"{eeg_id}_fold{info['fold']}_occlusion_{cls}"
    saved = json.loads(stem.with_suffix(".json").read_text())
    assert saved["prediction"] == pytest.approx(dict(zip(schema.CLASSES, exp.probs.round(6))))
    assert saved["occlusion"][f"drop_in_p_{cls}"] == pytest.approx(exp.importance.tolist())
    assert stem.with_suffix(".png").is_file()
    # another class: its own numbers (p_k - p_k without the block) and its own files
    other = next(k for k in range(schema.N_CLASSES) if schema.CLASSES[k] != cls)
    again = explain(work / "tiny", eeg_id, paths=cfg.paths, target_class=other)
    assert again["png"] != info["png"] and stem.with_suffix(".png").is_file()
    np.testing.assert_allclose(again["explanation"].kl, exp.kl)  # class-free: the same
    assert not np.allclose(again["explanation"].importance, exp.importance)


def test_occlusion_masks_fade_each_block_smoothly():
    from hms.report.explain import occlusion_masks

    masks, starts = occlusion_masks(n=500, win=100, taper=20)
    assert masks.shape == (5, 500) and list(starts) == [0, 100, 200, 300, 400]
    m = masks.numpy()
    assert np.all(m[1, 110:190] == 0) and np.all(m[1, :90] == 1) and np.all(m[1, 210:] == 1)  # block 100..199
    assert m[1, 100] == pytest.approx(0.5) and m[1, 200] == pytest.approx(0.5)  # ramps centred on the edges
    assert np.abs(np.diff(m, axis=1)).max() < 0.1  # no step anywhere
    assert np.all(m[0, :90] == 0) and np.all(m[-1, 410:] == 0)  # no ramp at the window's own ends
    hard, _ = occlusion_masks(n=500, win=100, taper=0)
    assert set(np.unique(hard.numpy())) == {0.0, 1.0} and hard.numpy()[1, 100:200].max() == 0


def test_registered_commands_run_from_the_cli_parser(tiny_work, tiny_synth, capsys):
    from hms.cli import _add_config_args
    from hms.report.commands import register

    cfg, work = tiny_work
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True), _add_config_args)
    paths = [f"paths.work_dir={work}", f"paths.data_dir={tiny_synth}"]
    args = parser.parse_args(["evaluate", "--exp", "tiny", *paths])
    assert args.func(args) == 0
    assert "roc_auc" in capsys.readouterr().out
    args = parser.parse_args(["explain", "--exp", "tiny", "--eeg-id", str(_first_eeg(tiny_synth)),
                              "--class", "lpd", *paths])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["explained_class"] == "lpd"
    assert parser.parse_args(["app", "--port", "9999"]).port == 9999
