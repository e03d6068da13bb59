"""Pseudo-label teachers (labels.pseudo.from): the low-vote rows' targets mixed with other
experiments' predictions (8th place: 0.1 votes + 0.9 teachers)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from hms import config as C
from hms.cache.prepare import prepare
from hms.cache.store import open_cache
from hms.data import labels, schema
from hms.inputs.dataset import make_dataset
from hms.inputs.loaders import make_loader
from hms.models.network import load_fold_network
from hms.inference.batch import predict_probs
from hms.models.runs import RunSpec, pseudo_teachers
from hms.models.workdir import is_complete


def pseudo_labelled(rows: pd.DataFrame, cfg: DictConfig, run: RunSpec, device) -> pd.DataFrame:
    """rows with the low-vote rows' targets mixed with the predictions of the experiments in
    labels.pseudo.from. A CV run for fold k asks each teacher's own fold-k model, which never
    saw fold k, so nothing of the validation fold's labels reaches the student through its
    targets (teachers' OOF predictions would carry it: the other folds' models trained on fold
    k). A full fit, with nothing held out, takes the teachers' OOF. Validation always keeps the
    experts' votes."""
    sources = pseudo_teachers(cfg)
    if not sources:
        return rows
    predictions = [teacher_predictions(C.work_dir(cfg) / name, rows, cfg, run, device) for name in sources]
    return labels.mix_pseudo_targets(rows, predictions, float(cfg.labels.pseudo.weight), cfg.labels.min_votes_high)


def teacher_predictions(teacher: Path, rows: pd.DataFrame, cfg: DictConfig, run: RunSpec, device) -> pd.DataFrame:
    """A teacher's predictions for the low-vote items of rows (eeg_id, <class>_target, votes):
    its fold-k model's for a fold-k run, its OOF for a full fit."""
    if run.is_full:
        path = teacher / "oof.csv"
        if not path.is_file():
            raise FileNotFoundError(f"labels.pseudo.from: {path} not found; train {teacher.name!r} first "
                                    "(list it before this experiment)")
        return pd.read_csv(path)
    fold_dir = teacher / f"fold{run.fold}"
    if not is_complete(fold_dir):
        raise FileNotFoundError(f"labels.pseudo.from: {fold_dir} is not trained; train {teacher.name!r} first "
                                "(list it before this experiment)")
    teacher_cfg, net = load_fold_network(fold_dir, {}, device)
    low = rows[~labels.high_vote_mask(rows, cfg.labels.min_votes_high)]
    ds = make_dataset(teacher_cfg, low, teacher_caches(teacher_cfg, cfg), "eval")
    probs = predict_probs(net, make_loader(ds, cfg, shuffle=False), device,
                          tta_lr_swap=bool(teacher_cfg.infer.tta_lr_swap), amp=device.type == "cuda")
    out = ds.items[["eeg_id"]].copy()
    out[[f"{c}_target" for c in schema.CLASSES]] = ds.targets
    out[list(schema.VOTE_COLUMNS)] = probs
    return out.reset_index(drop=True)


def teacher_caches(teacher_cfg: DictConfig, cfg: DictConfig) -> tuple:
    """The train caches the teacher's own config reads (its montage, signal extras and
    spectrogram settings, which may differ from the student's), in the student's data and work
    dirs: already built when the teacher trained there, else built now (under the caches' lock)."""
    where = OmegaConf.merge(teacher_cfg, {"paths": cfg.paths, "validate": cfg.validate})
    dirs = prepare(where, ("train",), progress=False)["train"]
    return open_cache(dirs["eeg"]), open_cache(dirs["spec"])
