"""One source of truth for every name in the HMS data: channels, montage chains,
classes, vote columns, CSV columns and spectrogram columns.

Everything else in the package imports these names instead of spelling them out.
"""
from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal

import numpy as np

SAMPLING_RATE = 200  # Hz, every EEG parquet
EEG_WINDOW_SECONDS = 50  # a labelled EEG window starts at eeg_label_offset_seconds
EEG_CENTER_SECONDS = 10  # the label describes the central 10 s of that window
SPEC_WINDOW_SECONDS = 600  # a labelled spectrogram window (10 minutes)
SPEC_STEP_SECONDS = 2  # the Kaggle spectrogram's time step (times 1, 3, 5, ...)
EEG_WINDOW_SAMPLES = EEG_WINDOW_SECONDS * SAMPLING_RATE  # 10_000
SPEC_WINDOW_FRAMES = SPEC_WINDOW_SECONDS // SPEC_STEP_SECONDS  # 300

# Column order of every EEG parquet, exactly as Kaggle ships it.
EEG_CHANNELS: tuple[str, ...] = (
    "Fp1", "F3", "C3", "P3", "F7", "T3", "T5", "O1", "Fz", "Cz", "Pz",
    "Fp2", "F4", "C4", "P4", "F8", "T4", "T6", "O2", "EKG",
)
EKG_CHANNEL = "EKG"

# The double-banana montage: four chains of four bipolar pairs (anode, cathode).
CHAINS: dict[str, tuple[tuple[str, str], ...]] = {
    "LL": (("Fp1", "F7"), ("F7", "T3"), ("T3", "T5"), ("T5", "O1")),
    "RL": (("Fp2", "F8"), ("F8", "T4"), ("T4", "T6"), ("T6", "O2")),
    "LP": (("Fp1", "F3"), ("F3", "C3"), ("C3", "P3"), ("P3", "O1")),
    "RP": (("Fp2", "F4"), ("F4", "C4"), ("C4", "P4"), ("P4", "O2")),
}
CHAIN_NAMES: tuple[str, ...] = tuple(CHAINS)  # LL, RL, LP, RP (Kaggle spectrogram order)
BIPOLAR_PAIRS: tuple[tuple[str, str], ...] = tuple(p for c in CHAIN_NAMES for p in CHAINS[c])
PAIRS_PER_CHAIN = len(BIPOLAR_PAIRS) // len(CHAIN_NAMES)  # 4: chains are consecutive in BIPOLAR_PAIRS
BIPOLAR_NAMES: tuple[str, ...] = tuple(f"{a}-{b}" for a, b in BIPOLAR_PAIRS)
# Optional extras some top teams added to the 16 pairs.
MIDLINE_PAIRS: tuple[tuple[str, str], ...] = (("Fz", "Cz"), ("Cz", "Pz"))
# Left/right swap: the chain each chain becomes when hemispheres are mirrored.
CHAIN_MIRROR: dict[str, str] = {"LL": "RL", "RL": "LL", "LP": "RP", "RP": "LP"}


def mirrored_bipolar_order() -> list[int]:
    """Index permutation of BIPOLAR_PAIRS that swaps left and right chains."""
    order = []
    for chain in CHAIN_NAMES:
        start = CHAIN_NAMES.index(CHAIN_MIRROR[chain]) * PAIRS_PER_CHAIN
        order.extend(range(start, start + PAIRS_PER_CHAIN))
    return order


MIRROR_SIGNALS: list[int] = mirrored_bipolar_order()
MIRROR_PANELS: list[int] = [CHAIN_NAMES.index(CHAIN_MIRROR[c]) for c in CHAIN_NAMES]  # Kaggle panels LL RL LP RP


def mirror_order(n_signals: int) -> list[int]:
    """Index order of n_signals signals with left and right swapped: the bipolar pairs
    mirrored, any extras (midline, EKG) in place."""
    return MIRROR_SIGNALS + list(range(len(MIRROR_SIGNALS), n_signals))


# Classes in submission order, their consensus names and vote columns.
CLASSES: tuple[str, ...] = ("seizure", "lpd", "gpd", "lrda", "grda", "other")
CONSENSUS_NAMES: tuple[str, ...] = ("Seizure", "LPD", "GPD", "LRDA", "GRDA", "Other")
VOTE_COLUMNS: tuple[str, ...] = tuple(f"{c}_vote" for c in CLASSES)
N_CLASSES = len(CLASSES)

