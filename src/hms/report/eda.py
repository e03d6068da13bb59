"""`hms eda`: a self-contained HTML report on a dataset in Kaggle layout (index.html + PNGs
with relative links, so the folder can be zipped or opened anywhere)."""
from __future__ import annotations

import html
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from hms.data import io, labels, schema
from hms.report import views

SECTIONS = (
    "Counts", "Class mix", "Votes per row", "Sub-windows per EEG", "Missing values (NaN share per file)",
    "Example EEGs per class", "Kaggle spectrograms per region", "EEG mel spectrograms",
)
NAN_SAMPLE = 200  # files read for the NaN statistics: enough for a histogram, fast on any dataset


# ---------------------------------------------------------------- tables

def counts(train: pd.DataFrame) -> dict:
    return {"rows": len(train), "eeg_ids": int(train.eeg_id.nunique()),
            "spectrogram_ids": int(train.spectrogram_id.nunique()),
            "patients": int(train.patient_id.nunique())}


def class_mix_by_bucket(train: pd.DataFrame) -> pd.DataFrame:
    """Share of each consensus class per vote bucket, plus the overall mix (last row)."""
    t = labels.add_targets(train)
    bucket = views.vote_bucket(t[labels.TOTAL_VOTES])
    mix = pd.crosstab(bucket, t["expert_consensus"], normalize="index", dropna=False)
    mix = mix.reindex(columns=list(schema.CONSENSUS_NAMES), fill_value=0.0)
    empty = pd.Series(bucket).value_counts().reindex(mix.index).fillna(0).to_numpy() == 0
    mix.loc[empty] = np.nan  # a bucket without rows has no class mix (not 0.000 of every class)
    mix.loc["all"] = [labels.class_mix(train)[c] for c in schema.CONSENSUS_NAMES]
    mix["rows"] = [*pd.Series(bucket).value_counts().reindex(mix.index[:-1]).fillna(0).astype(int), len(t)]
    return mix.rename_axis("votes")


def _nan_share(path: Path) -> float:
    """NaN share of one parquet file's values, straight from Arrow: validating and building
    a DataFrame would triple the cost, and only the counts are needed here."""
    table = pq.read_table(path, memory_map=True)
    if schema.SPEC_TIME_COLUMN in table.column_names:
        table = table.drop([schema.SPEC_TIME_COLUMN])
    nan = sum(int(np.isnan(col.to_numpy()).sum()) for col in table.columns)
    return nan / max(1, table.num_rows * table.num_columns)


