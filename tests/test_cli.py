import os
import subprocess
import sys

import pytest

from hms.cli import main


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
