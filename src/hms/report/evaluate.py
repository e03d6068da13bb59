"""`hms evaluate`: what an experiment's out-of-fold predictions get right and wrong.

Per-class ROC-AUC / PR-AUC against the majority vote (one-vs-rest), a confusion matrix of
argmax prediction vs argmax target, reliability diagrams, KL by vote bucket and by majority
class and, on a simulated dataset, test KL next to the oracle (the simulator's p*)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

from hms.data import labels, schema
from hms.metric import kl_rows
from hms.report import views

TARGET_COLUMNS = [f"{c}_target" for c in schema.CLASSES]
N_BINS = 10


def load_oof(exp_dir: Path) -> pd.DataFrame:
    path = Path(exp_dir) / "oof.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no OOF predictions (train every fold of the experiment first)")
    return pd.read_csv(path)


def arrays(oof: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities, soft targets, total votes) of an oof.csv frame."""
    return (oof[list(schema.VOTE_COLUMNS)].to_numpy(np.float64), oof[TARGET_COLUMNS].to_numpy(np.float64),
            oof[labels.TOTAL_VOTES].to_numpy())


def per_class_auc(probs: np.ndarray, target: np.ndarray) -> dict:
    """One-vs-rest ROC-AUC and PR-AUC (average precision) of each class against the majority
    vote; NaN where a class is never or always the majority (AUC undefined)."""
    y = views.majority_class(target)
    out = {}
    for k, cls in enumerate(schema.CLASSES):
        pos = y == k
        ok = 0 < pos.sum() < len(y)
        out[cls] = {"roc_auc": float(roc_auc_score(pos, probs[:, k])) if ok else float("nan"),
                    "pr_auc": float(average_precision_score(pos, probs[:, k])) if ok else float("nan"),
                    "n_majority": int(pos.sum())}
    return out


def reliability(probs: np.ndarray, target: np.ndarray, n_bins: int = N_BINS) -> dict:
    """Per class, equal-width bins of the predicted probability: mean prediction vs mean soft
    target (the observed vote share) and row count. A calibrated model sits on the diagonal."""
    edges = np.linspace(0, 1, n_bins + 1)
    out = {}
    for k, cls in enumerate(schema.CLASSES):
        idx = np.clip(np.digitize(probs[:, k], edges[1:-1]), 0, n_bins - 1)
        rows = []
        for b in range(n_bins):
            m = idx == b
            if m.any():
                rows.append({"bin": b, "pred": float(probs[m, k].mean()), "observed": float(target[m, k].mean()),
                             "n": int(m.sum())})
        out[cls] = rows
    return out


def kl_breakdown(probs: np.ndarray, target: np.ndarray, votes: np.ndarray) -> tuple[dict, dict]:
    """Mean KL per vote bucket and per majority class (with row counts)."""
    kl = kl_rows(target, probs)
    frame = pd.DataFrame({"kl": kl, "bucket": views.vote_bucket(votes),
                          "cls": np.array(schema.CLASSES)[views.majority_class(target)]})
    by_bucket = frame.groupby("bucket", observed=False).kl.agg(["mean", "size"])
    by_class = frame.groupby("cls").kl.agg(["mean", "size"]).reindex(list(schema.CLASSES))

    def as_dict(t):
        return {str(i): {"kl": float(r["mean"]) if r["size"] else float("nan"), "n": int(r["size"] or 0)}
                for i, r in t.iterrows()}

    return as_dict(by_bucket), as_dict(by_class.fillna({"size": 0}))


def test_vs_oracle(exp_dir: Path, data_dir: Path | None, target: np.ndarray, votes: np.ndarray,
                   min_votes: int) -> dict | None:
    """Test KL of test_pred.csv, the prior and the oracle on the simulator's answers; None on
    real data (no answers) or when the experiment has no test predictions."""
    from hms.inference.summary import load_answers, test_scores

    answers = load_answers(data_dir) if data_dir else None
    pred_path = Path(exp_dir) / "test_pred.csv"
    if answers is None or not pred_path.is_file():
        return None
    summary = Path(exp_dir) / "summary.json"
    if summary.is_file() and "prior" in json.loads(summary.read_text()):
        prior = np.asarray(json.loads(summary.read_text())["prior"])  # labels.prior, as the run's table
    else:  # older experiments: the same definition on the OOF rows
        high = votes >= min_votes
        prior = target[high if high.any() else slice(None)].mean(0)
    return test_scores(pd.read_csv(pred_path), answers, prior / prior.sum())


# ---------------------------------------------------------------- figures