def nan_shares(data_dir: Path, ids: np.ndarray, kind: str, n: int = NAN_SAMPLE, seed: int = 0) -> np.ndarray:
    """NaN share of up to n randomly chosen files of one kind ('eeg' or 'spec')."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(ids, size=min(n, len(ids)), replace=False)
    path_of = io.eeg_path if kind == "eeg" else io.spectrogram_path
    with ThreadPoolExecutor(max_workers=4) as pool:  # Arrow decoding releases the GIL
        return np.array(list(pool.map(_nan_share, [path_of(data_dir, "train", i) for i in ids])))


def examples_per_class(train: pd.DataFrame) -> pd.DataFrame:
    """One clear example per class: the row with the most votes among those whose majority
    class is that class with the largest agreement (a typical, not a borderline, case)."""
    t = labels.add_targets(train)
    probs = t[list(schema.VOTE_COLUMNS)].to_numpy()
    t["majority"], t["agreement"] = views.majority_class(probs), probs.max(1)
    rows = []
    for k in range(schema.N_CLASSES):
        cand = t[t.majority == k]
        if len(cand):
            rows.append(cand.sort_values(["agreement", labels.TOTAL_VOTES], ascending=False).iloc[0])
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- figures

def _bar_mix(mix: pd.DataFrame):
    fig = views.new_figure(9, 4)
    ax = fig.add_subplot()
    shares = mix[list(schema.CONSENSUS_NAMES)].fillna(0.0)
    names = [f"{b}\n({n} rows)" for b, n in zip(mix.index.astype(str), mix["rows"])]
    bottom = np.zeros(len(shares))
    for name in schema.CONSENSUS_NAMES:
        ax.bar(names, shares[name], bottom=bottom, label=name)
        bottom += shares[name].to_numpy()
    for i, n in enumerate(mix["rows"]):
        if n == 0:
            ax.text(i, 0.5, "no rows", ha="center", va="center", fontsize=9, color="0.4")
    ax.set_ylabel("share of rows")
    ax.set_xlabel("total votes of the row")
    ax.legend(ncol=6, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 1.15))
    return fig


def _hist(values, title: str, xlabel: str, bins):
    fig = views.new_figure(7, 3.5)
    ax = fig.add_subplot()
    ax.hist(values, bins=bins, color="tab:blue", edgecolor="white")
    ax.set(title=title, xlabel=xlabel, ylabel="count")
    return fig


def _nan_figure(eeg_nan: np.ndarray, spec_nan: np.ndarray):
    fig = views.new_figure(10, 3.5)
    for ax, values, name in zip(fig.subplots(1, 2), (eeg_nan, spec_nan), ("EEG files", "spectrogram files")):
        ax.hist(values, bins=np.linspace(0, max(0.01, float(values.max(initial=0))), 21), color="tab:orange")
        ax.set(title=f"{name}: {np.mean(values > 0):.0%} contain NaN (n={len(values)})",
               xlabel="NaN share of the file", ylabel="files")
    return fig


# ---------------------------------------------------------------- report

class Report:
    """Collects sections of HTML and the figures they reference."""

    def __init__(self, out: Path):
        self.out, self.parts, self.figures = Path(out), [], []
        self.out.mkdir(parents=True, exist_ok=True)

    def section(self, heading: str, text: str = "") -> None:
        self.parts.append(f"<h2>{html.escape(heading)}</h2>")
        if text:
            self.parts.append(f"<p>{html.escape(text)}</p>")

    def table(self, df: pd.DataFrame, fmt: str = "{:.3f}", index: bool = True) -> None:
        self.parts.append(df.to_html(float_format=fmt.format, border=0, classes="t", index=index, na_rep="–"))

    def figure(self, fig, name: str, caption: str = "") -> None:
        views.save(fig, self.out / name)
        self.figures.append(name)
        self.parts.append(f'<figure><img src="{name}" alt="{html.escape(caption or name)}">'
                          f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def write(self, title: str) -> Path:
        style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}img{max-width:100%}"
                 "table.t{border-collapse:collapse}table.t td,table.t th{padding:2px 8px;text-align:right}")
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{''.join(self.parts)}</body></html>")
        path = self.out / "index.html"
        path.write_text(page, encoding="utf-8")
        return path


def _example_sections(rep: Report, data_dir: Path, examples: pd.DataFrame, mel_cfg) -> None:
    rep.section(SECTIONS[5], "Bipolar double-banana traces (0.5-20 Hz band-pass, 60 Hz notch) of one clear "
                "example per majority class; the shaded band is the labelled central 10 s.")
    signals = {}
    for r in examples.itertuples():
        cls = schema.CLASSES[int(r.majority)]
        raw = views.bipolar_window(data_dir, r.eeg_id, r.eeg_label_offset_seconds)
        signals[cls] = views.filtered(raw)
        # add_targets normalised the vote columns: share x total gives the counts back
        votes = " ".join(f"{c}={round(getattr(r, v) * r.total_votes)}" for c, v in zip(schema.CLASSES, schema.VOTE_COLUMNS))
        rep.figure(views.plot_bipolar(signals[cls], f"{cls}: eeg_id {r.eeg_id} @ {r.eeg_label_offset_seconds:g} s "
                                      f"(votes {votes})"), f"eeg_{cls}.png", f"{cls} example")
    rep.section(SECTIONS[6], "Log power of the competition's 10-minute spectrogram per region (LL, RL, LP, RP), "
                "the window whose centre is the labelled EEG centre.")
    for r in examples.itertuples():
        cls = schema.CLASSES[int(r.majority)]
        panels = views.spectrogram_window(data_dir, r.spectrogram_id, r.spectrogram_label_offset_seconds)
        rep.figure(views.plot_kaggle_spectrogram(panels, f"{cls}: spectrogram_id {r.spectrogram_id}"),
                   f"spec_{cls}.png", f"{cls} Kaggle spectrogram")
    rep.section(SECTIONS[7], "Mel spectrograms of the 16 bipolar pairs averaged per chain (the 2D models' EEG "
                "panels, computed with hms.signal.spectrogram.eeg_panels).")
    from hms.signal.spectrogram import mel_module

    module = mel_module(mel_cfg)  # built once: its DFT and filter bank are reused for every example
    for cls, sig in signals.items():
        rep.figure(views.plot_mel(views.mel_panels(sig, mel_cfg, module), mel_cfg, f"{cls}: EEG mel panels"),
                   f"mel_{cls}.png", f"{cls} EEG mel panels")


def build_report(data_dir: Path, out: Path, mel_cfg, nan_sample: int = NAN_SAMPLE) -> dict:
    """Write out/index.html and its figures; returns {'html', 'figures', 'seconds', 'counts'}."""
    t0 = time.perf_counter()
    data_dir = Path(data_dir)
    train = io.read_train_csv(data_dir / schema.TRAIN_CSV)
    rep = Report(out)
    rep.section(SECTIONS[0], f"Dataset: {data_dir}")
    n = counts(train)
    rep.table(pd.DataFrame([n]), index=False)
    rep.section(SECTIONS[1], "Share of expert_consensus per vote bucket; low-vote rows come from a noisier "
                "annotation round with another class mix than the high-vote rows the test resembles.")
    mix = class_mix_by_bucket(train)
    rep.table(mix)
    rep.figure(_bar_mix(mix), "class_mix.png", "class mix by vote bucket")
    total = train[list(schema.VOTE_COLUMNS)].sum(axis=1)
    rep.section(SECTIONS[2], f"{(total >= 10).mean():.0%} of rows have at least 10 votes.")
    rep.figure(_hist(total, "votes per row", "total votes", np.arange(0.5, total.max() + 1.5)), "votes_hist.png",
               "votes per row")
    subs = train.groupby("eeg_id").size()
    rep.section(SECTIONS[3], f"median {subs.median():g}, max {subs.max()} labelled 50 s windows per eeg_id "
                "(near-duplicates: validate one row per eeg_id and vote vector).")
    top = int(min(50, subs.max()))  # a linear count axis from 0; longer EEGs pile into the last bar
    rep.figure(_hist(subs.clip(upper=top), "sub-windows per eeg_id",
                     f"labelled windows{f' (last bar: {top} or more)' if subs.max() > top else ''}",
                     np.arange(0.5, top + 1.5)), "subwindows_hist.png", "sub-windows per eeg_id")
    rep.section(SECTIONS[4], f"A random sample of at most {nan_sample} files of each kind.")
    eeg_nan = nan_shares(data_dir, train.eeg_id.unique(), "eeg", nan_sample)
    spec_nan = nan_shares(data_dir, train.spectrogram_id.unique(), "spec", nan_sample)
    rep.figure(_nan_figure(eeg_nan, spec_nan), "nan_share.png", "NaN share per file")
    _example_sections(rep, data_dir, examples_per_class(train), mel_cfg)
    path = rep.write(f"HMS data report: {data_dir.name}")
    return {"html": str(path), "figures": rep.figures, "counts": n,
            "seconds": round(time.perf_counter() - t0, 2)}
