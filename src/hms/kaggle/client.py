"""A thin wrapper around the real `kaggle` CLI. The kaggle package authenticates at import
time, so it is never imported here: we run its executable and explain missing credentials."""
from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

from hms.data import schema

CREDENTIALS_HELP = (
    "Kaggle credentials not found. Either\n"
    "  - put your API token in ~/.kaggle/kaggle.json (Kaggle > Settings > API > Create New Token)"
    " and `chmod 600 ~/.kaggle/kaggle.json`, or\n"
    "  - export KAGGLE_USERNAME=<your name> and KAGGLE_KEY=<your key>"
    " (or KAGGLE_API_TOKEN for the newer token format).\n"
    "Accept the competition rules on its Kaggle page before downloading."
)


class KaggleError(RuntimeError):
    pass


def credentials_present() -> bool:
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    env_ok = os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")
    return bool(env_ok or os.environ.get("KAGGLE_API_TOKEN") or (config_dir / "kaggle.json").is_file()
                or (config_dir / "access_token").is_file())


def kaggle_executable() -> str:
    exe = shutil.which("kaggle")
    if exe is None:
        raise KaggleError("the `kaggle` command is not on PATH: run `bash scripts/setup.sh` first")
    return exe


def run_kaggle(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    """Run `kaggle ARGS`; with check, raise KaggleError with its output when it fails."""
    if not credentials_present():
        raise KaggleError(CREDENTIALS_HELP)
    proc = subprocess.run([kaggle_executable(), *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise KaggleError(f"`kaggle {' '.join(args)}` failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc


def download_competition(dest: Path, slug: str = schema.KAGGLE_SLUG) -> Path:
    """Download and unzip the competition into dest (kaggle 2.x writes <slug>.zip, no unzip flag)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if (dest / schema.TRAIN_CSV).is_file() and (dest / schema.TEST_EEG_DIR).is_dir():
        print(f"{dest} already holds the competition data; nothing to do")
        return dest
    run_kaggle(["competitions", "download", "-c", slug, "-p", str(dest)])
    archive = dest / f"{slug}.zip"
    if not archive.is_file():
        raise KaggleError(f"expected {archive} after download; found {sorted(p.name for p in dest.iterdir())}")
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(dest)
    archive.unlink()  # 20+ GB: do not keep two copies
    return dest
