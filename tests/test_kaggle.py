import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import execute_offline_notebook, tiny_config
from hms.data import schema


@pytest.fixture(scope="module")
def packaged(tiny_synth, tmp_path_factory):
    """A trained tiny experiment, its ensemble/submission, the dataset package and notebook."""
    from hms.inference.ensemble import write_submission
    from hms.kaggle import notebook, package
    from hms.data.tables import load_test
    from hms.training.experiment import exp_dir, train_experiment

    root = tmp_path_factory.mktemp("kaggle")
    cfg = tiny_config(tiny_synth, root / "work")
    train_experiment(cfg, progress=False)
    write_submission([exp_dir(cfg)], load_test(cfg), root / "sub", cfg.labels.min_votes_high)
    info = package.package(root / "dataset", root / "work", root / "sub", user="tester")
    nb_path = notebook.write_notebook(root / "notebook", root / "dataset")
    return {"root": root, "cfg": cfg, "info": info, "notebook": nb_path}


def test_package_holds_weights_configs_wheels_and_metadata(packaged):
    pkg = packaged["root"] / "dataset"
    assert sorted(p.name for p in (pkg / "tiny").iterdir()) == ["fold0", "fold1", "summary.json"]
    assert sorted(p.name for p in (pkg / "tiny" / "fold0").iterdir()) == ["best.pt", "config.yaml"]
    wheels = sorted(p.name.split("-")[0] for p in (pkg / "wheels").glob("*.whl"))
    assert wheels == ["hms_brain", "omegaconf"]
    meta = json.loads((pkg / "dataset-metadata.json").read_text())
    assert meta == {"title": "HMS weights and code", "id": "tester/hms-weights", "licenses": [{"name": "CC0-1.0"}]}
    assert packaged["info"]["bytes"] == sum(f.stat().st_size for f in pkg.rglob("*") if f.is_file()
                                            and f.name != "hms-package.json")


def test_a_failed_package_leaves_the_earlier_one_as_it_was(packaged, monkeypatch):
    """A missing Kaggle user name once surfaced after the old package was deleted and the new
    weights half copied."""
    from hms.kaggle import package
    from hms.kaggle.client import KaggleError

    root = packaged["root"]
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*") if "dataset" in p.parts[len(root.parts)])
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(root / "no-credentials"))
    with pytest.raises(KaggleError, match="no Kaggle user name"):
        package.package(root / "dataset", root / "work", root / "sub")
    monkeypatch.setattr(package, "build_hms_wheel", lambda out: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        package.package(root / "dataset", root / "work", root / "sub", user="tester")
    # the earlier package untouched, and no half-built folder left beside it
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if "dataset" in p.parts[len(root.parts)]) == before
    assert json.loads((root / "dataset" / "dataset-metadata.json").read_text())["id"] == "tester/hms-weights"
    assert (root / "dataset").stat().st_mode & 0o777 == (root / "work").stat().st_mode & 0o777  # a plain folder's mode


def test_kernel_metadata_fields(packaged):
    meta = json.loads((packaged["notebook"].parent / "kernel-metadata.json").read_text())
    assert meta["id"] == "tester/hms-inference" and meta["code_file"] == packaged["notebook"].name
    assert meta["enable_internet"] is False and meta["enable_gpu"] is True
    assert meta["dataset_sources"] == ["tester/hms-weights"]
    assert meta["competition_sources"] == [schema.KAGGLE_SLUG]
    assert meta["language"] == "python" and meta["kernel_type"] == "notebook" and meta["is_private"] is True
    # enable_gpu alone may get a P100, whose sm_60 the image's torch cannot run
    assert meta["machine_shape"] == "NvidiaTeslaT4"


def test_kernel_machine_shape_is_an_option_and_a_p100_is_refused(packaged, tmp_path):
    from hms.cli import main
    from hms.config import ConfigError
    from hms.kaggle.notebook import kernel_metadata

    assert kernel_metadata("u", "u/w", machine_shape="NvidiaL4")["machine_shape"] == "NvidiaL4"
    cpu = kernel_metadata("u", "u/w", machine_shape="none")
    assert cpu["enable_gpu"] is False and "machine_shape" not in cpu
    with pytest.raises(ConfigError, match="sm_60"):
        kernel_metadata("u", "u/w", machine_shape="NvidiaTeslaP100")
    out = tmp_path / "nb"
    assert main(["kaggle", "notebook", "--dir", str(out), "--package", str(packaged["root"] / "dataset"),
                 "--accelerator", "NvidiaL4"]) == 0
    assert json.loads((out / "kernel-metadata.json").read_text())["machine_shape"] == "NvidiaL4"


