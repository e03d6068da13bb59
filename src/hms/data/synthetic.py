"""The embedded dataset: simulated ICU EEG in the exact Kaggle HMS layout.

`generate(out_dir, ...)` writes train.csv, test.csv, sample_submission.csv, the four
parquet folders, and, beside them, the hidden answers (p* per row, test votes) so that
the oracle KL (predicting p*) is known. docs/simulator.md explains the model.

How it is organised:
- a *plan* (one RNG, main process) draws every id, patient, recording layout, latent
  event parameter, p* and vote; nothing label-related depends on the signals;
- each *recording* (one spectrogram_id with its EEG files) is then rendered by a worker
  from its own RNG, derived from (seed, recording index), so the bytes written do not
  depend on the number of workers or on scheduling.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.lib.stride_tricks import sliding_window_view
from scipy import fft as sp_fft
from scipy.integrate import trapezoid  # numpy.trapezoid needs numpy 2; requirements allow 1.26
from scipy.signal import resample_poly

from hms.data import schema as S
from hms.metric import kl_score
from hms.utils import atomic_path, atomic_to_csv

FS = S.SAMPLING_RATE
CTX_FS = 50  # the spectrogram's long context is simulated at 50 Hz (256-pt FFT = same bins)
ELECTRODES: tuple[str, ...] = tuple(c for c in S.EEG_CHANNELS if c != S.EKG_CHANNEL)
N_EL = len(ELECTRODES)

# Approximate 10-20 positions on a flattened head: x left(-)/right(+), y back(-)/front(+).
_POS = {
    "Fp1": (-0.3, 0.95), "Fp2": (0.3, 0.95), "F7": (-0.8, 0.6), "F3": (-0.4, 0.5),
    "Fz": (0.0, 0.5), "F4": (0.4, 0.5), "F8": (0.8, 0.6), "T3": (-1.0, 0.0),
    "C3": (-0.5, 0.0), "Cz": (0.0, 0.0), "C4": (0.5, 0.0), "T4": (1.0, 0.0),
    "T5": (-0.8, -0.6), "P3": (-0.4, -0.5), "Pz": (0.0, -0.5), "P4": (0.4, -0.5),
    "T6": (0.8, -0.6), "O1": (-0.3, -0.95), "O2": (0.3, -0.95),
}
XY = np.array([_POS[e] for e in ELECTRODES])
_EL = {e: i for i, e in enumerate(ELECTRODES)}
BIP_A = np.array([_EL[a] for a, _ in S.BIPOLAR_PAIRS])
BIP_B = np.array([_EL[b] for _, b in S.BIPOLAR_PAIRS])
EYE_W = np.array([{"Fp1": 1, "Fp2": 1, "F7": .4, "F8": .4, "F3": .35, "F4": .35, "Fz": .3}.get(e, .05)
                  for e in ELECTRODES])
TEMPORAL = {-1: ("F7", "T3", "T5"), 1: ("F8", "T4", "T6")}

# Class mix of the *intended* event per annotation round (submission order). Tuned so the
# consensus mix of the rows lands near the real one: seizure ~0.33 of low-vote rows,
# ~0.04 of high-vote rows, and overall row frequencies close to Kaggle's train.csv
# (Seizure .196, LPD .139, GPD .156, LRDA .156, GRDA .177, Other .176).
LOW_MIX = np.array([0.41, 0.11, 0.10, 0.12, 0.15, 0.11])
HIGH_MIX = np.array([0.05, 0.14, 0.16, 0.135, 0.18, 0.335])
LOW_ROUND_SHARE = 0.54  # share of train eeg_ids annotated in the low-vote round
LOW_VOTES = (np.arange(1, 8), np.array([.2, .15, .42, .07, .06, .05, .05]))
HIGH_VOTES = (np.arange(10, 29), np.exp(-0.5 * ((np.arange(10, 29) - 14) / 4.0) ** 2))
TEST_VOTES = (np.arange(3, 21), np.where(np.arange(3, 21) < 10, 0.3, 1.0))
TWO_SEGMENT_SHARE = 0.11  # real data: 89% of eeg_ids carry one vote vector


# ----------------------------------------------------------------------------- labels
@dataclass
class Event:
    """One labelled pattern episode. p* reads only what the signal shows (s, lat, freq,
    evo, amp); `cls` is the class the parameters were drawn around, for bookkeeping."""

    cls: int
    s: float  # waveform: 0 continuous sinusoidal rhythm .. 1 brief sharp discharges
    lat: float  # field: 0 bilateral synchronous .. 1 one hemisphere
    side: int  # -1 left, +1 right
    freq: float  # Hz
    evo: float  # 0 stable .. 1 strongly evolving in frequency, amplitude and field
    amp: float  # pattern rms relative to background rms
    fr: float  # frontal predominance of the generalised field
    focus_y: float  # front-back position of the lateralised focus
    rho: float  # radius of the lateralised field
    period: float  # s, one cycle of evolution
    phase: float


# Per intended class: (lo, hi, log-scale?) for s, lat, freq, evo, amp, fr.
_RANGES = {
    0: ((0, 1, 0), (0, 1, 0), (1.5, 6, 1), (0.55, 1, 0), (1.5, 5, 1), (.2, .8, 0)),  # seizure
    1: ((.6, 1, 0), (.6, 1, 0), (.5, 2.5, 1), (0, .4, 0), (1.2, 4, 1), (.2, .6, 0)),  # LPD
    2: ((.6, 1, 0), (0, .4, 0), (.5, 2.5, 1), (0, .4, 0), (1.2, 4, 1), (.3, .9, 0)),  # GPD
    3: ((0, .4, 0), (.6, 1, 0), (.5, 3, 1), (0, .4, 0), (1.2, 4, 1), (.4, 1, 0)),  # LRDA
    4: ((0, .4, 0), (0, .4, 0), (.5, 3, 1), (0, .4, 0), (1.2, 4, 1), (.5, 1, 0)),  # GRDA
    5: ((0, 1, 0), (0, 1, 0), (.5, 3, 1), (0, .5, 0), (.05, .8, 1), (.2, 1, 0)),  # Other
}


def _draw(rng, lo, hi, log):
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if log else float(rng.uniform(lo, hi))


def sample_event(rng: np.random.Generator, cls: int, side_pref: int = 1) -> Event:
    s, lat, freq, evo, amp, fr = (_draw(rng, *r) for r in _RANGES[cls])
    # patients keep one side for most lateralised events (a structural lesion stays put)
    side = side_pref if rng.random() < 0.8 else -side_pref
    return Event(cls, s, lat, side, freq, evo, amp, fr, focus_y=rng.uniform(-0.6, 0.7),
                 rho=rng.uniform(0.35, 0.6), period=rng.uniform(20, 60), phase=rng.uniform(0, 2 * np.pi))


def pstar_from_latents(s, lat, freq, evo, amp) -> np.ndarray:
    """Annotator distribution as a smooth function of what the signal shows.

    Sharp discharges vs continuous rhythm split PD from RDA, lateralisation splits L from
    G, evolution and fast frequency (ACNS: >= 2.5 Hz discharges qualify as seizure) pull
    toward seizure, a weak pattern drifts toward Other. Inputs broadcast; returns (..., 6).
    """
    s, lat, freq, evo, amp = np.broadcast_arrays(*map(np.asarray, (s, lat, freq, evo, amp)))
    vis = amp / (amp + 0.5)  # a faint pattern's shape and field are hard to judge
    z_pd = 4.0 * vis * (s - 0.5)
    z_lat = 5.0 * vis * (lat - 0.5)
    z_sz = 6.0 * (evo - 0.5) + 2.5 / (1 + np.exp(-2.5 * (freq - 2.5))) - 0.2
    z_other = 3.0 * np.log(0.7 / amp) + 1.0
    z = np.stack([z_sz, z_pd + z_lat, z_pd - z_lat, -z_pd + z_lat, -z_pd - z_lat, z_other], -1)
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def event_pstar(ev: Event) -> np.ndarray:
    return pstar_from_latents(ev.s, ev.lat, ev.freq, ev.evo, ev.amp)


def draw_classes(rng: np.random.Generator, n: int, round_: str) -> np.ndarray:
    """Intended classes for n events of one annotation round ('low', 'high' or 'test')."""
    return rng.choice(S.N_CLASSES, size=n, p=LOW_MIX if round_ == "low" else HIGH_MIX)


def draw_n_votes(rng: np.random.Generator, n: int, round_: str) -> np.ndarray:
    values, w = {"low": LOW_VOTES, "high": HIGH_VOTES, "test": TEST_VOTES}[round_]
    return rng.choice(values, size=n, p=w / w.sum())


def consensus(votes: np.ndarray) -> np.ndarray:
    """expert_consensus names; ties go to the first class, like np.argmax."""
    return np.asarray(S.CONSENSUS_NAMES)[np.argmax(votes, axis=-1)]


# ----------------------------------------------------------------------------- plan
@dataclass
class Patient:
    patient_id: int
    bg_rms: float  # uV, referential background rms
    beta: float  # 1/f exponent of the background
    sigma_s: float  # spatial correlation length of the background
    common_ref: float  # reference noise (cancels in bipolar pairs)
    gain: np.ndarray  # per-electrode amplitude
    jitter: np.ndarray  # per-electrode field irregularity of patterns
    alpha_f: float  # posterior rhythm frequency (0: none)
    alpha_amp: float
    blink_rate: float  # per second
    muscle_rate: float
    pop_rate: float
    hr: float  # heart rate, bpm
    ekg_amp: float
    ekg_leak: np.ndarray  # EKG artefact weight per electrode
    line_amp: float  # 60 Hz mains
    side_pref: int


@dataclass
class EegPlan:
    eeg_id: int
    start: int  # s, position of the EEG file inside its spectrogram recording (odd)
    dur: int  # s
    offsets: list[int]  # eeg_label_offset_seconds of the sub-windows
    events: list[Event]  # one, or two when the pattern changes inside the file
    boundary: float  # s into the file where events[1] takes over (inf with one event)
    nan: tuple[float, float] | None = None  # NaN stretch (start s, length s)


@dataclass
class Recording:
    index: int  # seeds this recording's RNG
    split: str
    spectrogram_id: int
    patient: Patient
    dur: int  # s, even
    eegs: list[EegPlan] = field(default_factory=list)
    flat: int = -1  # an electrode flat for the whole recording, -1 for none
    spec_nan: tuple[int, int] | None = None  # (first frame, n frames) set to NaN
    rounds: list[str] = field(default_factory=list)  # annotation round of each EEG


def _unique_ids(rng, n, low, high) -> np.ndarray:
    """n distinct random ids in [low, high), in random order."""
    if high - low < 64 * n:  # small range (patient ids): sample without replacement
        return (rng.choice(high - low, size=n, replace=False) + low).astype(np.int64)
    ids = np.unique(rng.integers(low, high, size=2 * n + 16))  # collisions are rare here
    return rng.permutation(ids)[:n].astype(np.int64)


def _ekg_amplitude(rng) -> float:
    """R-wave amplitude (uV): mostly 200-1000, but one patient in ten reaches the thousands,
    as the real train EEG's EKG does (+-4,960 uV)."""
    return float(rng.uniform(2000, 5000) if rng.random() < 0.1 else rng.uniform(200, 1000))


