"""Drive `hms app` in a real headless Chromium through Playwright: start the server and the
browser, load the page, wait until Streamlit has drawn the first view, time it, optionally
screenshot it.

Used by the browser test and by `hms bench app`. Chromium is Debian's package
(/usr/bin/chromium, `apt-get install -y chromium`), launched by Playwright through
executable_path, so Playwright downloads no browser; nothing here touches the network beyond
127.0.0.1."""
from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
POLL_S = 0.1

# What the page shows, polled over the DevTools protocol. "first": the title, the votes
# chart and the EEG traces are on screen; "ready": all three view images are drawn and
# Streamlit's running indicator is gone.
STATE_JS = """(() => {
  const images = document.querySelectorAll('[data-testid="stImage"]').length;
  const charts = document.querySelectorAll('[data-testid="stVegaLiteChart"]').length;
  const running = !!document.querySelector('[data-testid="stStatusWidget"]');
  const titled = document.title === 'HMS viewer';
  return {title: document.title, images, charts, running,
          first: titled && charts >= 1 && images >= 1,
          ready: titled && images >= 3 && !running,
          exception: !!document.querySelector('[data-testid="stException"]')};
})()"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(ready, proc: subprocess.Popen, timeout: float, what: str, log: Path | None = None) -> None:
    """Poll ready() until it is true; fail early, with the end of the process's log, if the
    process exits first."""
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            output = log.read_text()[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{what}: the process exited with {proc.returncode} first. {output}")
        if time.time() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _load(page, url: str, screenshot: Path | None, timeout: float) -> dict:
    """Navigate, poll STATE_JS (Streamlit draws over a websocket, so the HTML alone is an empty
    shell) and note when the first view and the complete view appeared."""
    state, times = {}, {}
    t0 = time.perf_counter()
    page.goto(url, wait_until="commit")
    while time.perf_counter() - t0 < timeout and not state.get("ready"):
        time.sleep(POLL_S)
        state = page.evaluate(STATE_JS) or {}
        for key in ("first", "ready"):
            if state.get(key) and key not in times:
                times[key] = time.perf_counter() - t0
    if screenshot:
        page.wait_for_timeout(500)  # let the last image paint
        page.screenshot(path=str(screenshot), full_page=True)
    return {**state, "first_view_s": times.get("first"), "complete_view_s": times.get("ready")}


def launch_chromium(playwright, height: int):
    """Debian's chromium through Playwright (executable_path: Playwright downloads no browser)."""
    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync"])
    return browser, browser.new_context(viewport={"width": 1400, "height": height}).new_page()


def render_in_chromium(env: dict, work_dir: Path, screenshot: Path | None = None, timeout: float = 60,
                       queries: tuple[str, ...] = ("",), height: int = 1000, after_warm_up: bool = False) -> dict:
    """Start `hms app`'s server (in the current directory, as `hms app` runs, with env added)
    and headless Chromium (the server's log in work_dir), then load the page once per query
    string (the first load in a fresh browser, later ones with its cache). after_warm_up
    waits for the server's warm-up before the first load, as a user opening the URL after
    `hms app` says it is warm would. Returns what STATE_JS saw on the last load, with the
    timings of every load; both processes are always killed."""
    from playwright.sync_api import sync_playwright

    from hms.app.serve import READY_FILE_ENV
    from hms.report.commands import app_command

    if not CHROMIUM.exists():
        raise FileNotFoundError(f"{CHROMIUM} not found: apt-get install -y chromium")
    port = free_port()
    ready_file, log = Path(work_dir) / "server-ready", Path(work_dir) / "server.log"
    t_start = time.perf_counter()
    with log.open("w") as out:  # a file, not a pipe nobody reads: a full pipe would stall the server
        server = subprocess.Popen(app_command(port), env={**os.environ, **env, READY_FILE_ENV: str(ready_file)},
                                  stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        health = f"http://127.0.0.1:{port}/_stcore/health"
        wait_until(lambda: answers(health), server, 60, f"streamlit answering {health}", log)
        timings = {"server_start_s": time.perf_counter() - t_start}
        with sync_playwright() as playwright:
            browser, page = launch_chromium(playwright, height)
            if after_warm_up:
                wait_until(ready_file.exists, server, timeout, f"the app server's warm-up ({ready_file})", log)
                timings["server_warm_s"] = time.perf_counter() - t_start
            runs = [_load(page, f"http://127.0.0.1:{port}/{query}", screenshot if i == len(queries) - 1 else None,
                          timeout) for i, query in enumerate(queries)]
            browser.close()
        return {**runs[-1], **timings,
                "loads": [{k: r[k] for k in ("first_view_s", "complete_view_s")} for r in runs]}
    finally:
        server.kill()
        server.wait(timeout=10)