def test_hms_wheel_installs_offline(packaged, tmp_path):
    wheel = next((packaged["root"] / "dataset" / "wheels").glob("hms_brain-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "-q", "--target",
                    str(tmp_path), str(wheel)], check=True)
    out = subprocess.run([sys.executable, "-c", "import hms.kaggle.offline, hms; print(hms.__file__)"],
                         env={**os.environ, "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True, check=True)
    assert out.stdout.strip().startswith(str(tmp_path))


def test_notebook_offline_matches_local_predict_and_ensemble(packaged, tiny_synth, tmp_path, monkeypatch):
    from hms.inference.ensemble import apply_blend
    from hms.inference.predict import predict_experiment

    got = execute_offline_notebook(packaged["notebook"], tiny_synth, packaged["root"] / "dataset", tmp_path, monkeypatch)

    test = pd.read_csv(tiny_synth / schema.TEST_CSV)
    assert list(got.eeg_id) == list(test.eeg_id)
    ensemble = json.loads((packaged["root"] / "sub" / "ensemble.json").read_text())
    local = predict_experiment(packaged["root"] / "work" / "tiny", tiny_synth, tmp_path / "local", progress=False)
    expected = apply_blend(local[list(schema.VOTE_COLUMNS)].to_numpy()[None], ensemble)
    np.testing.assert_allclose(got[list(schema.VOTE_COLUMNS)].to_numpy(), expected, atol=1e-6)
    trained_sub = pd.read_csv(packaged["root"] / "sub" / "submission.csv")  # fold test preds from training
    np.testing.assert_allclose(got[list(schema.VOTE_COLUMNS)].to_numpy(),
                               trained_sub[list(schema.VOTE_COLUMNS)].to_numpy(), atol=1e-6)


def test_unreadable_test_file_gets_the_prior_under_the_limit_and_stops_above_it(packaged, tiny_synth, tmp_path,
                                                                                 monkeypatch):
    import hms.inference.batch
    from hms.data.io import HMSDataError
    from hms.inference.predict import predict_experiment

    data = tmp_path / "data"
    shutil.copytree(tiny_synth, data)
    test = pd.read_csv(data / schema.TEST_CSV)
    victim = int(test.eeg_id.iloc[1])
    (data / schema.TEST_EEG_DIR / f"{victim}.parquet").write_bytes(b"not a parquet")
    exp = packaged["root"] / "work" / "tiny"
    with pytest.raises(HMSDataError, match=rf"1 of {len(test)} test rows .*cannot read parquet"):  # 1 of 6 > 5%
        predict_experiment(exp, data, tmp_path / "work", progress=False)
    monkeypatch.setattr(hms.inference.batch, "MAX_FALLBACK_SHARE", 0.2)  # as if the test set were larger
    with pytest.warns(UserWarning, match=str(victim)):
        pred = predict_experiment(exp, data, tmp_path / "work", progress=False)
    prior = json.loads((exp / "summary.json").read_text())["prior"]
    np.testing.assert_allclose(pred[list(schema.VOTE_COLUMNS)].to_numpy()[1], prior, atol=1e-9)
    assert len(pred) == len(test) and np.isfinite(pred[list(schema.VOTE_COLUMNS)].to_numpy()).all()


def test_fallback_limit_is_five_percent_of_the_rows():
    from hms.data.io import HMSDataError
    from hms.inference.batch import check_fallback

    test = pd.DataFrame({"eeg_id": range(100)})
    ok = np.ones(100, bool)
    ok[:5] = False
    check_fallback(test, ok, [])  # 5%: per-row priors, with a warning later
    ok[5] = False
    with pytest.raises(HMSDataError, match="6 of 100 test rows"):
        check_fallback(test, ok, [])


@pytest.fixture
def fake_kaggle(tmp_path, monkeypatch):
    """A stand-in `kaggle` on PATH: records each call; `datasets status` fails until a create."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log, state = tmp_path / "calls.txt", tmp_path / "created"
    script = bin_dir / "kaggle"
    script.write_text(
        "#!/usr/bin/env python3\nimport sys, pathlib\n"
        f"log, state = pathlib.Path({str(log)!r}), pathlib.Path({str(state)!r})\n"
        "with log.open('a') as f: f.write(' '.join(sys.argv[1:]) + '\\n')\n"
        "if sys.argv[1:3] == ['datasets', 'status'] and not state.exists(): sys.exit(1)\n"
        "if sys.argv[1:3] == ['datasets', 'create']: state.write_text('yes')\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("KAGGLE_USERNAME", "tester")
    monkeypatch.setenv("KAGGLE_KEY", "secret")
    return log


def test_upload_creates_then_versions_with_zip_dir_mode(packaged, fake_kaggle):
    from hms.kaggle.package import push, upload

    pkg = packaged["root"] / "dataset"
    assert upload(pkg) == "create"
    assert upload(pkg, "second") == "version"
    push(packaged["notebook"].parent)
    push(packaged["notebook"].parent, "NvidiaL4")
    assert fake_kaggle.read_text().splitlines() == [
        "datasets status tester/hms-weights",
        f"datasets create -p {pkg} --dir-mode zip",
        "datasets status tester/hms-weights",
        f"datasets version -p {pkg} -m second --dir-mode zip",
        f"kernels push -p {packaged['notebook'].parent} --accelerator NvidiaTeslaT4",  # the metadata's shape
        f"kernels push -p {packaged['notebook'].parent} --accelerator NvidiaL4",
    ]


def test_hms_kaggle_push_passes_the_accelerator_and_refuses_a_p100(packaged, fake_kaggle, capsys):
    from hms.cli import main

    nb = str(packaged["notebook"].parent)
    assert main(["kaggle", "push", "--dir", nb, "--accelerator", "NvidiaTeslaT4"]) == 0
    assert main(["kaggle", "push", "--dir", nb, "--accelerator", "NvidiaTeslaP100"]) == 2
    assert "sm_60" in capsys.readouterr().err
    assert fake_kaggle.read_text().splitlines() == [f"kernels push -p {nb} --accelerator NvidiaTeslaT4"]
