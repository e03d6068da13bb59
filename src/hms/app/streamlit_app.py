"""HMS viewer: pick an eeg_id, look at its bipolar EEG, its spectrograms, the votes next to
every experiment's and the ensemble's out-of-fold prediction, and a model's explanation. The
test recordings (sidebar "recordings: test", or ?split=test) show the experiments' test
predictions and the submitted one (submission_dir/submission.csv) instead of votes.

Run with `hms app` (or `streamlit run src/hms/app/streamlit_app.py`). Paths come from the
HMS_* environment like every hms command; files are read lazily and cached per session."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from hms.data import schema
from hms.report import views

TITLE = "HMS viewer"
TARGETS = [f"{c}_target" for c in schema.CLASSES]
ENSEMBLE = "ensemble"
SUBMISSION, SUBMISSION_CSV = "submission", "submission.csv"
VOTES = "votes"
VOTES_COLOUR = "#8c8c8c"  # the truth in a neutral grey; predictions take the category colours after it
PREDICTION_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
SPLITS = ("train", "test")
DPI = 80  # st.pyplot renders at 200 dpi: 6x the pixels and most of a view's time


def show(fig, where=st) -> None:
    where.image(views.png_bytes(fig, DPI), width="stretch")


@st.cache_resource
def warm_torch():
    """Start importing torch (2-5 s cold) in the background as soon as the app starts, so that
    the EEG mel panels at the bottom of the first view do not wait for all of it."""
    import threading

    thread = threading.Thread(target=lambda: __import__("hms.signal.spectrogram"), daemon=True)
    thread.start()
    return thread


# ---------------------------------------------------------------- cached loading

@st.cache_resource
def config():
    from hms.config import load_config

    return load_config()


@st.cache_data
def eeg_table(data_dir: str) -> pd.DataFrame:
    """One row per eeg_id (its middle sub-window, first vote vector), with targets."""
    from hms.data import io, labels

    train = labels.add_targets(io.read_train_csv(Path(data_dir) / schema.TRAIN_CSV))
    rows = labels.dedup_per_eeg(train).drop_duplicates("eeg_id").set_index("eeg_id")
    rows["majority"] = np.array(schema.CLASSES)[views.majority_class(rows[list(schema.VOTE_COLUMNS)].to_numpy())]
    return rows


@st.cache_data
def experiment_oofs(work_dir: str) -> dict[str, pd.DataFrame]:
    """{experiment: oof.csv} for every finished experiment in the work dir."""
    return {p.parent.name: pd.read_csv(p) for p in sorted(Path(work_dir).glob("*/oof.csv"))}


@st.cache_data
def ensemble_oof(work_dir: str, submission_dir: str) -> pd.DataFrame | None:
    """The ensemble's OOF blend, with the weights of submissions/ensemble.json."""
    from hms.inference.ensemble import KEY, apply_blend, load_oofs

    path = Path(submission_dir) / "ensemble.json"
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    dirs = [Path(work_dir) / e for e in report["experiments"]]
    if not all((d / "oof.csv").is_file() for d in dirs):
        return None
    keys, preds = load_oofs(dirs)
    out = keys.copy()
    out[list(schema.VOTE_COLUMNS)] = apply_blend(preds, report)
    return out[[*KEY, "fold", *schema.VOTE_COLUMNS]]


@st.cache_data
def test_table(data_dir: str) -> pd.DataFrame:
    """One row per test eeg_id, its window at offset 0 (the test's 50 s files and 10-min spectrograms)."""
    from hms.data import io

    test = io.read_test_csv(Path(data_dir) / schema.TEST_CSV).drop_duplicates("eeg_id").set_index("eeg_id")
    return test.assign(eeg_label_offset_seconds=0.0, spectrogram_label_offset_seconds=0.0)


@st.cache_data
def test_predictions(work_dir: str, submission_dir: str) -> dict[str, pd.DataFrame]:
    """{name: test predictions indexed by eeg_id}: each experiment's test_pred.csv and, last,
    the submitted blend (submission_dir/submission.csv)."""
    paths = {p.parent.name: p for p in sorted(Path(work_dir).glob("*/test_pred.csv"))}
    if (Path(submission_dir) / SUBMISSION_CSV).is_file():
        paths[SUBMISSION] = Path(submission_dir) / SUBMISSION_CSV
    return {name: pd.read_csv(p).drop_duplicates("eeg_id").set_index("eeg_id") for name, p in paths.items()}