def _fig_confusion(cm: np.ndarray):
    fig = views.new_figure(5.5, 4.5)
    ax = fig.add_subplot()
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)  # row-normalised: recall on the diagonal
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), n in np.ndenumerate(cm):
        ax.text(j, i, str(n), ha="center", va="center", fontsize=8, color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(schema.N_CLASSES), schema.CLASSES, fontsize=8)
    ax.set_yticks(range(schema.N_CLASSES), schema.CLASSES)
    ax.set(xlabel="predicted (argmax)", ylabel="majority vote (argmax target)", title="confusion (counts; colour = row share)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return fig


def _fig_reliability(rel: dict):
    fig = views.new_figure(10, 6)
    for ax, cls in zip(fig.subplots(2, 3).flat, schema.CLASSES):
        pts = pd.DataFrame(rel[cls])
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
        if len(pts):
            ax.plot(pts.pred, pts.observed, marker="o", color="tab:blue")
            # rows per bin along the top, at the bin's centre: readable where the points crowd together
            for r in pts.itertuples():
                ax.text((r.bin + 0.5) / N_BINS, 1.0, str(r.n), ha="center", va="bottom", fontsize=8,
                        color="0.2", transform=ax.get_xaxis_transform())
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted", ylabel="mean vote share")
        ax.set_title(cls, fontsize=10, pad=14)
    fig.suptitle("reliability per class (numbers on top: rows in each 0.1-wide bin of the prediction)", fontsize=10)
    return fig


def _fig_roc_pr(probs: np.ndarray, target: np.ndarray, aucs: dict):
    from sklearn.metrics import precision_recall_curve, roc_curve

    y = views.majority_class(target)
    fig = views.new_figure(11, 4.5)
    ax_roc, ax_pr = fig.subplots(1, 2)
    for k, cls in enumerate(schema.CLASSES):
        if np.isnan(aucs[cls]["roc_auc"]):
            continue
        fpr, tpr, _ = roc_curve(y == k, probs[:, k])
        prec, rec, _ = precision_recall_curve(y == k, probs[:, k])
        ax_roc.plot(fpr, tpr, label=f"{cls} (AUC {aucs[cls]['roc_auc']:.3f})")
        ax_pr.plot(rec, prec, label=f"{cls} (AP {aucs[cls]['pr_auc']:.3f})")
    ax_roc.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (one-vs-rest, majority vote)")
    ax_pr.set(xlabel="recall", ylabel="precision", title="precision-recall")
    ax_roc.legend(fontsize=8)
    ax_pr.legend(fontsize=8)
    return fig


def _fig_kl(by_bucket: dict, by_class: dict):
    fig = views.new_figure(10, 3.8)
    for ax, table, title in zip(fig.subplots(1, 2), (by_bucket, by_class), ("by vote bucket", "by majority class")):
        names = list(table)
        ax.bar(names, [table[n]["kl"] for n in names], color="tab:purple")
        for i, n in enumerate(names):
            ax.annotate(f"n={table[n]['n']}", (i, 0), ha="center", va="bottom", fontsize=7, color="white")
        ax.set(title=f"mean KL {title}", ylabel="KL")
    return fig


# ---------------------------------------------------------------- entry point

def evaluate_experiment(exp_dir: Path, data_dir: Path | None = None, min_votes: int = 10) -> dict:
    """Write exp_dir/eval/{evaluation.json, *.png}; returns the evaluation dict."""
    exp_dir = Path(exp_dir)
    out = exp_dir / "eval"
    probs, target, votes = arrays(load_oof(exp_dir))
    y, pred = views.majority_class(target), views.majority_class(probs)
    aucs = per_class_auc(probs, target)
    cm = confusion_matrix(y, pred, labels=list(range(schema.N_CLASSES)))
    rel = reliability(probs, target)
    by_bucket, by_class = kl_breakdown(probs, target, votes)
    high = votes >= min_votes
    result = {
        "experiment": exp_dir.name, "n_rows": int(len(y)), "n_high": int(high.sum()),
        "oof_kl": float(kl_rows(target, probs).mean()),
        "oof_kl_high": float(kl_rows(target[high], probs[high]).mean()) if high.any() else float("nan"),
        "accuracy": float((y == pred).mean()), "per_class": aucs, "confusion": cm.tolist(),
        "confusion_labels": list(schema.CLASSES), "reliability": rel,
        "kl_by_votes": by_bucket, "kl_by_class": by_class,
        "test": test_vs_oracle(exp_dir, data_dir, target, votes, min_votes),
    }
    figures = {"roc_pr.png": _fig_roc_pr(probs, target, aucs), "confusion.png": _fig_confusion(cm),
               "reliability.png": _fig_reliability(rel), "kl_breakdown.png": _fig_kl(by_bucket, by_class)}
    for name, fig in figures.items():
        views.save(fig, out / name)
    result["figures"] = sorted(figures)
    # NaN (an undefined AUC) is written as null so that the file is strict JSON
    (out / "evaluation.json").write_text(json.dumps(_nan_to_none(result), indent=2))
    return result


def _nan_to_none(obj):
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return None if isinstance(obj, float) and not np.isfinite(obj) else obj


def table(result: dict) -> str:
    """The short per-class table `hms evaluate` prints."""
    rows = pd.DataFrame(result["per_class"]).T
    rows["kl_majority"] = [result["kl_by_class"][c]["kl"] for c in rows.index]
    head = (f"{result['experiment']}: OOF KL {result['oof_kl']:.4f} (high-vote {result['oof_kl_high']:.4f}, "
            f"n={result['n_high']}), accuracy {result['accuracy']:.3f}")
    if result["test"]:
        t = result["test"]
        head += f"\ntest KL {t['test_kl']:.4f}  prior {t['prior_kl']:.4f}  oracle {t['oracle_kl']:.4f}"
    rows["n_majority"] = rows["n_majority"].astype(int)  # a count, not 454.000
    return head + "\n" + rows.to_string(float_format=lambda x: f"{x:.3f}", na_rep="-")
