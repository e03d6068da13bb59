"""Tables with the real competition's shape (`hms synth --like-kaggle`), no files.

The real train.csv has 106,800 rows, 17,089 EEGs, 11,138 spectrograms (each >= 10 minutes,
many shared by several EEGs) and 1,950 patients with many recordings each; most EEGs are one
to a few minutes long, a few over an hour, with label offsets up to 3,372 s. The hidden test
has about 2,000 EEGs of exactly 50 s. `like_kaggle(fraction)` draws a plan with those counts
times `fraction` (every distribution kept: counts scale, shapes do not), reusing the
simulator's patients, events, vote rounds and table writers, so a planned dataset is written
by the same code as the embedded one (`synthetic.write_plan`). `hms plan` and the tests use
the tables alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from hms.data import schema as S
from hms.data import synthetic as synth

REAL_COUNTS = {"rows": 106_800, "eegs": 17_089, "spectrograms": 11_138, "patients": 1_950}
REAL_TEST_EEGS = 2_000  # the hidden test's size, about
MAX_LABEL_OFFSET = 3_372  # s, the largest eeg_label_offset_seconds in the real train.csv
# Spread of the lognormal weights that share rows among EEGs, EEGs among spectrograms and
# spectrograms among patients: every item gets one, the rest goes mostly to a few heavy ones.
ROWS_SIGMA, EEGS_SIGMA, SPECS_SIGMA = 1.6, 1.0, 1.2
GAP_MEDIAN_S, GAP_SIGMA = 8.0, 0.8  # mean spacing of one EEG's sub-windows (s), per EEG
TAIL_MEAN_S = 30.0  # recorded seconds after the last labelled window, on average
LONG_TAIL_S = (300, 900)  # extra tail of EEGs labelled past 3,000 s: those files pass an hour


@dataclass
class LikeKaggle:
    """A drawn plan: recordings to render and the tables they produce."""

    recordings: list  # synthetic.Recording, train then test
    train: pd.DataFrame
    test: pd.DataFrame
    train_answers: pd.DataFrame
    test_answers: pd.DataFrame

    def eeg_seconds(self) -> pd.Series:
        """eeg_id -> length of its EEG file (s)."""
        return pd.Series({e.eeg_id: e.dur for r in self.recordings for e in r.eegs}, name="seconds")

    def spectrogram_seconds(self) -> pd.Series:
        """spectrogram_id -> length of its spectrogram file (s)."""
        return pd.Series({r.spectrogram_id: r.dur for r in self.recordings}, name="seconds")


def scaled_counts(fraction: float, n_test_eegs: int | None = None) -> dict[str, int]:
    """The real counts times fraction, each at least the one below it needs (rows >= EEGs >=
    spectrograms >= patients >= 1); the test defaults to 2,000 EEGs times fraction."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--fraction must be in (0, 1], got {fraction}")
    n = {k: max(1, int(round(v * fraction))) for k, v in REAL_COUNTS.items()}
    n["spectrograms"] = max(n["spectrograms"], n["patients"])
    n["eegs"] = max(n["eegs"], n["spectrograms"])
    n["rows"] = max(n["rows"], n["eegs"])
    n["test_eegs"] = max(1, int(round(REAL_TEST_EEGS * fraction))) if n_test_eegs is None else n_test_eegs
    return n


def allocate(rng: np.random.Generator, n_items: int, total: int, sigma: float,
             cap: np.ndarray | int | None = None) -> np.ndarray:
    """n_items counts, each >= 1 and <= cap, summing to total: one each, the rest shared in
    proportion to lognormal(0, sigma) weights (a heavy tail), overflow above cap re-shared."""
    cap = np.broadcast_to(np.asarray(total if cap is None else cap, np.int64), (n_items,))
    if total < n_items or total > cap.sum():
        raise ValueError(f"cannot share {total} among {n_items} items within their caps")
    counts = np.ones(n_items, np.int64)
    w = rng.lognormal(0.0, sigma, n_items)
    extra = total - n_items
    while extra > 0:
        w = np.where(counts < cap, w, 0.0)
        counts += rng.multinomial(extra, w / w.sum())
        over = np.maximum(counts - cap, 0)
        counts -= over
        extra = int(over.sum())
    return counts


def _even(x) -> np.ndarray:
    return (2 * np.round(np.asarray(x, float) / 2)).astype(np.int64)


def draw_offsets(rng: np.random.Generator, k: int) -> list[int]:
    """k sub-window offsets of one EEG: 0, then even seconds up to a last offset set by a
    per-EEG spacing (a few seconds to ~30 s), never past MAX_LABEL_OFFSET."""
    if k == 1:
        return [0]
    gap = rng.lognormal(np.log(GAP_MEDIAN_S), GAP_SIGMA)
    last = int(np.clip(_even((k - 1) * gap), 2 * (k - 1), MAX_LABEL_OFFSET))
    inner = rng.choice(np.arange(2, last, 2), size=k - 2, replace=False) if k > 2 else []
    return [0, *sorted(int(o) for o in inner), last]


def eeg_length(rng: np.random.Generator, last_offset: int) -> int:
    """File length (s): the last window's end plus a recorded tail; EEGs labelled past
    3,000 s keep a longer tail, so a few files pass an hour as real ones do."""
    tail = int(_even(rng.exponential(TAIL_MEAN_S)))
    if last_offset > 3000:
        tail += int(_even(rng.uniform(*LONG_TAIL_S)))
    return last_offset + S.EEG_WINDOW_SECONDS + tail


def _train_recordings(rng, n: dict, patient_ids) -> list:
    max_rows = MAX_LABEL_OFFSET // 2 + 1  # one window per even second
    specs_per_patient = allocate(rng, n["patients"], n["spectrograms"], SPECS_SIGMA)
    eegs_per_spec = allocate(rng, n["spectrograms"], n["eegs"], EEGS_SIGMA)
    rows_per_eeg = iter(allocate(rng, n["eegs"], n["rows"], ROWS_SIGMA, cap=max_rows))
    spec_sizes = iter(eegs_per_spec)
    recs = []
    for pid, n_specs in zip(patient_ids, specs_per_patient):
        patient = synth._sample_patient(rng, int(pid))
        for _ in range(n_specs):
            rounds = ["low" if rng.random() < synth.LOW_ROUND_SHARE else "high" for _ in range(next(spec_sizes))]
            eegs = []
            for round_ in rounds:
                offsets = draw_offsets(rng, int(next(rows_per_eeg)))
                events, boundary = synth.draw_events(rng, patient, round_, offsets)
                eegs.append(synth.EegPlan(0, 0, eeg_length(rng, offsets[-1]), offsets, events, boundary))
            rec = synth.Recording(len(recs), "train", 0, patient, 0, eegs, rounds=rounds)
            rec.dur = synth._layout_recording(rng, eegs)
            recs.append(rec)
    return recs


def like_kaggle(fraction: float = 1.0, n_test_eegs: int | None = None, seed: int = 42) -> LikeKaggle:
    """Draw the plan of a dataset shaped like the real one (counts times fraction)."""
    n = scaled_counts(fraction, n_test_eegs)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))
    pids = synth._unique_ids(rng, n["patients"] + n["test_eegs"] + 8, 1, 65_536)
    train = _train_recordings(rng, n, pids[:n["patients"]])
    test, _ = synth._plan_test(rng, n["test_eegs"], pids[n["patients"]:], len(train))
    recs, train_df, test_df, train_ans, test_ans = synth.finish_plan(rng, train, test)
    return LikeKaggle(recs, train_df, test_df, train_ans, test_ans)