@st.cache_data
def raw_window(data_dir: str, eeg_id: int, offset: float, split: str = "train") -> np.ndarray:
    return views.bipolar_window(data_dir, eeg_id, offset, split)


@st.cache_data
def spec_window(data_dir: str, spectrogram_id: int, offset: float, split: str = "train") -> np.ndarray:
    return views.spectrogram_window(data_dir, spectrogram_id, offset, split)


@st.cache_resource
def mel_module():
    from hms.signal.spectrogram import mel_module as build

    return build(config().mel)


@st.cache_resource
def fold_model(exp_dir: str, fold: int):
    from hms.report.explain import load_fold

    return load_fold(Path(exp_dir), fold, config().paths)


# ---------------------------------------------------------------- selection

def predictions(work_dir: str, submission_dir: str) -> dict[str, pd.DataFrame]:
    """{name: oof frame indexed by eeg_id} for the experiments and the ensemble."""
    preds = dict(experiment_oofs(work_dir))
    ens = ensemble_oof(work_dir, submission_dir)
    if ens is not None:
        preds[ENSEMBLE] = ens
    return {k: v.drop_duplicates("eeg_id").set_index("eeg_id") for k, v in preds.items()}


def row_kl(table: pd.DataFrame, pred: pd.DataFrame) -> pd.Series:
    """KL of one prediction source per eeg_id (NaN where it has no prediction)."""
    from hms.metric import kl_rows

    common = table.index.intersection(pred.index)
    kl = kl_rows(table.loc[common, list(schema.VOTE_COLUMNS)].to_numpy(),
                 pred.loc[common, list(schema.VOTE_COLUMNS)].to_numpy())
    return pd.Series(kl, index=common).reindex(table.index)


def sidebar_filters(table: pd.DataFrame, preds: dict[str, pd.DataFrame]) -> pd.DataFrame:
    st.sidebar.header("Filters")
    classes = st.sidebar.multiselect("majority class", list(schema.CLASSES), default=list(schema.CLASSES))
    lo, hi = int(table.total_votes.min()), int(table.total_votes.max())
    votes = st.sidebar.slider("vote count", lo, max(hi, lo + 1), (lo, max(hi, lo + 1)))
    keep = table.majority.isin(classes) & table.total_votes.between(*votes)
    if preds:
        first = next(iter(preds.values()))
        folds = sorted(first.fold.unique().tolist())
        chosen = st.sidebar.multiselect("fold", folds, default=folds)
        keep &= first.fold.reindex(table.index).isin(chosen)
        source = st.sidebar.selectbox("error of", list(preds), index=len(preds) - 1)
        kl = row_kl(table, preds[source])
        top = float(np.nanmax(kl)) if np.isfinite(kl).any() else 1.0
        err = st.sidebar.slider("KL error range", 0.0, round(top + 0.01, 2), (0.0, round(top + 0.01, 2)))
        keep &= kl.between(*err)
    return table[keep]


# ---------------------------------------------------------------- sections

def prediction_chart(frame: pd.DataFrame):
    """Grouped bars per class (class order as submitted, labels upright), one bar per source in
    the frame's column order: the votes first in grey, then each prediction."""
    import altair as alt

    sources = list(frame.columns)
    palette = [VOTES_COLOUR if name == VOTES else None for name in sources]
    rest = iter(PREDICTION_COLOURS * 4)
    palette = [c or next(rest) for c in palette]
    long = frame.rename_axis("class").reset_index().melt("class", var_name="source", value_name="share")
    return alt.Chart(long, height=260).mark_bar().encode(
        x=alt.X("class:N", sort=list(schema.CLASSES), axis=alt.Axis(labelAngle=0, title=None, labelFontSize=12)),
        xOffset=alt.XOffset("source:N", sort=sources),
        y=alt.Y("share:Q", scale=alt.Scale(domain=[0, 1]),
                title="vote share / probability" if VOTES in sources else "probability"),
        color=alt.Color("source:N", sort=sources, scale=alt.Scale(domain=sources, range=palette),
                        legend=alt.Legend(orient="top", title=None, labelFontSize=12)),
        tooltip=["source", "class", alt.Tooltip("share:Q", format=".3f")],
    )