def _sample_patient(rng, patient_id) -> Patient:
    ekg_leak = rng.uniform(0.005, 0.03) * np.exp(rng.normal(0, 0.3, N_EL)) * (1.3 - 0.3 * XY[:, 0])
    has_alpha = rng.random() < 0.35
    return Patient(
        patient_id, bg_rms=float(np.exp(rng.uniform(np.log(10), np.log(40)))),
        beta=rng.uniform(1.2, 2.4), sigma_s=rng.uniform(0.3, 0.45), common_ref=rng.uniform(0.3, 1.0),
        gain=np.exp(rng.normal(0, 0.15, N_EL)), jitter=np.exp(rng.normal(0, 0.3, N_EL)),
        alpha_f=rng.uniform(6, 11) if has_alpha else 0.0, alpha_amp=rng.uniform(0.5, 1.2),
        blink_rate=rng.choice([0.0, rng.uniform(0.02, 0.3)]), muscle_rate=rng.uniform(0, 0.05),
        pop_rate=rng.uniform(0, 0.02), hr=rng.uniform(60, 110), ekg_amp=_ekg_amplitude(rng),
        ekg_leak=ekg_leak, line_amp=rng.uniform(1, 10) if rng.random() < 0.3 else 0.0,
        side_pref=int(rng.choice([-1, 1])),
    )


