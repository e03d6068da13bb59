"""The Streamlit viewer: Streamlit's testing API, then a real server in headless Chromium."""
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from hms.report.commands import APP_SCRIPT, app_command
from test_report import trained_tiny_work

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def app_env(tiny_synth, tmp_path_factory):
    cfg, work = trained_tiny_work(tiny_synth, tmp_path_factory)
    return {"HMS_DATA_DIR": str(tiny_synth), "HMS_WORK_DIR": str(work),
            "HMS_SUBMISSION_DIR": str(work / "submissions")}


def test_app_selects_an_eeg_and_shows_its_views(app_env, monkeypatch):
    from streamlit.testing.v1 import AppTest

    for k, v in app_env.items():
        monkeypatch.setenv(k, v)
    at = AppTest.from_file(str(APP_SCRIPT), default_timeout=120).run()
    assert not at.exception, at.exception
    assert at.title[0].value == "HMS viewer"
    eeg_box = next(s for s in at.selectbox if s.label == "eeg_id")
    assert len(eeg_box.options) > 5
    eeg_box.set_value(eeg_box.options[3]).run()
    assert not at.exception, at.exception
    assert str(eeg_box.options[3]) in at.markdown[0].value
    assert len(at.get("vega_lite_chart")) == 1  # votes vs tiny vs ensemble
    assert len(at.get("image")) == 3  # traces, Kaggle spectrogram, EEG mel panels
    n_images = len(at.get("image"))
    next(c for c in at.checkbox if c.label == "compute the explanation").check().run()
    assert not at.exception, at.exception
    assert len(at.get("image")) == n_images + 1  # the occlusion figure of the conv1d model
    # filters: a class with no majority rows leaves the selection empty, with a warning
    at.sidebar.multiselect[0].set_value([]).run()
    assert not at.exception and at.warning


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"streamlit did not answer on port {port} within {timeout} s")


READY_JS = """(() => ({ready: document.title === 'HMS viewer' &&
    document.querySelectorAll('[data-testid="stImage"]').length >= 3 &&
    !document.querySelector('[data-testid="stStatusWidget"]'),
  title: document.title,
  images: document.querySelectorAll('[data-testid="stImage"]').length,
  charts: document.querySelectorAll('[data-testid="stVegaLiteChart"]').length,
  exception: !!document.querySelector('[data-testid="stException"]')}))()"""


async def _drive(debug_port: int, url: str, screenshot: Path | None, timeout: float) -> dict:
    """Open url in the running headless Chromium through the DevTools protocol, poll READY_JS
    until the app has rendered (Streamlit draws over a websocket, so --dump-dom would only see
    the empty shell), then optionally save a full-page screenshot."""
    import asyncio
    import base64
    import json

    from tornado.websocket import websocket_connect  # a Streamlit dependency

    with urllib.request.urlopen(f"http://127.0.0.1:{debug_port}/json") as r:
        page = next(t for t in json.load(r) if t["type"] == "page")
    ws = await websocket_connect(page["webSocketDebuggerUrl"], max_message_size=64 << 20)
    counter = iter(range(1, 10**6))

    async def call(method, **params):
        i = next(counter)
        ws.write_message(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(await ws.read_message())
            if msg.get("id") == i:
                return msg.get("result", {})

    await call("Page.navigate", url=url)
    state, deadline = {}, time.time() + timeout
    while time.time() < deadline and not state.get("ready"):
        await asyncio.sleep(0.25)
        state = (await call("Runtime.evaluate", expression=READY_JS, returnByValue=True))["result"].get("value") or {}
    if screenshot:
        await asyncio.sleep(0.5)  # let the last image paint
        shot = await call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
    ws.close()
    return state


def render_in_chromium(env: dict, workdir: Path, screenshot: Path | None = None, timeout: float = 60,
                       query: str = "", height: int = 1000) -> dict:
    """Start `hms app`'s streamlit server and headless Chromium, load the page, return what
    READY_JS saw; both processes are always killed."""
    import asyncio

    port, debug_port = _free_port(), _free_port()
    server = subprocess.Popen(app_command(port), env={**os.environ, **env}, cwd=workdir, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    browser = None
    try:
        _wait_healthy(port, server)
        browser = subprocess.Popen(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={workdir / 'chrome'}", f"--window-size=1400,{height}",
             f"--remote-debugging-port={debug_port}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_url(f"http://127.0.0.1:{debug_port}/json/version", browser)
        return asyncio.run(_drive(debug_port, f"http://127.0.0.1:{port}/{query}", screenshot, timeout))
    finally:
        for proc in (browser, server):
            if proc is not None:
                proc.kill()
                proc.wait(timeout=10)


def _wait_url(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                    "(apt-get install -y chromium) for the real-browser test")
def test_app_renders_in_headless_chromium(app_env, tmp_path):
    state = render_in_chromium(app_env, tmp_path, tmp_path / "app.png")
    assert state.get("ready"), state
    assert state["title"] == "HMS viewer" and state["charts"] == 1 and not state["exception"]
    assert (tmp_path / "app.png").stat().st_size > 10_000
