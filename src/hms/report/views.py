"""What the report, the explainer and the viewer all show: one labelled window read straight
from the parquet files (no cache needed, so any eeg_id of any dataset can be looked at) and
the matplotlib figures drawn from it. Torch is imported only by the mel panels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from hms.data import io, schema
from hms.signal import filters, kaggle_spec, montage

# Vote-count buckets used by the EDA and the evaluation (low-vote rounds vs high-vote rounds).
VOTE_BUCKETS: tuple[tuple[str, int, float], ...] = (
    ("1-2", 1, 3), ("3-7", 3, 8), ("8-9", 8, 10), ("10-15", 10, 16), ("16+", 16, np.inf),
)
CHAIN_COLORS = {"LL": "tab:blue", "RL": "tab:red", "LP": "tab:green", "RP": "tab:purple"}


def vote_bucket(total_votes) -> pd.Categorical:
    """The bucket name of each total vote count (ordered categorical)."""
    votes = np.asarray(total_votes, dtype=np.float64)
    names = np.array([""] * len(votes), dtype=object)
    for name, lo, hi in VOTE_BUCKETS:
        names[(votes >= lo) & (votes < hi)] = name
    return pd.Categorical(names, categories=[b[0] for b in VOTE_BUCKETS], ordered=True)


def majority_class(probs: np.ndarray) -> np.ndarray:
    """Class index of the largest share per row (ties: first in class order, as argmax)."""
    return np.asarray(probs).argmax(axis=1)


# ---------------------------------------------------------------- reading one window

def bipolar_window(data_dir, eeg_id: int, offset: float, split: str = "train") -> np.ndarray:
    """(16, 10_000) raw bipolar signals (µV, NaN kept) of the 50 s window starting at offset."""
    eeg = io.read_eeg_array(io.eeg_path(data_dir, split, eeg_id))
    start = int(round(offset * schema.SAMPLING_RATE))
    return montage.bipolar(eeg[start: start + schema.EEG_WINDOW_SAMPLES])


def filtered(signals: np.ndarray, bandpass: tuple[float, float] | None = (0.5, 20.0),
             notch_hz: float | None = 60.0) -> np.ndarray:
    """NaN-filled (channel mean), band-passed and notched signals in µV, for display."""
    display = OmegaConf.create({"fill_nan": "mean", "bandpass": list(bandpass) if bandpass else None,
                                "filter_order": 4, "notch_hz": notch_hz, "notch_q": 30.0,
                                "denoise": {"enabled": False}, "clip_uv": None, "scale": 1.0})
    return filters.clean(signals, display)[0]  # the training chain, without clipping or scaling


def spectrogram_window(data_dir, spectrogram_id: int, offset: float, split: str = "train",
                       log_clip: tuple[float, float] = (-4.0, 8.0)) -> np.ndarray:
    """(4 chains, 100 freqs low->high, 300 frames) log power of the 10-min window, NaN kept."""
    path = io.spectrogram_path(data_dir, split, spectrogram_id)
    return kaggle_spec.raw_panels(kaggle_spec.read_log_window(path, offset, schema.SPEC_WINDOW_FRAMES, log_clip))


def mel_panels(signals: np.ndarray, mel_cfg, module=None) -> np.ndarray:
    """(4 chains, n_mels low->high, width) EEG mel panels of cleaned bipolar signals (the
    package's torch implementation, so what is shown is what 2D models see)."""
    from hms.signal.spectrogram import eeg_panels

    x = np.nan_to_num(np.asarray(signals, np.float32))[None]
    return eeg_panels(x, mel_cfg, module=module)[0].numpy()


# ---------------------------------------------------------------- figures

def new_figure(width: float, height: float, layout: str | None = "constrained"):
    """A figure that never touches pyplot's global state (safe in Streamlit's threads)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout=layout)


def plot_bipolar(signals: np.ndarray, title: str = "", t_start: float = 0.0, t_end: float | None = None,
                 fs: float = schema.SAMPLING_RATE, window_start: float = 0.0, spacing: float | None = None,
                 ax=None, fig_size=(11, 7)):
    """Double-banana traces: 16 pairs top to bottom, grouped by chain (LL, RL, LP, RP) with a
    gap between chains, the labelled central 10 s shaded. Times are seconds in the 50 s window."""
    n = signals.shape[-1]
    t = window_start + np.arange(n) / fs
    t_end = t[-1] if t_end is None else t_end
    keep = (t >= t_start) & (t <= t_end)
    fig = None
    if ax is None:
        fig = new_figure(*fig_size)
        ax = fig.add_subplot()
    # one robust scale for every trace so amplitudes stay comparable between channels
    spacing = spacing or float(np.nanpercentile(np.abs(signals[:, keep]), 99) * 1.2 + 1e-6)
    offsets, ticks = [], []
    step = max(1, int(keep.sum()) // 4000)  # ~4000 points per trace: finer than the figure's pixels
    for k, name in enumerate(schema.BIPOLAR_NAMES):
        chain = schema.CHAIN_NAMES[k // 4]
        y0 = -(k + k // 4) * spacing  # one empty slot between chains
        ax.plot(t[keep][::step], signals[k, keep][::step] + y0, lw=0.6, color=CHAIN_COLORS[chain])
        offsets.append(y0)
        ticks.append(f"{chain} {name}")
    centre = window_start + schema.EEG_WINDOW_SECONDS / 2
    half = schema.EEG_CENTER_SECONDS / 2
    ax.axvspan(centre - half, centre + half, color="gold", alpha=0.18, label="labelled central 10 s")
    ax.set_yticks(offsets, ticks, fontsize=9)
    ax.set_xlim(t_start, t_end)
    _scale_bar(ax, spacing, offsets[-1])
    ax.set_xlabel("seconds in the 50 s window")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right", fontsize=7)
    return fig if fig is not None else ax.figure


def _scale_bar(ax, spacing: float, bottom: float) -> None:
    """A vertical bar of a round number of µV at the right edge, below the last trace: every
    trace shares this scale."""
    height = float(10 ** np.floor(np.log10(spacing)))  # the largest 1, 2 or 5 x 10^k within one slot
    height *= 5 if 5 * height <= spacing else 2 if 2 * height <= spacing else 1
    left, right = ax.get_xlim()
    x = right - 0.01 * (right - left)
    y0 = bottom - 1.3 * spacing
    ax.plot([x, x], [y0, y0 + height], color="black", lw=3, solid_capstyle="butt")
    ax.annotate(f"{height:g} µV", (x, y0 + height / 2), xytext=(-6, 0), textcoords="offset points",
                ha="right", va="center", fontsize=9)
    ax.set_ylim(bottom=min(ax.get_ylim()[0], y0 - 0.2 * spacing))


def plot_panels(panels: np.ndarray, title: str, extent_x: tuple[float, float], xlabel: str,
                freq_range: tuple[float, float], cmap: str = "magma", fig_size=(11, 5), colour_label: str = "",
                mark: tuple[float, float, str] | None = None):
    """A 2x2 grid of per-chain heatmaps (LL, RL / LP, RP), low frequencies at the bottom, on one
    colour scale so hemispheres compare at a glance. Fixed margins instead of the constrained
    layout solver: 0.16 s instead of 0.43 s per figure, which the viewer's first view waits for."""
    fig = new_figure(*fig_size, layout=None)
    fig.subplots_adjust(left=0.06, right=0.9, bottom=0.1, top=0.88, hspace=0.3, wspace=0.06)
    axes = fig.subplots(2, 2, sharex=True, sharey=True)
    finite = panels[np.isfinite(panels)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    for ax, chain, panel in zip(axes.flat, schema.CHAIN_NAMES, panels):
        image = ax.imshow(panel, origin="lower", aspect="auto", extent=(*extent_x, *freq_range), cmap=cmap,
                          vmin=vmin, vmax=vmax)
        ax.set_title(chain, fontsize=9)
        if mark:  # (start, end, label): a span of the x axis, e.g. where the 50 s EEG window sits
            for x in mark[:2]:
                ax.axvline(x, color="white", lw=1.0, ls="--")
    if mark:
        axes[0, 0].annotate(mark[2], (mark[1], freq_range[1]), xytext=(3, -3), textcoords="offset points",
                            ha="left", va="top", fontsize=8, color="white")
    bar = fig.colorbar(image, cax=fig.add_axes((0.92, 0.1, 0.015, 0.78)))
    bar.set_label(colour_label, fontsize=9)
    for ax in axes[1]:
        ax.set_xlabel(xlabel)
    for ax in axes[:, 0]:
        ax.set_ylabel("Hz")
    fig.suptitle(title, fontsize=10)
    return fig


def plot_kaggle_spectrogram(panels: np.ndarray, title: str = ""):
    """The 10-minute Kaggle spectrogram, x in minutes relative to the window start."""
    minutes = schema.SPEC_WINDOW_SECONDS / 60
    half_eeg = schema.EEG_WINDOW_SECONDS / 60 / 2  # both windows are centred on the labelled moment
    return plot_panels(panels, title or "Kaggle spectrogram (log power)", (0, minutes),
                       "minutes in the 10-min window",
                       (float(schema.SPEC_FREQS[0]), float(schema.SPEC_FREQS[-1])),
                       colour_label="ln(power), clipped", mark=(minutes / 2 - half_eeg, minutes / 2 + half_eeg,
                                                               "50 s EEG window"))


def plot_mel(panels: np.ndarray, mel_cfg, title: str = ""):
    """EEG mel panels (mean of each chain's 4 pairs), x in seconds of the 50 s window."""
    return plot_panels(panels, title or "EEG mel spectrogram", (0, schema.EEG_WINDOW_SECONDS),
                       "seconds in the 50 s window", (float(mel_cfg["fmin"]), float(mel_cfg["fmax"])),
                       cmap="viridis", colour_label="(dB + 40) / 40")


def png_bytes(fig, dpi: int) -> bytes:
    """The figure as PNG for the viewer: zlib level 1 instead of 6 makes it a bit larger
    (served locally) and saves ~70 ms per figure."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, pil_kwargs={"compress_level": 1})
    return buf.getvalue()


def save(fig, path: Path, dpi: int = 72) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
