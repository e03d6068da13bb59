"""The Streamlit viewer: Streamlit's testing API, then a real server in headless Chromium."""
import pytest

from hms.app.browser import CHROMIUM, render_in_chromium
from hms.report.commands import APP_SCRIPT
from test_report import trained_tiny_work


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


def test_app_browses_test_eegs_and_their_submitted_predictions(app_env, tiny_synth, monkeypatch):
    import pandas as pd

    from hms.data import schema

    for k, v in app_env.items():
        monkeypatch.setenv(k, v)
    at = _run_app(APP_SCRIPT)
    at.sidebar.radio[0].set_value("test").run()
    assert not at.exception, at.exception
    test_ids = sorted(pd.read_csv(tiny_synth / schema.TEST_CSV).eeg_id.unique().tolist())
    eeg_box = next(s for s in at.selectbox if s.label == "eeg_id")
    assert sorted(int(o) for o in eeg_box.options) == test_ids
    eeg_box.set_value(test_ids[-1]).run()
    assert not at.exception, at.exception
    assert f"test eeg_id {test_ids[-1]}" in at.markdown[0].value
    assert len(at.get("vega_lite_chart")) == 1 and len(at.get("image")) == 3
    shown = at.dataframe[0].value  # the submitted probabilities of this recording, as in the file
    submitted = pd.read_csv(app_env["HMS_SUBMISSION_DIR"] + "/submission.csv").set_index("eeg_id")
    assert list(shown.index) == ["tiny", "submission"]
    assert shown.loc["submission"].to_numpy() == pytest.approx(
        submitted.loc[test_ids[-1], list(schema.VOTE_COLUMNS)].to_numpy(float))


def _run_app(script):
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(script), default_timeout=120).run()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                    "(apt-get install -y chromium) for the real-browser test")
def test_app_renders_in_headless_chromium(app_env, tmp_path):
    state = render_in_chromium(app_env, tmp_path, tmp_path / "app.png", after_warm_up=True)
    assert state.get("ready"), state
    assert state["title"] == "HMS viewer" and state["charts"] == 1 and not state["exception"]
    assert 0 < state["loads"][0]["first_view_s"] <= state["loads"][0]["complete_view_s"]
    assert state["server_warm_s"] >= state["server_start_s"] > 0  # the warm-up thread finished
    assert (tmp_path / "app.png").stat().st_size > 10_000
    state = render_in_chromium(app_env, tmp_path, tmp_path / "test.png", queries=("?split=test",))
    assert state.get("ready") and state["charts"] == 1 and not state["exception"], state  # a test EEG's views


def test_killing_hms_app_by_its_pid_stops_the_server(tmp_path):
    """`kill <pid of hms app>` (SIGTERM) frees the port: no server child is left holding it."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    from hms.app.browser import answers, free_port, wait_until

    port = free_port()
    log = tmp_path / "app.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hms", "app", "--port", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "HMS_WORK_DIR": str(tmp_path)})
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/_stcore/health"), proc, 60, "hms app answering", log)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) is not None
        assert not answers(f"http://127.0.0.1:{port}/_stcore/health")
        with socket.socket() as s:  # as a new server binds (TIME_WAIT allowed): fails while one listens
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen()
    finally:
        if proc.poll() is None:
            proc.kill()