def _sample_train_eeg(rng, patient, round_) -> EegPlan:
    dur = 50 + 2 * int(min(35, rng.geometric(1 / 13) - 1)) if rng.random() > 0.12 else 50
    slots = np.arange(0, dur - 49, 2)
    k = int(min(len(slots), 1 + rng.poisson(5)))
    offsets = sorted(int(o) for o in rng.choice(slots, size=k, replace=False))
    events, boundary = draw_events(rng, patient, round_, offsets)
    return EegPlan(0, 0, dur, offsets, events, boundary)


def draw_events(rng, patient: Patient, round_: str, offsets: list[int]) -> tuple[list[Event], float]:
    """One event for an EEG's windows, or (11% of EEGs with 2+ windows) two, the second
    taking over at `boundary` (s into the file); returns (events, boundary)."""
    k = len(offsets)
    cls = int(draw_classes(rng, 1, round_)[0])
    events, boundary = [sample_event(rng, cls, patient.side_pref)], np.inf
    if k >= 2 and rng.random() < TWO_SEGMENT_SHARE / 0.8:
        # the pattern changes between two labelled centres: same class drifting, or a new one
        cls2 = cls if rng.random() < 0.5 else int(draw_classes(rng, 1, round_)[0])
        events.append(sample_event(rng, cls2, patient.side_pref))
        m = int(rng.integers(1, k))
        boundary = (offsets[m - 1] + offsets[m]) / 2 + S.EEG_WINDOW_SECONDS / 2
    return events, boundary


