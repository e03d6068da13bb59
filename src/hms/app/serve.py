"""`hms app`'s server process: Streamlit's own command line, after starting a warm-up thread
for what the viewer's first view needs. The server answers, the browser connects and the
first script run starts while torch (for the EEG mel panels, 1.5-5 s to import cold),
scipy's filters and matplotlib load and run once, instead of the first visitor waiting for
each in turn."""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

READY_FILE_ENV = "HMS_APP_READY_FILE"  # written once the warm-up is done (benchmarks wait on it)


def warm_up() -> None:
    """Import, in the order the first view needs them, and run each heavy part once on tiny
    inputs (font cache, PNG encoder, filter design, torch's first kernels)."""
    import numpy as np

    from hms.report import views

    views.png_bytes(views.plot_bipolar(np.zeros((16, 400), np.float32), fig_size=(2, 2)), dpi=20)
    views.filtered(np.zeros((16, 400), np.float32))
    from hms.config import load_config
    from hms.signal.spectrogram import eeg_panels

    eeg_panels(np.zeros((1, 16, 2000), np.float32), load_config().mel)
    import hms.report.explain  # noqa: F401  (the explanation section's module, torch-based)


def _warm_up_and_announce() -> None:
    t0 = time.perf_counter()
    warm_up()
    print(f"[hms] viewer warmed up in {time.perf_counter() - t0:.1f} s: first views are fast from here",
          file=sys.stderr, flush=True)
    if os.environ.get(READY_FILE_ENV):
        Path(os.environ[READY_FILE_ENV]).write_text("ready\n")


def main() -> None:
    threading.Thread(target=_warm_up_and_announce, daemon=True, name="hms-warm-up").start()
    from streamlit.web.cli import main as streamlit_main

    streamlit_main(prog_name="streamlit")  # as `python -m streamlit` does


if __name__ == "__main__":
    main()