TRAIN_COLUMNS: tuple[str, ...] = (
    "eeg_id", "eeg_sub_id", "eeg_label_offset_seconds",
    "spectrogram_id", "spectrogram_sub_id", "spectrogram_label_offset_seconds",
    "label_id", "patient_id", "expert_consensus", *VOTE_COLUMNS,
)
TEST_COLUMNS: tuple[str, ...] = ("spectrogram_id", "eeg_id", "patient_id")
SUBMISSION_COLUMNS: tuple[str, ...] = ("eeg_id", *VOTE_COLUMNS)
INT_COLUMNS: tuple[str, ...] = (
    "eeg_id", "eeg_sub_id", "spectrogram_id", "spectrogram_sub_id", "label_id", "patient_id",
)
FLOAT_COLUMNS: tuple[str, ...] = ("eeg_label_offset_seconds", "spectrogram_label_offset_seconds")

# Kaggle spectrogram: 100 frequency bins per chain, k * 200/1024 Hz for k = 3..102 (0.59..19.92 Hz).
SPEC_N_FREQS = 100
SPEC_FIRST_BIN = 3
SPEC_BIN_HZ = SAMPLING_RATE / 1024
SPEC_FREQS: np.ndarray = np.arange(SPEC_FIRST_BIN, SPEC_FIRST_BIN + SPEC_N_FREQS) * SPEC_BIN_HZ  # exact
SPEC_TIME_COLUMN = "time"
SPEC_FREQ_TOLERANCE_HZ = 0.006  # a column's parsed frequency must lie this close to its bin


def spec_column_name(chain: str, freq_hz: float) -> str:
    """The real files' spelling: the frequency rounded half-up to 2 decimals, shortest form
    (LL_3.13 for 3.125 Hz, LL_4.1 for 4.1016 Hz), not f"{f:.2f}"."""
    rounded = Decimal(repr(float(freq_hz))).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return f"{chain}_{format(rounded.normalize(), 'f')}"


SPEC_COLUMNS: tuple[str, ...] = tuple(
    spec_column_name(chain, freq) for chain in CHAIN_NAMES for freq in SPEC_FREQS
)
_SPEC_NAME = re.compile(r"^\s*([A-Za-z]{2})\s*[_\- ]?\s*([0-9]+(?:\.[0-9]*)?)\s*(?:hz)?\s*$", re.IGNORECASE)


def spec_column_slot(name: str) -> int | None:
    """Position of a spectrogram column in SPEC_COLUMNS from its chain prefix and frequency,
    whatever the spelling (LL_3.12, ll_3.125, RP 19.9219 Hz); None for anything else."""
    match = _SPEC_NAME.match(str(name))
    if not match or match.group(1).upper() not in CHAIN_NAMES:
        return None
    freq = float(match.group(2))
    k = int(round(freq / SPEC_BIN_HZ)) - SPEC_FIRST_BIN
    if not 0 <= k < SPEC_N_FREQS or abs(freq - SPEC_FREQS[k]) > SPEC_FREQ_TOLERANCE_HZ:
        return None
    return CHAIN_NAMES.index(match.group(1).upper()) * SPEC_N_FREQS + k


# Dataset layout (Kaggle's), relative to a dataset directory.
KAGGLE_SLUG = "hms-harmful-brain-activity-classification"
TRAIN_CSV = "train.csv"
TEST_CSV = "test.csv"
SAMPLE_SUBMISSION_CSV = "sample_submission.csv"
TRAIN_EEG_DIR = "train_eegs"
TRAIN_SPEC_DIR = "train_spectrograms"
TEST_EEG_DIR = "test_eegs"
TEST_SPEC_DIR = "test_spectrograms"
# Answers the simulator writes beside a synthetic dataset (never present in real data).
ANSWERS_DIR = "answers"
TRAIN_ANSWERS_CSV = "train_pstar.csv"  # label_id + p* per class
TEST_ANSWERS_CSV = "test_answers.csv"  # eeg_id + p* per class + test votes
PSTAR_COLUMNS: tuple[str, ...] = tuple(f"{c}_pstar" for c in CLASSES)