def _layout_recording(rng, eegs: list[EegPlan]) -> int:
    """Place EEG files inside one spectrogram recording; returns its duration (s).

    EEG files start at odd seconds so that every spectrogram window start (EEG window
    centre - 300 s) is even, i.e. aligned with the 2 s frames at times 1, 3, 5, ...
    """
    half = S.SPEC_WINDOW_SECONDS // 2
    pre = half - S.EEG_WINDOW_SECONDS // 2  # 275 s: context before a window at offset 0
    t = pre + 2 * int(rng.integers(0, 30))
    end = 0
    for e in eegs:
        e.start = t
        end = max(end, t + e.dur, t + max(e.offsets) + S.EEG_WINDOW_SECONDS // 2 + half)
        t += e.dur + 2 * int(rng.integers(5, 100))
    dur = end + 2 * int(rng.integers(0, 30))
    return dur + dur % 2


def _plan_train(rng, n_eegs, patient_ids):
    recs, pi = [], 0
    while sum(len(r.eegs) for r in recs) < n_eegs:
        patient = _sample_patient(rng, int(patient_ids[pi]))
        pi += 1
        for _ in range(1 + int(rng.binomial(3, 0.4))):
            left = n_eegs - sum(len(r.eegs) for r in recs)
            n = min(left, int(rng.choice([1, 2, 3], p=[.45, .35, .2])))
            if n <= 0:
                break
            rounds = ["low" if rng.random() < LOW_ROUND_SHARE else "high" for _ in range(n)]
            eegs = [_sample_train_eeg(rng, patient, r) for r in rounds]
            rec = Recording(len(recs), "train", 0, patient, 0, eegs, rounds=rounds)
            rec.dur = _layout_recording(rng, eegs)
            recs.append(rec)
    return recs, pi


def _plan_test(rng, n_test, patient_ids, first_index):
    recs, pi = [], 0
    while len(recs) < n_test:
        patient = _sample_patient(rng, int(patient_ids[pi]))
        pi += 1
        for _ in range(min(n_test - len(recs), 1 + int(rng.random() < 0.5))):
            cls = int(draw_classes(rng, 1, "test")[0])
            start = S.SPEC_WINDOW_SECONDS // 2 - S.EEG_WINDOW_SECONDS // 2  # EEG centred in 10 min
            event = sample_event(rng, cls, patient.side_pref)
            eeg = EegPlan(0, start, S.EEG_WINDOW_SECONDS, [0], [event], np.inf)
            recs.append(Recording(first_index + len(recs), "test", 0, patient, S.SPEC_WINDOW_SECONDS, [eeg]))
    return recs, pi


def _add_defects(rng, recs, share_nan_eeg=0.05, share_nan_spec=0.05, share_flat=0.06):
    """NaN stretches in some EEGs and spectrograms, a flat electrode in some recordings;
    at least one of each NaN kind in the training data so that readers meet them."""
    train = [r for r in recs if r.split == "train"]
    eegs = [e for r in train for e in r.eegs]
    n_nan = max(1, int(round(share_nan_eeg * len(eegs))))
    for i in rng.choice(len(eegs), size=min(n_nan, len(eegs)), replace=False):
        e = eegs[i]
        length = float(rng.uniform(1, 10))
        e.nan = (float(rng.uniform(0, e.dur - length)), length)
    n_spec = max(1, int(round(share_nan_spec * len(train))))
    for i in rng.choice(len(train), size=min(n_spec, len(train)), replace=False):
        frames = train[i].dur // S.SPEC_STEP_SECONDS
        n = int(rng.integers(2, 30))  # the real train spectrogram has a run of 26 NaN rows
        train[i].spec_nan = (int(rng.integers(0, frames - n)), n)
    for r in recs:
        if rng.random() < share_flat:
            r.flat = int(rng.integers(N_EL))
        if r.split == "test" and rng.random() < 0.03:
            length = float(rng.uniform(1, 5))
            r.eegs[0].nan = (float(rng.uniform(0, 50 - length)), length)


def make_plan(n_eegs: int, n_test_eegs: int, seed: int):
    """Everything but the signals: recordings, train/test tables and the answers."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    # one pool of patient ids, train first: train and test patients are disjoint
    pids = _unique_ids(rng, min(n_eegs + n_test_eegs + 8, 65_535), 1, 65_536)
    train, used = _plan_train(rng, n_eegs, pids)
    test, _ = _plan_test(rng, n_test_eegs, pids[used:], len(train))
    return finish_plan(rng, train, test)


def finish_plan(rng, train: list[Recording], test: list[Recording]):
    """Ids, defects (NaN stretches, flat electrodes), the train/test tables and the answers
    of planned recordings; returns (recordings, train, test, train answers, test answers)."""
    recs = train + test
    n_eegs, n_test_eegs = sum(len(r.eegs) for r in train), sum(len(r.eegs) for r in test)
    eeg_ids = _unique_ids(rng, n_eegs + n_test_eegs, 1_000_000, 4_294_967_295)
    spec_ids = _unique_ids(rng, len(recs), 100_000, 2_147_483_647)
    for rec, sid in zip(recs, spec_ids):
        rec.spectrogram_id = int(sid)
    for e, eid in zip((e for r in recs for e in r.eegs), eeg_ids):
        e.eeg_id = int(eid)
    _add_defects(rng, recs)
    train_df, train_ans = _train_tables(rng, train)
    test_df, test_ans = _test_tables(rng, test)
    return recs, train_df, test_df, train_ans, test_ans


def _train_tables(rng, recs):
    rows, answers = [], []
    for rec in recs:
        spec_sub = 0
        for e, round_ in zip(rec.eegs, rec.rounds):
            # one vote draw per event: rows of one eeg_id share a vote vector (as on Kaggle)
            pst = [event_pstar(ev) for ev in e.events]
            votes = [rng.multinomial(int(draw_n_votes(rng, 1, round_)[0]), p) for p in pst]
            for sub, off in enumerate(e.offsets):
                j = int(off + S.EEG_WINDOW_SECONDS / 2 >= e.boundary)
                spec_off = e.start + off + S.EEG_WINDOW_SECONDS // 2 - S.SPEC_WINDOW_SECONDS // 2
                rows.append((e.eeg_id, sub, float(off), rec.spectrogram_id, spec_sub, float(spec_off),
                             0, rec.patient.patient_id, consensus(votes[j]), *votes[j]))
                answers.append(pst[j])
                spec_sub += 1
    df = pd.DataFrame(rows, columns=list(S.TRAIN_COLUMNS))
    df["label_id"] = _unique_ids(rng, len(df), 10_000, 4_294_967_295)
    ans = pd.DataFrame(np.array(answers).reshape(-1, S.N_CLASSES), columns=list(S.PSTAR_COLUMNS))
    ans.insert(0, "label_id", df["label_id"].to_numpy())
    for c in S.VOTE_COLUMNS:
        df[c] = df[c].astype(np.int64)
    return df, ans


def _test_tables(rng, recs):
    eeg_ids = [r.eegs[0].eeg_id for r in recs]
    test_df = pd.DataFrame({"spectrogram_id": [r.spectrogram_id for r in recs], "eeg_id": eeg_ids,
                            "patient_id": [r.patient.patient_id for r in recs]})[list(S.TEST_COLUMNS)]
    pst = np.array([event_pstar(r.eegs[0].events[0]) for r in recs]).reshape(-1, S.N_CLASSES)
    n_votes = draw_n_votes(rng, len(recs), "test")
    votes = np.array([rng.multinomial(int(n), p) for n, p in zip(n_votes, pst)]).reshape(-1, S.N_CLASSES)
    ans = pd.DataFrame(pst, columns=list(S.PSTAR_COLUMNS))
    ans.insert(0, "eeg_id", eeg_ids)
    for c, v in zip(S.VOTE_COLUMNS, votes.T):
        ans[c] = v.astype(np.int64)
    return test_df, ans


# ----------------------------------------------------------------------------- signals
def _spectral_noise(rng, n, fs, psd) -> np.ndarray:
    """Gaussian noise with one-sided PSD `psd` (uV^2/Hz, shape (cols, n_freqs) on the
    rfft grid of length n), so the same patient has the same band power at 200 Hz and in
    the 50 Hz context. Returns (n, cols) float32."""
    amp = np.sqrt(psd * (fs * n / 4.0)).astype(np.float32)  # E|X_k|^2 = PSD*fs*n/2 over re+im
    spec = np.empty(amp.shape, np.complex64)
    spec.real = rng.standard_normal(amp.shape, dtype=np.float32) * amp
    spec.imag = rng.standard_normal(amp.shape, dtype=np.float32) * amp
    spec[:, 0] = 0
    return sp_fft.irfft(spec, n, axis=-1).T


def _bg_psd(f, p: Patient):
    """1/f^beta background with a knee at 1 Hz, high-passed at 0.3 Hz, low-passed ~60 Hz,
    scaled so that the band 0-100 Hz carries bg_rms^2."""
    def shape(x):
        return (x**2 + 1) ** (-p.beta / 2) * x**2 / (x**2 + 0.09) / (1 + (x / 60) ** 8)
    grid = np.linspace(0, 100, 4001)
    return shape(f) * p.bg_rms**2 / trapezoid(shape(grid), grid)


def _spatial_mix(p: Patient) -> np.ndarray:
    d2 = ((XY[:, None, :] - XY[None, :, :]) ** 2).sum(-1)
    m = np.exp(-d2 / (2 * p.sigma_s**2))
    return m / np.sqrt((m**2).sum(1, keepdims=True))  # unit row norm keeps each channel's power


def _background(rng, p: Patient, n, fs) -> np.ndarray:
    """Spatially correlated 1/f EEG + reference noise + posterior rhythm, (n, 19) uV."""
    n_fft = sp_fft.next_fast_len(n, real=True)  # generate a bit longer: fast FFT sizes only
    f = np.fft.rfftfreq(n_fft, 1 / fs)
    bg = _bg_psd(f, p)
    alpha = np.exp(-0.5 * ((f - p.alpha_f) / 0.6) ** 2) / (0.6 * np.sqrt(2 * np.pi)) if p.alpha_f else 0 * f
    psd = np.vstack([np.broadcast_to(bg, (N_EL, len(f))), bg * p.common_ref**2,
                     alpha * (p.alpha_amp * p.bg_rms) ** 2])
    z = _spectral_noise(rng, n_fft, fs, psd)[:n]
    mix = (_spatial_mix(p).T * p.gain).astype(np.float32)
    posterior = (np.clip(-XY[:, 1], 0, 1) ** 1.5 + 0.05).astype(np.float32)
    wax = 0.7 + 0.3 * np.sin(2 * np.pi * np.arange(n) / fs / rng.uniform(5, 20) + rng.uniform(0, 6))
    return z[:, :N_EL] @ mix + z[:, N_EL:N_EL + 1] + (z[:, -1] * wax)[:, None] * posterior


def _smooth_noise(rng, n, fs, step_s=1.0) -> np.ndarray:
    knots = rng.standard_normal(int(n / fs / step_s) + 2)
    return np.interp(np.arange(n) / fs / step_s, np.arange(len(knots)), knots)


def _fields(ev: Event, p: Patient):
    """Generalised field (bilateral, frontal when fr > 0) and lateralised field (a focus on
    one hemisphere), each peaking at 1; the per-patient jitter keeps generalised
    patterns visible in bipolar pairs (a perfectly uniform field would cancel)."""
    gen = np.exp(1.5 * ev.fr * XY[:, 1]) * p.jitter
    d2 = (XY[:, 0] - 0.7 * ev.side) ** 2 + (XY[:, 1] - ev.focus_y) ** 2
    foc = np.exp(-d2 / (2 * ev.rho**2)) * p.jitter
    return gen / gen.max(), foc / foc.max()


def _waveform(ev: Event, phi) -> np.ndarray:
    """Von Mises pulse train: kappa ~ 0.3 is a near-sinusoid (rhythmic delta), large kappa
    a ~35 ms sharp discharge followed by a slow after-wave (periodic discharges)."""
    k_sharp = 1.0 / (2 * np.pi * ev.freq * 0.035) ** 2
    k_sin = 0.3
    kappa = np.exp((1 - ev.s) * np.log(k_sin) + ev.s * np.log(max(k_sharp, k_sin)))
    w = np.exp(kappa * (np.cos(phi) - 1))
    lag = 2 * np.pi * ev.freq * 0.12
    w -= 0.5 * ev.s * np.exp(kappa / 6 * (np.cos(phi - lag) - 1))
    w -= w.mean()
    return w / (w.std() + 1e-9)


def _pattern(rng, ev: Event, p: Patient, t) -> np.ndarray:
    """One event over recording times t (s), (n, 19) uV. Evolution is a slow cycle that
    moves frequency, amplitude and field together (a seizure's evolution); stable
    patterns (small evo) keep only ~6% frequency jitter."""
    fs = 1.0 / (t[1] - t[0])
    cyc = np.sin(2 * np.pi * t / ev.period + ev.phase)
    f_inst = ev.freq * np.exp(0.45 * ev.evo * cyc + 0.06 * _smooth_noise(rng, len(t), fs))
    phi = 2 * np.pi * np.cumsum(f_inst) / fs + rng.uniform(0, 2 * np.pi)
    # x1.8: smooth fields partly cancel in bipolar pairs, the background less so
    amp = 1.8 * ev.amp * p.bg_rms * (1 + 0.5 * ev.evo * np.sin(2 * np.pi * t / ev.period + ev.phase + 1.0))
    amp = amp * np.exp(0.1 * _smooth_noise(rng, len(t), fs, 3.0))
    lam = ev.lat * (1 - 0.6 * ev.evo * (1 + cyc) / 2)  # the field spreads as it evolves
    gen, foc = _fields(ev, p)
    drive = amp * _waveform(ev, phi)
    return (drive * lam)[:, None] * foc + (drive * (1 - lam))[:, None] * gen


def _events_signal(rng, e: EegPlan, p: Patient, t_rec) -> np.ndarray:
    x = _pattern(rng, e.events[0], p, t_rec)
    if len(e.events) > 1:
        m = 1 / (1 + np.exp(-(t_rec - e.start - e.boundary) / 0.7))  # ~2 s crossfade
        x = x * (1 - m)[:, None] + _pattern(rng, e.events[1], p, t_rec) * m[:, None]
    return x


def _bumps(rng, n, fs, rate, width_s, amp_lo, amp_hi) -> np.ndarray:
    """Gaussian bumps at Poisson times (blinks)."""
    impulses = np.zeros(n)
    k = rng.poisson(rate * n / fs)
    impulses[rng.integers(0, n, k)] = rng.uniform(amp_lo, amp_hi, k)
    tk = np.arange(-int(4 * width_s * fs), int(4 * width_s * fs) + 1) / fs
    return np.convolve(impulses, np.exp(-0.5 * (tk / width_s) ** 2), "same")


def _muscle(rng, p: Patient, n, fs) -> np.ndarray:
    """High-frequency bursts on temporal electrodes (jaw/temporalis contraction)."""
    out = np.zeros((n, N_EL))
    for _ in range(rng.poisson(p.muscle_rate * n / fs)):
        length = min(n, int(rng.uniform(0.5, 4) * fs))
        i0 = int(rng.integers(0, n - length + 1))
        chans = [_EL[c] for c in TEMPORAL[int(rng.choice([-1, 1]))]]
        # differenced white noise: power rising with frequency, like EMG
        noise = np.diff(rng.standard_normal((length + 1, len(chans))), axis=0)
        out[i0:i0 + length, chans] += noise * np.hanning(length)[:, None] * rng.uniform(4, 15)
    return out


def _pops(rng, p: Patient, n, fs) -> np.ndarray:
    """Electrode pops: a sudden step on one electrode decaying over a few hundred ms."""
    out = np.zeros((n, N_EL))
    for _ in range(rng.poisson(p.pop_rate * n / fs)):
        i0, ch = int(rng.integers(0, n)), int(rng.integers(N_EL))
        tail = np.arange(n - i0) / fs
        # most pops are a few hundred uV; some electrodes jump by thousands, as in real files
        amp = rng.uniform(1000, 3000) if rng.random() < 0.15 else rng.uniform(100, 400)
        out[i0:, ch] += rng.choice([-1, 1]) * amp * np.exp(-tail / rng.uniform(0.1, 0.4))
    return out


def _ekg(rng, p: Patient, n, fs) -> np.ndarray:
    """P-QRS-T complexes at the patient's heart rate with slight variability, uV."""
    rr = 60.0 / p.hr
    beats = np.cumsum(rr * (1 + 0.03 * rng.standard_normal(int(n / fs / rr) + 3))) - rng.uniform(0, rr)
    impulses = np.zeros(n)
    idx = (beats[(beats >= 0) & (beats < n / fs)] * fs).astype(int)
    impulses[idx] = 1.0
    tk = np.arange(-int(0.4 * fs), int(0.5 * fs) + 1) / fs
    # (amplitude, centre s, width s) of P, Q, R, S, T
    waves = ((0.12, -0.2, 0.025), (-0.12, -0.03, 0.008), (1.0, 0.0, 0.01),
             (-0.25, 0.03, 0.01), (0.3, 0.25, 0.05))
    template = sum(a * np.exp(-0.5 * ((tk - c) / w) ** 2) for a, c, w in waves)
    return np.convolve(impulses, template, "same") * p.ekg_amp


def _render_eeg(rng, rec: Recording, e: EegPlan) -> np.ndarray:
    """(n, 20) uV in schema.EEG_CHANNELS order, before NaN stretches."""
    p, n = rec.patient, e.dur * FS
    t_rec = e.start + np.arange(n) / FS
    x = _background(rng, p, n, FS) + _events_signal(rng, e, p, t_rec)
    x += _bumps(rng, n, FS, p.blink_rate, 0.1, 80, 200)[:, None] * EYE_W
    x += _muscle(rng, p, n, FS) + _pops(rng, p, n, FS)
    x += p.line_amp * np.sin(2 * np.pi * 60 * t_rec + rng.uniform(0, 6))[:, None] * p.gain
    ekg = _ekg(rng, p, n, FS)
    x += ekg[:, None] * p.ekg_leak
    if rec.flat >= 0:
        x[:, rec.flat] = 0.0
    ekg_col = ekg + 20 * _smooth_noise(rng, n, FS, 2.0) + 5 * rng.standard_normal(n)
    out = np.empty((n, len(S.EEG_CHANNELS)))
    out[:, [S.EEG_CHANNELS.index(c) for c in ELECTRODES]] = x
    out[:, S.EEG_CHANNELS.index(S.EKG_CHANNEL)] = ekg_col
    return out


def _render_context(rng, rec: Recording, low_bands: list[np.ndarray]) -> np.ndarray:
    """The recording's electrodes at 50 Hz: background, blinks, each EEG's pattern fading
    away from its file (it started before and ends after), and inside each EEG file
    exactly that file's signal, low-passed and decimated."""
    p, n = rec.patient, rec.dur * CTX_FS
    t = np.arange(n) / CTX_FS
    x = _background(rng, p, n, CTX_FS) + _bumps(rng, n, CTX_FS, p.blink_rate, 0.1, 80, 200)[:, None] * EYE_W
    centres = [e.start + e.dur / 2 for e in rec.eegs]
    edges = [0.0] + [(a + b) / 2 for a, b in zip(centres, centres[1:])] + [rec.dur]
    tau = rng.uniform(100, 400)
    for e, c, a, b in zip(rec.eegs, centres, edges, edges[1:]):
        for ev, lo, hi in ((e.events[0], a, c), (e.events[-1], c, b)):
            seg = slice(int(lo * CTX_FS), int(hi * CTX_FS))
            ts = t[seg]
            if len(ts) < 2:
                continue
            dist = np.maximum(0, np.maximum(e.start - ts, ts - e.start - e.dur))
            x[seg] += _pattern(rng, ev, p, ts) * np.exp(-dist / tau)[:, None]
    if rec.flat >= 0:
        x[:, rec.flat] = 0.0
    for e, low in zip(rec.eegs, low_bands):
        i0, m = e.start * CTX_FS, len(low)
        ramp = np.clip(np.minimum(np.arange(m) + 1, m - np.arange(m)) / CTX_FS, 0, 1)[:, None]
        x[i0:i0 + m] = x[i0:i0 + m] * (1 - ramp) + low * ramp
    return x


def kaggle_spectrogram(electrodes: np.ndarray, fs: int = FS) -> np.ndarray:
    """Kaggle-style spectrogram of (n, 19) electrodes (ELECTRODES order): per chain, the
    mean over its 4 bipolar pairs of the Hann-windowed PSD (uV^2/Hz), frames centred at
    1, 3, 5, ... s, bins 0.59..19.92 Hz. Returns (n_frames, 400) in SPEC_COLUMNS order.
    The FFT length scales with fs (1024 at 200 Hz, 256 at 50 Hz) to keep the same bins."""
    nfft = int(round(fs * 1024 / FS))
    bip = np.ascontiguousarray((electrodes[:, BIP_A] - electrodes[:, BIP_B]).T, dtype=np.float32)
    n_frames = bip.shape[1] // (S.SPEC_STEP_SECONDS * fs)
    padded = np.pad(bip, ((0, 0), (nfft // 2, nfft // 2)))
    centres = fs * (1 + S.SPEC_STEP_SECONDS * np.arange(n_frames))
    frames = sliding_window_view(padded, nfft, axis=1)[:, centres]  # (16, frames, nfft)
    win = np.hanning(nfft + 1)[:-1].astype(np.float32)
    spec = sp_fft.rfft(frames * win, axis=-1)[..., 3:3 + S.SPEC_N_FREQS]
    power = (spec.real**2 + spec.imag**2) * np.float32(2 / (fs * (win**2).sum()))
    power = power.reshape(len(S.CHAIN_NAMES), 4, n_frames, S.SPEC_N_FREQS).mean(1)  # (4, frames, 100)
    return power.transpose(1, 0, 2).reshape(n_frames, -1)


# ----------------------------------------------------------------------------- writing
def _write_parquet(path: Path, names, data: np.ndarray, time: np.ndarray | None = None) -> int:
    """float32 columns (after an optional integer `time` column, as in the real spectrograms,
    with min/max statistics as pyarrow writes them); no pandas metadata, fixed codec:
    identical input, identical bytes."""
    data = np.asfortranarray(data, dtype=np.float32)
    columns = ([pa.array(time)] if time is not None else []) + [pa.array(data[:, i]) for i in range(data.shape[1])]
    table = pa.Table.from_arrays(columns, names=list(names))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", use_dictionary=False,
                       use_byte_stream_split=True, write_statistics=[names[0]] if time is not None else False)
    return path.stat().st_size


# the real files' `time` dtypes: int64 in train spectrograms, int16 in the test one
SPEC_TIME_DTYPES = {"train": np.int64, "test": np.int16}


def _render_recording(args) -> int:
    """Render and write one recording's EEG files and spectrogram; returns bytes written."""
    rec, out_dir, seed, signals = args
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, rec.index)))
    eeg_dir = out_dir / (S.TRAIN_EEG_DIR if rec.split == "train" else S.TEST_EEG_DIR)
    spec_dir = out_dir / (S.TRAIN_SPEC_DIR if rec.split == "train" else S.TEST_SPEC_DIR)
    if signals == "noise":
        return _write_noise_recording(rng, rec, eeg_dir, spec_dir)
    low_bands, written = [], 0
    el_cols = [S.EEG_CHANNELS.index(c) for c in ELECTRODES]
    for e in rec.eegs:
        x = _render_eeg(rng, rec, e)
        low_bands.append(resample_poly(x[:, el_cols], CTX_FS, FS, axis=0))
        if e.nan is not None:  # samples lost in the export: the spectrogram still saw them
            x[int(e.nan[0] * FS):int((e.nan[0] + e.nan[1]) * FS)] = np.nan
        x = np.round(x, 2)  # the real files hold microvolts rounded to 0.01
        written += _write_parquet(eeg_dir / f"{e.eeg_id}.parquet", S.EEG_CHANNELS, x)
    spec = np.round(kaggle_spectrogram(_render_context(rng, rec, low_bands), CTX_FS), 2)
    return written + _write_spectrogram(rec, spec_dir, spec)


def _write_spectrogram(rec: Recording, spec_dir: Path, spec: np.ndarray) -> int:
    if rec.spec_nan is not None:
        spec[rec.spec_nan[0]:rec.spec_nan[0] + rec.spec_nan[1]] = np.nan
    times = (1 + S.SPEC_STEP_SECONDS * np.arange(len(spec))).astype(SPEC_TIME_DTYPES[rec.split])
    names = (S.SPEC_TIME_COLUMN, *S.SPEC_COLUMNS)
    return _write_parquet(spec_dir / f"{rec.spectrogram_id}.parquet", names, spec, time=times)


# noise signals: uV scale of the electrodes and the EKG, log-power spread of the spectrogram
NOISE_EEG_UV, NOISE_EKG_UV, NOISE_LOG_POWER = 20.0, 300.0, (-1.5, 1.5)


def _write_noise_recording(rng, rec: Recording, eeg_dir: Path, spec_dir: Path) -> int:
    """The cheap renderer of `--signals noise` (the real-size dataset): white noise in the
    exact file schema (uV rounded to 0.01, NaN stretches, a large EKG column) and lognormal
    spectrogram power in multiples of 0.01, zeros included. The files cost what real ones
    cost to read and cache; the labels are the plan's, but no pattern shows in the signal."""
    written, ekg = 0, S.EEG_CHANNELS.index(S.EKG_CHANNEL)
    for e in rec.eegs:
        x = rng.standard_normal((e.dur * FS, len(S.EEG_CHANNELS)), dtype=np.float32) * np.float32(NOISE_EEG_UV)
        x[:, ekg] *= np.float32(NOISE_EKG_UV / NOISE_EEG_UV)
        if rec.flat >= 0:
            x[:, S.EEG_CHANNELS.index(ELECTRODES[rec.flat])] = 0.0
        if e.nan is not None:
            x[int(e.nan[0] * FS):int((e.nan[0] + e.nan[1]) * FS)] = np.nan
        written += _write_parquet(eeg_dir / f"{e.eeg_id}.parquet", S.EEG_CHANNELS, np.round(x, 2))
    n_frames = rec.dur // S.SPEC_STEP_SECONDS
    log_power = rng.standard_normal((n_frames, len(S.SPEC_COLUMNS)), dtype=np.float32) * np.float32(NOISE_LOG_POWER[1])
    spec = np.round(np.exp(log_power + np.float32(NOISE_LOG_POWER[0])), 2)
    return written + _write_spectrogram(rec, spec_dir, spec)


def _prepare_dirs(out_dir: Path, recs) -> None:
    """Create the layout; drop parquet files of an earlier synthetic run that this plan
    does not rewrite, but never touch a directory that is not a synthetic dataset."""
    keep = {(S.TRAIN_EEG_DIR if r.split == "train" else S.TEST_EEG_DIR, f"{e.eeg_id}.parquet")
            for r in recs for e in r.eegs}
    keep |= {(S.TRAIN_SPEC_DIR if r.split == "train" else S.TEST_SPEC_DIR, f"{r.spectrogram_id}.parquet")
             for r in recs}
    dirs = (S.TRAIN_EEG_DIR, S.TRAIN_SPEC_DIR, S.TEST_EEG_DIR, S.TEST_SPEC_DIR)
    stale = [out_dir / d / f.name for d in dirs if (out_dir / d).is_dir()
             for f in (out_dir / d).glob("*.parquet") if (d, f.name) not in keep]
    if stale and not (out_dir / S.ANSWERS_DIR).is_dir():
        raise FileExistsError(f"{out_dir} holds parquet files of a dataset the simulator did not write")
    for f in stale:
        f.unlink()
    for d in (*dirs, S.ANSWERS_DIR):
        (out_dir / d).mkdir(parents=True, exist_ok=True)


def _class_mix(df: pd.DataFrame) -> dict:
    shares = df["expert_consensus"].value_counts(normalize=True)
    return {name: round(float(shares.get(name, 0.0)), 4) for name in S.CONSENSUS_NAMES}


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


SIGNALS = ("simulator", "noise")  # the signal renderers: the full simulator, cheap noise


def generate(out_dir: str | Path, n_eegs: int = 800, n_test_eegs: int = 200, seed: int = 42,
             progress: bool = True, workers: int | None = None, signals: str = "simulator") -> dict:
    """Write the embedded dataset into out_dir (Kaggle layout + answers/); returns a summary."""
    return write_plan(out_dir, make_plan(n_eegs, n_test_eegs, seed), seed, progress, workers, signals)


def write_plan(out_dir: str | Path, plan: tuple, seed: int, progress: bool = True, workers: int | None = None,
               signals: str = "simulator") -> dict:
    """Render a plan (recordings, train, test, train answers, test answers) into out_dir."""
    from tqdm.auto import tqdm

    if signals not in SIGNALS:
        raise ValueError(f"signals must be one of {SIGNALS}, got {signals!r}")
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    recs, train_df, test_df, train_ans, test_ans = plan
    _prepare_dirs(out_dir, recs)
    workers = max(1, min(workers or os.cpu_count() or 1, len(recs)))
    jobs = [(r, out_dir, seed, signals) for r in recs]
    with tqdm(total=len(recs), desc="hms synth", unit="rec", disable=not progress) as bar:
        if workers == 1:
            for job in jobs:
                _render_recording(job)
                bar.update()
        else:
            with ProcessPoolExecutor(workers) as pool:
                for _ in pool.map(_render_recording, jobs, chunksize=4):
                    bar.update()
    # tables last: a train.csv on disk means every file it names is complete
    atomic_to_csv(train_ans, out_dir / S.ANSWERS_DIR / S.TRAIN_ANSWERS_CSV)
    atomic_to_csv(test_ans, out_dir / S.ANSWERS_DIR / S.TEST_ANSWERS_CSV)
    sub = pd.DataFrame({"eeg_id": test_df["eeg_id"], **{c: 1.0 / S.N_CLASSES for c in S.VOTE_COLUMNS}})
    atomic_to_csv(sub[list(S.SUBMISSION_COLUMNS)], out_dir / S.SAMPLE_SUBMISSION_CSV)
    atomic_to_csv(test_df, out_dir / S.TEST_CSV)
    atomic_to_csv(train_df, out_dir / S.TRAIN_CSV)
    return {**_summary(out_dir, train_df, test_df, time.perf_counter() - t0), "signals": signals}


def _summary(out_dir: Path, train_df, test_df, seconds) -> dict:
    n_votes = train_df[list(S.VOTE_COLUMNS)].sum(axis=1)
    return {
        "out_dir": str(out_dir),
        "train_rows": len(train_df), "train_eegs": int(train_df["eeg_id"].nunique()),
        "train_spectrograms": int(train_df["spectrogram_id"].nunique()),
        "train_patients": int(train_df["patient_id"].nunique()),
        "test_eegs": len(test_df), "test_patients": int(test_df["patient_id"].nunique()),
        "low_vote_rows": int((n_votes < 10).sum()), "high_vote_rows": int((n_votes >= 10).sum()),
        "class_mix_low_vote": _class_mix(train_df[n_votes < 10]),
        "class_mix_high_vote": _class_mix(train_df[n_votes >= 10]),
        **oracle_and_prior_kl(out_dir),
        "seconds": round(seconds, 2), "bytes_on_disk": _dir_bytes(out_dir),
    }


def oracle_and_prior_kl(data_dir: str | Path) -> dict:
    """KL on the test split of: p* (the oracle, the floor no model beats in expectation),
    the mean target of the high-vote train rows (the prior), and uniform 1/6."""
    data_dir = Path(data_dir)
    train = pd.read_csv(data_dir / S.TRAIN_CSV)
    ans = pd.read_csv(data_dir / S.ANSWERS_DIR / S.TEST_ANSWERS_CSV)
    votes = train[list(S.VOTE_COLUMNS)].to_numpy(float)
    high = votes[votes.sum(1) >= 10]
    high = high if len(high) else votes
    prior = (high / high.sum(1, keepdims=True)).mean(0)
    target = ans[list(S.VOTE_COLUMNS)].to_numpy(float)
    return {
        "oracle_kl_test": kl_score(target, ans[list(S.PSTAR_COLUMNS)].to_numpy(float)),
        "prior_kl_test": kl_score(target, np.tile(prior, (len(target), 1))),
        "uniform_kl_test": kl_score(target, np.full(target.shape, 1.0 / S.N_CLASSES)),
    }