def votes_section(row: pd.Series | None, eeg_id: int, preds: dict[str, pd.DataFrame]) -> None:
    """The votes (train) beside every prediction of eeg_id, and each prediction's KL to the votes."""
    st.subheader("Votes vs predictions" if row is not None else "Test predictions")
    frame = pd.DataFrame(index=list(schema.CLASSES))
    if row is not None:
        frame[VOTES] = row[list(schema.VOTE_COLUMNS)].to_numpy(np.float64)
    for name, pred in preds.items():
        if eeg_id in pred.index:
            frame[name] = pred.loc[eeg_id, list(schema.VOTE_COLUMNS)].to_numpy(np.float64)
    if frame.empty or not len(frame.columns):
        st.info("no predictions for this eeg_id")
        return
    st.altair_chart(prediction_chart(frame), width="stretch")
    if row is None:
        st.dataframe(frame.T.style.format("{:.3f}"))
    elif len(frame.columns) > 1:
        from hms.metric import kl_rows

        names = list(frame.columns[1:])  # the legend's order
        kl = kl_rows(np.repeat(frame[[VOTES]].T.to_numpy(), len(names), 0), frame[names].T.to_numpy())
        st.dataframe(pd.DataFrame([kl], index=["KL to the votes"], columns=names).style.format("{:.4f}"))


def eeg_section(signals: np.ndarray) -> np.ndarray:
    st.subheader("Bipolar EEG (double banana)")
    c1, c2, c3, c4 = st.columns([3, 1, 1, 1])
    t0, t1 = c1.slider("time window (s)", 0.0, float(schema.EEG_WINDOW_SECONDS), (15.0, 35.0), step=1.0)
    low = c2.number_input("band-pass low (Hz)", 0.1, 30.0, 0.5, step=0.5)
    high = c3.number_input("band-pass high (Hz)", 1.0, 70.0, 20.0, step=1.0)
    notch = c4.checkbox("60 Hz notch", value=True)
    band = (low, high) if low < high else None
    clean = views.filtered(signals, band, 60.0 if notch else None)
    show(views.plot_bipolar(clean, t_start=t0, t_end=max(t1, t0 + 1), fig_size=(12, 6)))
    return clean


def spectrogram_section(data_dir: str, row: pd.Series, clean: np.ndarray, split: str = "train") -> None:
    st.subheader("Spectrograms")
    left, right = st.columns(2)
    spec = spec_window(data_dir, int(row.spectrogram_id), float(row.spectrogram_label_offset_seconds), split)
    show(views.plot_kaggle_spectrogram(spec, f"Kaggle spectrogram {int(row.spectrogram_id)}"), left)
    with right, st.spinner("EEG mel panels (torch)"):  # drawn last: everything above is already on screen
        mel = views.mel_panels(clean, config().mel, mel_module())
        show(views.plot_mel(mel, config().mel), right)


def explain_section(work_dir: str, eeg_id: int, preds: dict[str, pd.DataFrame], split: str = "train") -> None:
    from hms.report import explain as X

    st.subheader("Model explanation (Grad-CAM / occlusion)")
    trained = [e for e in preds if e not in (ENSEMBLE, SUBMISSION) and (Path(work_dir) / e / "fold0" / "config.yaml").is_file()]
    refused = {e: X.unsupported_reason(X.saved_config(Path(work_dir) / e)) for e in trained}
    exps = [e for e in trained if not refused[e]]
    for e in trained:
        if refused[e]:
            st.caption(f"{e} is not offered: {refused[e]}")
    if not exps:
        st.info("no explainable trained experiment in the work dir")
        return
    wanted = st.query_params.get("exp")
    exp = st.selectbox("experiment", exps, index=exps.index(wanted) if wanted in exps else 0)
    # off by default (?explain=1 turns it on): loading a network costs seconds, the first view must stay fast
    if not st.checkbox("compute the explanation", value=st.query_params.get("explain") == "1"):
        return
    exp_dir = Path(work_dir) / exp
    fold = X.fold_of(exp_dir, eeg_id)
    cfg, net = fold_model(str(exp_dir), fold)
    result = X.explain_sample(cfg, net, X.sample_for(cfg, eeg_id, split))
    fs = schema.SAMPLING_RATE / int(cfg.input.downsample)
    offset = (schema.EEG_WINDOW_SECONDS - float(cfg.input.signal_seconds)) / 2
    show(X.figure(result, f"{exp} fold {fold}: {result.kind} for '{schema.CLASSES[result.target_class]}'",
                  fs, offset, float(cfg.signal.scale)))


