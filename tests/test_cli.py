import os
import subprocess
import sys

import pandas as pd
import pytest

from hms.cli import main
from hms.data import schema


def _clean_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE")}
    env["HOME"] = str(tmp_path)  # no ~/.kaggle/kaggle.json
    return env


def test_download_without_credentials_says_what_to_set(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "hms", "download", "--out", str(tmp_path / "data")],
                          env=_clean_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "kaggle.json" in proc.stderr and "KAGGLE_USERNAME" in proc.stderr and "KAGGLE_KEY" in proc.stderr


def test_download_calls_the_kaggle_cli_and_unzips(tmp_path, monkeypatch):
    """A stand-in `kaggle` executable on PATH records its arguments and writes the zip."""
    import zipfile

    from hms.data import schema

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "args.txt"
    fake = bin_dir / "kaggle"
    fake.write_text(
        "#!/usr/bin/env python3\n"
        "import sys, zipfile, pathlib\n"
        f"pathlib.Path({str(log)!r}).write_text(' '.join(sys.argv[1:]))\n"
        "dest = pathlib.Path(sys.argv[sys.argv.index('-p') + 1])\n"
        f"with zipfile.ZipFile(dest / '{schema.KAGGLE_SLUG}.zip', 'w') as z:\n"
        "    z.writestr('train.csv', 'x\\n'); z.writestr('test_eegs/1.parquet', '')\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "secret")
    assert main(["download", "--out", str(tmp_path / "data")]) == 0
    assert log.read_text() == f"competitions download -c {schema.KAGGLE_SLUG} -p {tmp_path / 'data'}"
    assert (tmp_path / "data" / "train.csv").is_file()
    assert not (tmp_path / "data" / f"{schema.KAGGLE_SLUG}.zip").exists()


def test_bad_override_is_a_clear_error(capsys):
    assert main(["folds", "folds.n_folds"]) == 2
    assert "key=value" in capsys.readouterr().err


def test_unknown_option_is_rejected():
    with pytest.raises(SystemExit):
        main(["train", "configs/demo/conv1d.yaml", "--bogus"])


def test_app_passes_streamlit_flags_through_and_they_win_over_its_own():
    from hms.cli import parse_args
    from hms.report.commands import app_command

    args = parse_args(["app", "--server.port", "8600", "--server.address=0.0.0.0", "--theme.base", "dark",
                       "--port", "9000", "paths.work_dir=/tmp/w"])
    command = app_command(args.port, args.address, args.streamlit_flags)
    pairs = dict(zip(command[5::2], command[6::2]))  # after: python -m hms.app.serve run SCRIPT
    assert pairs == {"--server.headless": "true", "--server.port": "8600", "--server.address": "0.0.0.0",
                     "--browser.gatherUsageStats": "false", "--theme.base": "dark"}
    assert args.items == ["paths.work_dir=/tmp/w"]
    with pytest.raises(SystemExit):
        parse_args(["app", "--server.port"])  # a flag without its value


# ---------------------------------------------------------------- user errors: one line, no traceback

def _one_line_error(capsys, argv, *expected) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0 and err.count("\n") == 0 and "Traceback" not in err, err
    for text in expected:
        assert text in err, (text, err)
    return err


@pytest.fixture(scope="module")
def tiny_work(tiny_synth, tmp_path_factory):
    from test_report import trained_tiny_work

    return trained_tiny_work(tiny_synth, tmp_path_factory)[1]


def _saved_experiment(work, config_file):
    """A run directory as training leaves it, as far as the refusal reads it: fold0/config.yaml."""
    from hms.config import load_config, save_resolved

    name = load_config([config_file]).name
    (work / name / "fold0").mkdir(parents=True)
    save_resolved(load_config([config_file]), work / name / "fold0" / "config.yaml")
    return name


def test_a_misspelled_override_stops_training_in_one_line(capsys):
    _one_line_error(capsys, ["train", "configs/demo/conv1d.yaml", "train.batchsize=8", "--fold", "0"],
                    "train.batchsize (did you mean train.batch_size?)")


def test_explaining_an_experiment_with_extra_signals_is_refused_in_one_line(tmp_path):
    name = _saved_experiment(tmp_path, "configs/demo/qeeg_trees.yaml")
    proc = subprocess.run([sys.executable, "-m", "hms", "explain", "--exp", name, "--eeg-id", "1",
                           f"paths.work_dir={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "cannot explain qeeg_trees" in proc.stderr and "signal.extras ['midline']" in proc.stderr


def test_explaining_a_test_eeg_without_split_test_hints_it(capsys, tiny_synth, tiny_work):
    test_id = int(pd.read_csv(tiny_synth / schema.TEST_CSV).eeg_id.iloc[0])
    paths = [f"paths.data_dir={tiny_synth}", f"paths.work_dir={tiny_work}"]
    _one_line_error(capsys, ["explain", "--exp", "tiny", "--eeg-id", str(test_id), *paths],
                    f"eeg_id {test_id} is not in the train table", "--split test")
    _one_line_error(capsys, ["explain", "--exp", "tiny", "--eeg-id", str(test_id), "--class", "sz", *paths],
                    "--class sz: not one of seizure")
    assert main(["explain", "--exp", "tiny", "--eeg-id", str(test_id), "--split", "test",
                 "--out", str(tiny_work / "explain_test"), *paths]) == 0


def test_a_misspelled_experiment_lists_the_trained_ones(capsys, tiny_work):
    _one_line_error(capsys, ["predict", "--exp", "tinyy", f"paths.work_dir={tiny_work}"],
                    "no experiment 'tinyy'", "trained there: tiny")


def test_score_with_swapped_arguments_says_so(capsys, tiny_synth, tmp_path):
    solution = pd.read_csv(tiny_synth / schema.TRAIN_CSV)[["eeg_id", *schema.VOTE_COLUMNS]]
    submission = solution.assign(**{c: 1 / 6 for c in schema.VOTE_COLUMNS})
    solution.to_csv(tmp_path / "solution.csv", index=False)
    submission.to_csv(tmp_path / "submission.csv", index=False)
    assert main(["score", str(tmp_path / "solution.csv"), str(tmp_path / "submission.csv")]) == 0
    capsys.readouterr()
    _one_line_error(capsys, ["score", str(tmp_path / "submission.csv"), str(tmp_path / "solution.csv")],
                    "between 0 and 1", "look swapped")


def test_hms_debug_shows_the_traceback(monkeypatch, tmp_path):
    name = _saved_experiment(tmp_path, "configs/demo/qeeg_trees.yaml")
    monkeypatch.setenv("HMS_DEBUG", "1")
    with pytest.raises(ValueError, match="cannot explain"):
        main(["explain", "--exp", name, "--eeg-id", "1", f"paths.work_dir={tmp_path}"])


def test_one_problem_is_singular():
    from hms.data.validate import Problem, Report

    one = Report("data", 3, 0.1, "", [Problem("train", "missing_file", "a.parquet", "not there")])
    assert "data: 1 problem in 3 files" in one.text()
    assert "2 problems in" in Report("data", 3, 0.1, "", one.problems * 2).text()




def test_bench_reference_is_a_fixed_workload(capsys):
    """The CPU reference the main job's time is divided by: the same network, batch and steps
    every time (its final loss is the same number on every call), its seconds positive."""
    import json

    from hms.cli import main
    from hms.jobs.reference import cpu_reference, ratio_line

    first, second = cpu_reference(steps=2), cpu_reference(steps=2)
    assert first["final_loss"] == second["final_loss"] and first["reference_s"] > 0
    assert ratio_line(10 * first["reference_s"], first).split(" = ")[1].startswith("10 x the CPU reference")
    assert main(["bench", "reference"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["bench"] == "reference" and printed["steps"] == 20 and printed["threads"] >= 1


@pytest.mark.parametrize("setting, repeats", [("", 5), ("2", 2), ("0", None)])
def test_hms_run_times_the_reference_as_often_as_hms_reference_repeats_says(monkeypatch, setting, repeats):
    from hms.jobs import reference

    full_length = reference.cpu_reference  # the real workload, one step per timing to keep it short
    monkeypatch.setattr(reference, "cpu_reference",
                        lambda repeats=reference.REFERENCE_REPEATS: full_length(steps=1, repeats=repeats))
    monkeypatch.setenv("HMS_REFERENCE_REPEATS", setting)
    timed = reference.job_reference()
    assert (timed and timed["repeats"]) == repeats
    if repeats is None:
        assert reference.ratio_line(42.0, timed) == "42 s (no CPU reference: HMS_REFERENCE_REPEATS=0)"


def test_a_bad_hms_reference_repeats_is_named(monkeypatch):
    from hms.config import ConfigError
    from hms.jobs.reference import job_reference

    monkeypatch.setenv("HMS_REFERENCE_REPEATS", "few")
    with pytest.raises(ConfigError, match="HMS_REFERENCE_REPEATS='few': a number of timings, 0 for none"):
        job_reference()
