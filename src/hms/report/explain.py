"""`hms explain`: why a trained fold predicts what it predicts for one eeg_id.

2D models (timm2d on the ImageBuilder image, timm_mel on its own mel image): Grad-CAM on
core.gradcam_target_layer(), upsampled to the input image. 1D models: occlusion by time
(fade every signal to 0 over one 2 s block of the model's cleaned input, predict again; the
importance of the block for class k is p_k - p_k(occluded), and KL(p || p_occluded), the
class-free change of the whole prediction, is saved beside it). The input is
built from the parquet files with the experiment's own signal settings (no cache is read or
written), so a finished run directory can be explained without touching it."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from hms.data import schema
from hms.report import views


@dataclass
class Explanation:
    kind: str                 # 'gradcam' or 'occlusion'
    probs: np.ndarray         # (6,) prediction
    target_class: int         # the class explained (the predicted one unless asked)
    importance: np.ndarray    # gradcam: (H, W) in [0, 1]; occlusion: (n_windows,) drop in p(target class)
    image: np.ndarray | None  # gradcam: (C, H, W) input image
    signal: np.ndarray | None  # occlusion: (S, T) model input signals
    times: np.ndarray | None  # occlusion: window centres, seconds in the 50 s window
    kl: np.ndarray | None = None  # occlusion: (n_windows,) KL(p || p_occluded), class-free


class ExplainError(ValueError):
    """An experiment or eeg_id that `hms explain` cannot explain (a user error, one line)."""


# ---------------------------------------------------------------- loading

def unsupported_reason(cfg: DictConfig) -> str | None:
    """Why a trained experiment cannot be explained, or None: explain rebuilds the 16
    double-banana pairs from the parquet files, not the extra signals some models read."""
    extras = list(cfg.signal.extras or [])
    if extras:
        return (f"it reads signal.extras {extras} beside the 16 double-banana pairs; "
                "explain rebuilds only those 16")
    return None


def saved_config(exp_dir: Path, fold: int = 0) -> DictConfig:
    from hms.config import load_run_config

    return load_run_config(Path(exp_dir) / f"fold{fold}")

def fold_of(exp_dir: Path, eeg_id: int) -> int:
    """The fold that held eeg_id out (its honest, out-of-fold model); fold 0 when unknown."""
    oof = Path(exp_dir) / "oof.csv"
    if oof.is_file():
        folds = pd.read_csv(oof, usecols=["eeg_id", "fold"])
        hit = folds.fold[folds.eeg_id == int(eeg_id)]
        if len(hit):
            return int(hit.iloc[0])
    return 0


def load_fold(exp_dir: Path, fold: int, paths: DictConfig | None = None):
    """(resolved config, network in eval mode) of one trained fold. `paths` (the caller's
    paths section) replaces the one saved at training time: the run may have moved."""
    from hms.models.network import load_fold_network

    return load_fold_network(Path(exp_dir) / f"fold{fold}", {"paths": paths} if paths is not None else {})


def window_row(cfg: DictConfig, eeg_id: int, split: str = "train") -> pd.Series:
    """The row the evaluation dataset uses for eeg_id: its middle labelled sub-window
    (train; the first vote vector's) or the test row (offsets 0)."""
    from hms.data import io, labels
    from hms.config import data_dir

    if split == "test":
        test = io.read_test_csv(data_dir(cfg) / schema.TEST_CSV)
        rows = test[test.eeg_id == int(eeg_id)].assign(eeg_label_offset_seconds=0.0,
                                                       spectrogram_label_offset_seconds=0.0)
    else:
        train = io.read_train_csv(data_dir(cfg) / schema.TRAIN_CSV)
        rows = labels.dedup_per_eeg(labels.add_targets(train[train.eeg_id == int(eeg_id)]))
    if rows.empty:
        other = "test" if split == "train" else "train"
        hint = f" (it is a {other} eeg_id: add --split {other})" if _in_table(cfg, eeg_id, other) else ""
        raise ExplainError(f"eeg_id {eeg_id} is not in the {split} table{hint}")
    return rows.iloc[0]


def _in_table(cfg: DictConfig, eeg_id: int, split: str) -> bool:
    from hms.config import data_dir

    name = schema.TEST_CSV if split == "test" else schema.TRAIN_CSV
    path = data_dir(cfg) / name
    return path.is_file() and int(eeg_id) in set(pd.read_csv(path, usecols=["eeg_id"]).eeg_id)


def sample_for(cfg: DictConfig, eeg_id: int, split: str = "train") -> dict:
    """A batch (B=1) for eeg_id built from the parquet files as HMSDataset builds it from the
    caches (the raw 50 s window, NaN filled; up to the caches' float16 rounding): no cache is
    needed or written, so any run directory can be explained read-only."""
    from hms.config import data_dir
    from hms.signal import filters

    row = window_row(cfg, eeg_id, split)
    raw = views.bipolar_window(data_dir(cfg), int(row.eeg_id), float(row.eeg_label_offset_seconds), split)
    if unsupported_reason(cfg):
        raise ExplainError(f"cannot explain this experiment: {unsupported_reason(cfg)}")
    signal = filters.prepare_window(raw, cfg.signal)
    spec = views.spectrogram_window(data_dir(cfg), int(row.spectrogram_id), float(row.spectrogram_label_offset_seconds),
                                    split, tuple(cfg.kaggle_spec.log_clip))
    batch = {"signal": torch.from_numpy(np.ascontiguousarray(signal))[None],
             "spec": torch.from_numpy(spec)[None]}
    if schema.VOTE_COLUMNS[0] in row:
        batch["target"] = torch.tensor(row[list(schema.VOTE_COLUMNS)].to_numpy(np.float32))[None]
    return batch


# ---------------------------------------------------------------- Grad-CAM

def image_and_head(net) -> tuple:
    """For a 2D network: (batch -> image function, image -> logits module)."""
    if net.input_kind == "image":
        return net.builder, net.core
    if getattr(net.core, "builds_own_image", False):  # timm_mel, eeg_image: the image is made inside the model
        return (lambda batch: net.core.signals_to_image(batch["signal"])), net.core.net
    return None, None


def gradcam(head: torch.nn.Module, layer: torch.nn.Module, image: torch.Tensor,
            target_class: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Grad-CAM of one image (1, C, H, W): ReLU(sum_c mean(dS/dA_c) * A_c) at `layer`,
    bilinearly upsampled to (H, W) and scaled to [0, 1]. Returns (map, probs, class)."""
    store = {}
    hook = layer.register_forward_hook(lambda m, i, o: store.__setitem__("act", o))
    try:
        with torch.enable_grad():
            logits = head(image)
            probs = torch.softmax(logits.detach(), 1)[0]
            k = int(probs.argmax()) if target_class is None else int(target_class)
            act = store["act"]
            grad, = torch.autograd.grad(logits[0, k], act)
    finally:
        hook.remove()
    weights = grad.mean(dim=(2, 3), keepdim=True)  # importance of each feature channel
    cam = (weights * act).sum(1, keepdim=True).detach()
    if cam.max() <= 0:  # no channel votes for the class: show where it votes against, not a blank
        cam = -cam
    cam = F.interpolate(F.relu(cam), size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    cam = cam - cam.min()
    return (cam / (cam.max() + 1e-12)).numpy(), probs.numpy().astype(np.float64), k


# ---------------------------------------------------------------- occlusion (1D)

OCCLUSION_TAPER_SECONDS = 0.5  # raised-cosine ramps at a block's ends (see occlusion_masks)


def occlusion_masks(n: int, win: int, taper: int) -> tuple[torch.Tensor, np.ndarray]:
    """(n_blocks, n) multipliers, 0 over each consecutive block of `win` samples and 1 far from
    it, with raised-cosine ramps of `taper` samples centred on the block's inner edges (none at
    the window's own ends), and the block starts. A hard 0/1 mask puts two steps into a signal
    the model only ever saw band-passed: the network answers the steps, not the missing stretch."""
    starts = np.arange(0, n, win)
    t = np.arange(n)
    masks = np.ones((len(starts), n))
    for i, s in enumerate(starts):
        e = min(n, s + win)
        inside = np.ones(n)
        if taper > 0:
            ramp = 0.5 - 0.5 * np.cos(np.pi * np.clip((t - (s - taper / 2)) / taper, 0, 1))  # 0 -> 1 at s
            fall = 0.5 + 0.5 * np.cos(np.pi * np.clip((t - (e - taper / 2)) / taper, 0, 1))  # 1 -> 0 at e
            inside = (ramp if s > 0 else 1.0) * (fall if e < n else 1.0)
        else:
            inside = ((t >= s) & (t < e)).astype(float)
        masks[i] = 1 - inside
    return torch.from_numpy(masks).float(), starts


def occlusion(net, signal: torch.Tensor, window_seconds: float, fs: float, batch_size: int = 16,
              spec: torch.Tensor | None = None, taper_seconds: float = OCCLUSION_TAPER_SECONDS) -> dict:
    """Occlusion by time: for each consecutive block of window_seconds, replace every signal
    there by 0 (the band-passed signals' mean), fading in and out over taper_seconds, and
    predict again. signal: (1, S, T), the model's input (cleaned, cropped, decimated).
    Returns {'probs' (6,), 'occluded' (n_blocks, 6) probabilities without each block,
    'kl' (n_blocks,) KL(p || p_occluded): how much the whole prediction changes, class-free,
    'centres' (n_blocks,) block centres in seconds of the model input}.
    spec (1, 4, 100, 300): the Kaggle panels, for a network with a context branch (whose logits
    join every prediction here, unoccluded)."""
    n = signal.shape[-1]
    win = max(1, int(round(window_seconds * fs)))
    masks, starts = occlusion_masks(n, win, int(round(taper_seconds * fs)))

    def probs(x):
        return torch.softmax(net.logits(x, None if spec is None else spec.expand(len(x), -1, -1, -1)), 1)

    with torch.no_grad():
        p = probs(signal)
        q = torch.cat([probs(signal * masks[j: j + batch_size, None, :])
                       for j in range(0, len(starts), batch_size)])
    kl = (p * (p.clamp_min(1e-12).log() - q.clamp_min(1e-12).log())).sum(1)
    return {"probs": p[0].double().numpy(), "occluded": q.double().numpy(), "kl": kl.double().numpy(),
            "centres": (starts + np.minimum(win, n - starts) / 2) / fs}


# ---------------------------------------------------------------- entry points

def explain_sample(cfg: DictConfig, net, batch: dict, target_class: int | None = None,
                   window_seconds: float = 2.0) -> Explanation:
    """Grad-CAM for 2D networks (of the image model: a context branch's logits are not in the
    map), occlusion for 1D ones (with the branch's logits in every prediction), on one batched item."""
    to_image, head = image_and_head(net)
    if to_image is not None:
        with torch.no_grad():
            image = to_image(batch)
        cam, probs, k = gradcam(head, net.core.gradcam_target_layer(), image, target_class)
        return Explanation("gradcam", probs, k, cam, image[0].numpy(), None, None)
    with torch.no_grad():
        signal = net.model_signal(batch["signal"])
    # the model input is centre-cropped and downsampled: place it back in the 50 s window
    fs = schema.SAMPLING_RATE / int(cfg.input.downsample)
    spec = batch.get("spec")
    occ = occlusion(net, signal, window_seconds, fs, spec=None if spec is None else spec.float())
    offset = (schema.EEG_WINDOW_SECONDS - float(cfg.input.signal_seconds)) / 2
    k = int(occ["probs"].argmax()) if target_class is None else int(target_class)
    drop = occ["probs"][k] - occ["occluded"][:, k]  # > 0: the block argued for class k
    return Explanation("occlusion", occ["probs"], k, drop, None, signal[0].numpy(), occ["centres"] + offset,
                       occ["kl"])


def figure(exp: Explanation, title: str, fs: float | None = None, offset: float = 0.0, uv_per_unit: float = 1.0):
    """Grad-CAM: each image channel with the map overlaid; occlusion: the importance curve
    above the model's input traces (times uv_per_unit, the config's signal.scale: in µV)."""
    if exp.kind == "gradcam":
        n = exp.image.shape[0]
        fig = views.new_figure(min(4 * n, 16), 3.2 if n > 1 else 5)
        axes = np.atleast_1d(fig.subplots(1, n))
        for c, ax in enumerate(axes):
            ax.imshow(exp.image[c], cmap="gray", aspect="auto", origin="upper")
            ax.imshow(exp.importance, cmap="jet", alpha=0.4, aspect="auto", origin="upper")
            ax.set_title(f"channel {c}", fontsize=8)
            ax.set_xticks([]), ax.set_yticks([])
        fig.suptitle(title, fontsize=10)
        return fig
    fig = views.new_figure(11, 8.5)
    ax_imp, ax_sig = fig.subplots(2, 1, sharex=True, height_ratios=[1.3, 4])
    width = exp.times[1] - exp.times[0] if len(exp.times) > 1 else 1.0
    cls = schema.CLASSES[exp.target_class]
    colours = np.where(exp.importance >= 0, "tab:red", "tab:blue")
    ax_imp.bar(exp.times, exp.importance, width=width * 0.95, color=colours)
    ax_imp.axhline(0, color="0.3", lw=0.6)
    ax_imp.set_ylabel(f"drop in p({cls})", fontsize=9)
    ax_imp.set_title(title, fontsize=10)
    ax_imp.text(0.0, -0.02, f"Each {width:g} s block of all signals faded to 0 ({OCCLUSION_TAPER_SECONDS:g} s cosine ramps) and predicted "
                f"again: red, the block argued for {cls}; blue, against.", transform=ax_imp.transAxes,
                va="top", fontsize=8, color="0.3")
    views.plot_bipolar(exp.signal[: len(schema.BIPOLAR_PAIRS)] * uv_per_unit, fs=fs, window_start=offset, ax=ax_sig)
    return fig


def explain(exp_dir: Path, eeg_id: int, fold: int | None = None, paths: DictConfig | None = None,
            target_class: int | None = None, out_dir: Path | None = None, split: str = "train") -> dict:
    """Explain eeg_id with the fold that held it out; write PNG + JSON into out_dir
    (default exp_dir/explain). Returns the JSON dict (with 'explanation' and 'figure' objects)."""
    exp_dir = Path(exp_dir)
    fold = fold_of(exp_dir, eeg_id) if fold is None else int(fold)
    if not (exp_dir / f"fold{fold}" / "config.yaml").is_file():
        raise ExplainError(f"no trained fold {fold} in {exp_dir}")
    reason = unsupported_reason(saved_config(exp_dir, fold))
    if reason:
        raise ExplainError(f"cannot explain {exp_dir.name}: {reason}")
    cfg, net = load_fold(exp_dir, fold, paths)
    batch = sample_for(cfg, eeg_id, split)
    exp = explain_sample(cfg, net, batch, target_class)
    cls = schema.CLASSES[exp.target_class]
    fs = schema.SAMPLING_RATE / int(cfg.input.downsample)
    offset = (schema.EEG_WINDOW_SECONDS - float(cfg.input.signal_seconds)) / 2
    fig = figure(exp, f"{exp_dir.name} fold {fold}, eeg_id {eeg_id}: {exp.kind} for '{cls}' "
                      f"(p={exp.probs[exp.target_class]:.2f})", fs, offset, float(cfg.signal.scale))
    out_dir = Path(out_dir or exp_dir / "explain")
    stem = f"{eeg_id}_fold{fold}_{exp.kind}_{cls}"  # one file per explained class
    views.save(fig, out_dir / f"{stem}.png", dpi=90)
    info = {"experiment": exp_dir.name, "fold": fold, "eeg_id": int(eeg_id), "method": exp.kind,
            "explained_class": cls, "prediction": dict(zip(schema.CLASSES, exp.probs.round(6).tolist())),
            "target": dict(zip(schema.CLASSES, batch["target"][0].double().numpy().round(6).tolist()))
            if "target" in batch else None, "png": str(out_dir / f"{stem}.png")}
    if exp.kind == "occlusion":
        info["occlusion"] = {"centres_s": exp.times.round(3).tolist(), f"drop_in_p_{cls}": exp.importance.tolist(),
                             "kl_change": exp.kl.tolist()}
    (out_dir / f"{stem}.json").write_text(json.dumps(info, indent=2))
    return {**info, "explanation": exp, "figure": fig}