def pick_eeg(options: list[int]) -> int:
    wanted = st.query_params.get("eeg_id")  # ?eeg_id=...: shareable links to one recording
    start = options.index(int(wanted)) if wanted and wanted.isdigit() and int(wanted) in options else 0
    return st.selectbox("eeg_id", options, index=start)


def recording_sections(data_dir: str, work_dir: str, eeg_id: int, row: pd.Series,
                       preds: dict[str, pd.DataFrame], split: str) -> None:
    votes_section(row if split == "train" else None, eeg_id, preds)
    clean = eeg_section(raw_window(data_dir, int(eeg_id), float(row.eeg_label_offset_seconds), split))
    spectrogram_section(data_dir, row, clean, split)
    explain_section(work_dir, int(eeg_id), preds, split)


def train_view(data_dir: str, work_dir: str, submission_dir: str) -> None:
    table = eeg_table(data_dir)
    preds = predictions(work_dir, submission_dir)
    shown = sidebar_filters(table, preds)
    st.caption(f"dataset {data_dir} · work dir {work_dir} · {len(shown)} of {len(table)} train EEGs match "
               "the filters")
    if shown.empty:
        st.warning("no eeg_id matches the filters")
        return
    eeg_id = pick_eeg(shown.index.tolist())
    row = table.loc[eeg_id]
    st.markdown(f"**eeg_id {eeg_id}** · patient {int(row.patient_id)} · majority **{row.majority}** · "
                f"{int(row.total_votes)} votes · window at {row.eeg_label_offset_seconds:g} s")
    recording_sections(data_dir, work_dir, eeg_id, row, preds, "train")


def test_view(data_dir: str, work_dir: str, submission_dir: str) -> None:
    """Test recordings (no votes): their 50 s EEG, spectrogram and every test prediction, the
    submitted one last."""
    table = test_table(data_dir)
    preds = test_predictions(work_dir, submission_dir)
    shown = table
    if SUBMISSION in preds:
        sub = preds[SUBMISSION].reindex(table.index)
        predicted = pd.Series(np.array(schema.CLASSES)[sub[list(schema.VOTE_COLUMNS)].fillna(0).to_numpy()
                                                        .argmax(1)], index=table.index)
        st.sidebar.header("Filters")
        classes = st.sidebar.multiselect("submitted class (argmax)", list(schema.CLASSES), default=list(schema.CLASSES))
        shown = table[predicted.isin(classes)]
    where = f"{submission_dir}/{SUBMISSION_CSV}" if SUBMISSION in preds else f"no {SUBMISSION_CSV} in {submission_dir}"
    st.caption(f"dataset {data_dir} · {where} · {len(shown)} of {len(table)} test EEGs shown")
    if shown.empty:
        st.warning("no eeg_id matches the filters")
        return
    eeg_id = pick_eeg(shown.index.tolist())
    row = table.loc[eeg_id]
    st.markdown(f"**test eeg_id {eeg_id}** · patient {int(row.patient_id)} · spectrogram {int(row.spectrogram_id)}")
    recording_sections(data_dir, work_dir, eeg_id, row, preds, "test")


def main() -> None:
    st.set_page_config(page_title=TITLE, layout="wide")
    st.title(TITLE)
    warm_torch()
    cfg = config()
    from hms.config import data_dir as data_dir_of

    data_dir, work_dir = str(data_dir_of(cfg)), str(cfg.paths.work_dir)
    if not (Path(data_dir) / schema.TRAIN_CSV).is_file():
        st.error(f"no dataset at {data_dir}: run `hms run` (embedded dataset) or set HMS_DATA_DIR")
        return
    wanted = st.query_params.get("split", "train")  # ?split=test links to the test recordings
    split = st.sidebar.radio("recordings", SPLITS, index=SPLITS.index(wanted) if wanted in SPLITS else 0,
                             horizontal=True)
    view = train_view if split == "train" else test_view
    view(data_dir, work_dir, str(cfg.paths.submission_dir))


main()
