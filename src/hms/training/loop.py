"""`hms train`: every run of one experiment (its CV folds, their extra seeds, full-data fits:
see hms.training.runs).

Per run, in $HMS_WORK_DIR/<exp>/<run>/: best.pt (plain state_dict, loads with
weights_only=True), last.pt (resume state), metrics.json, log.csv, config.yaml, val_pred.csv,
test_pred.csv (full fits: no val_pred.csv). Per experiment: oof.csv (one row per eeg_id and
vote vector, each eeg_id in exactly one fold, a fold's seeds averaged) and test_pred.csv (mean
over every run, in test.csv order).
"""
from __future__ import annotations

import math
import os
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from hms import config as C
from hms.training.augment import augment_batch
from hms.cache.store import open_cache
from hms.data import labels, schema
from hms.training.dataset import HMSDataset, make_loader, training_set
from hms.training.predict import predict_probs, predict_test, to_device
from hms.training.runs import RunSpec, cv_runs, full_fit_epochs, full_runs, predicting_runs
from hms.training.tracking import EpochLogger
from hms.training.losses import kl_loss
from hms.metric import kl_score
from hms.training.network import build_network, load_fold_network
from hms.models.factory import fitted_once, uses_kaggle_spec
from hms.data.tables import load_train
from hms.cache.prepare import prepare
from hms.utils import atomic_path, atomic_to_csv, atomic_write_json, seed_everything


def experiment_name(cfg: DictConfig, config_path: str | None = None) -> str:
    if cfg.get("name"):
        return str(cfg.name)
    if config_path:
        return Path(config_path).stem
    raise ValueError("the experiment has no name: set `name:` in its config")


def exp_dir(cfg: DictConfig) -> Path:
    return C.work_dir(cfg) / str(cfg.name)


def is_complete(fold_dir: Path) -> bool:
    metrics = fold_dir / "metrics.json"
    return metrics.is_file() and '"complete": true' in metrics.read_text()


# ---------------------------------------------------------------- distributed (torchrun)

def init_distributed(timeout_minutes: float = 120.0) -> tuple[int, int, int]:
    """(rank, world size, local rank); joins the process group when launched by torchrun.
    The timeout covers rank 0 building the caches while the others wait in a barrier (a first
    real `hms prepare` takes longer than NCCL's default 10 minutes)."""
    world, local_rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)  # before any collective: each rank on its own GPU
        dist.init_process_group(backend, timeout=timedelta(minutes=float(timeout_minutes)))
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"[hms] DDP: {world} processes, {backend}, collective timeout {timeout_minutes:g} min", flush=True)
    return int(os.environ.get("RANK", 0)), world, local_rank


def broadcast_from_main(obj):
    """Rank 0's value on every rank: decisions (scores, early stopping, best epoch) are taken
    once, so ranks can never disagree and hang or desync."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


# ---------------------------------------------------------------- data

def stage_rows(train: pd.DataFrame, stage: DictConfig, min_votes: int) -> pd.DataFrame:
    if stage.rows == "all":
        return train
    if stage.rows == "high":
        return train[labels.high_vote_mask(train, min_votes)]
    raise ValueError(f"train.stages[].rows must be 'all' or 'high', got {stage.rows!r}")


def low_vote_weight_at(stage, epoch: int, default: float) -> float:
    """The stage's weight for rows under min_votes at this epoch: a number, or [start, end]
    decayed linearly over the stage's epochs (3rd place: 0.8 -> 0.2)."""
    w = stage.get("low_vote_weight", default)
    if isinstance(w, (int, float)):
        return float(w)
    start, end = (float(v) for v in w)
    return start + (end - start) * epoch / max(1, int(stage.epochs) - 1)


def pseudo_labelled(rows: pd.DataFrame, cfg: DictConfig, run: RunSpec, caches: tuple, device) -> pd.DataFrame:
    """rows with the low-vote rows' targets mixed with the predictions of the experiments in
    labels.pseudo.from (8th place: 0.1 votes + 0.9 teachers). A CV run for fold k asks each
    teacher's own fold-k model, which never saw fold k, so nothing of the validation fold's
    labels reaches the student through its targets (teachers' OOF predictions would carry it:
    the other folds' models trained on fold k). A full fit, with nothing held out, takes the
    teachers' OOF. Validation always keeps the experts' votes."""
    sources = list(cfg.labels.get("pseudo", {}).get("from") or [])
    if not sources:
        return rows
    predictions = [teacher_predictions(C.work_dir(cfg) / name, rows, cfg, run, caches, device) for name in sources]
    return labels.mix_pseudo_targets(rows, predictions, float(cfg.labels.pseudo.weight), cfg.labels.min_votes_high)


def teacher_predictions(teacher: Path, rows: pd.DataFrame, cfg: DictConfig, run: RunSpec, caches: tuple,
                        device) -> pd.DataFrame:
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
    ds = HMSDataset(low, *caches, train=False, use_spec=uses_kaggle_spec(teacher_cfg), signal_cfg=teacher_cfg.signal)
    probs = predict_probs(net, make_loader(ds, cfg, shuffle=False), device,
                          tta_lr_swap=bool(teacher_cfg.infer.tta_lr_swap), amp=device.type == "cuda")
    out = ds.items[["eeg_id"]].copy()
    out[[f"{c}_target" for c in schema.CLASSES]] = ds.targets
    out[list(schema.VOTE_COLUMNS)] = probs
    return out.reset_index(drop=True)


def val_mask_high(items: pd.DataFrame, min_votes: int) -> np.ndarray:
    return items[labels.TOTAL_VOTES].to_numpy() >= min_votes


# ---------------------------------------------------------------- optimisation

LR_SCALING = {"none": lambda world: 1.0, "sqrt": math.sqrt, "linear": float}


def scaled_lr(lr: float, world: int, rule: str) -> float:
    """The stage's lr for a global batch `world` times the configured one (train.ddp_lr_scale)."""
    if rule not in LR_SCALING:
        raise ValueError(f"train.ddp_lr_scale must be one of {list(LR_SCALING)}, got {rule!r}")
    return float(lr) * LR_SCALING[rule](world)


def make_optimizer(net, stage, cfg, world: int = 1):
    lr = scaled_lr(stage.lr, world, cfg.train.get("ddp_lr_scale", "none"))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=cfg.train.weight_decay)
    total = max(1, stage.epochs * stage.steps_per_epoch)
    warmup = int(cfg.train.warmup_fraction * total)

    def factor(step: int) -> float:  # linear warmup, then cosine to 1% of the peak
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def make_ema(net, decay: float):
    """timm's ModelEmaV3 with warm-up: the decay ramps as 1 - (1 + step)^(-2/3) up to `decay`
    (0.80 after 10 steps, 0.95 after 100, 0.995 after 2,500), so early in a stage the average follows the model
    instead of holding on to the weights the stage started from. One EMA per stage, started
    from the stage's initial weights (stage 2: the best stage-1 model); updated with batched
    (foreach) ops."""
    from timm.utils import ModelEmaV3

    return ModelEmaV3(net, decay=float(decay), use_warmup=True)


def train_step(net, batch, opt, sched, scaler, cfg, device, augment: bool = True,
               low_vote_weight: float | None = None) -> torch.Tensor:
    """One optimiser step; returns the loss as a device tensor (reading it would sync every step).
    low_vote_weight: this epoch's weight for rows under min_votes (a decaying schedule); None
    keeps the dataset's."""
    batch = to_device(batch, device)  # augment=False: the bare step `hms bench train` compares with
    if low_vote_weight is not None:
        batch["weight"] = torch.where(batch["low_vote"], low_vote_weight, 1.0).float()
    if augment:
        augment_batch(batch, cfg.augment)
    with torch.autocast(device_type=device.type, enabled=scaler.is_enabled()):
        logits = net(batch, cfg.augment if augment else None)
    loss = kl_loss(logits, batch["target"], batch["weight"])
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if cfg.train.grad_clip:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.train.grad_clip)
    scaler.step(opt)
    scaler.update()
    sched.step()
    return loss.detach()


def cuda_indexed(device: torch.device, local_rank: int | None = None) -> torch.device:
    """A CUDA device with an index: torchrun's local rank, else the configured one, else the
    current one. torch.cuda.set_device rejects a bare "cuda" (torch 2.11 raises ValueError)."""
    if device.type != "cuda":
        return device
    if local_rank is not None:
        return torch.device("cuda", local_rank)
    return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())


# ---------------------------------------------------------------- one fold

class FoldRun:
    """Trains one run (a CV fold, or a full-data fit with no validation) through its stages,
    resumable from last.pt after every epoch."""

    def __init__(self, cfg: DictConfig, run: RunSpec, train: pd.DataFrame, caches: dict, progress: bool):
        self.rank, self.world, local_rank = init_distributed(cfg.train.ddp_timeout_minutes)
        self.is_main = self.rank == 0
        self.cfg, self.run_spec, self.progress = cfg, run, progress and self.is_main
        self.tag = f"{cfg.name} {run.name}"
        self.device = cuda_indexed(torch.device(C.resolve_device(cfg)), local_rank if self.world > 1 else None)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            # no cudnn.benchmark: on an H200 it autotuned EfficientNet-B0 at 512x512 for 24 s per new
            # batch shape (first, last, validation and TTA batches: ~50 s an epoch of 23 batches),
            # and its steps were no faster than channels_last alone (0.06 s)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        self.dir = exp_dir(cfg) / run.name
        self.stages = self.run_stages()
        self.min_votes = cfg.labels.min_votes_high
        eeg, spec = open_cache(caches["train"]["eeg"]), open_cache(caches["train"]["spec"])
        self.caches = (eeg, spec)
        self.train_rows = pseudo_labelled(train if run.is_full else train[train.fold != run.fold], cfg, run,
                                          self.caches, self.device)
        self.val_set = None if run.is_full else HMSDataset(
            train[train.fold == run.fold], eeg, spec, train=False, use_spec=uses_kaggle_spec(cfg),
            signal_cfg=cfg.signal)
        if self.val_set is not None:
            self.val_loader = make_loader(self.val_set, cfg, shuffle=False)
            self.val_high = val_mask_high(self.val_set.items, self.min_votes)
        self.net = build_network(cfg).to(self.device)
        if self.device.type == "cuda" and self.net.input_kind == "image":
            self.net = self.net.to(memory_format=torch.channels_last)  # faster convolutions with AMP
        self.train_net = self.net  # what the optimiser steps through: DDP-wrapped under torchrun
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_net = DistributedDataParallel(self.net, device_ids=ids)
        if cfg.train.compile:  # compile the DDP wrapper, as PyTorch advises, so it can split graphs at buckets
            self.train_net = torch.compile(self.train_net)
        self.amp = bool(cfg.train.amp) and self.device.type == "cuda"

    def run_stages(self) -> list:
        """The configured stages, each with `run_epochs` (epochs actually trained: a full fit
        stops where the CV runs found their best; the lr schedule still spans `epochs`)."""
        epochs = self.run_spec.stage_epochs or [int(s.epochs) for s in self.cfg.train.stages]
        return [OmegaConf.merge(stage, {"run_epochs": int(n)}) for stage, n in zip(self.cfg.train.stages, epochs)]

    def stage_loader(self, stage) -> DataLoader:
        rows = stage_rows(self.train_rows, stage, self.min_votes)
        weighting = (self.min_votes, low_vote_weight_at(stage, 0, self.cfg.labels.low_vote_weight))
        ds = training_set(rows, *self.caches, self.cfg, weighting)
        sampler = (DistributedSampler(ds, num_replicas=self.world, rank=self.rank, seed=self.run_spec.seed)
                   if self.world > 1 else None)
        return make_loader(ds, self.cfg, shuffle=True, sampler=sampler)

    def validate(self, net, tta: bool = False) -> tuple[dict, np.ndarray | None]:
        if self.val_set is None:  # a full fit: nothing held out
            return {}, None
        probs = predict_probs(net, self.val_loader, self.device, tta_lr_swap=tta, amp=self.amp)
        target = self.val_set.targets
        high = self.val_high if self.val_high.any() else np.ones(len(target), bool)
        return {"val_kl": kl_score(target, probs), "val_kl_high": kl_score(target[high], probs[high])}, probs

    def run(self) -> dict:
        if self.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            C.save_resolved(self.cfg, self.dir / "config.yaml")
        barrier()
        state = self.load_state()
        self.tracker = EpochLogger(self.cfg, self.dir, self.run_spec.name, enabled=self.is_main)
        try:
            for s_idx, stage in enumerate(self.stages):
                if s_idx < state["stage"] or stage.run_epochs == 0:
                    continue
                self.run_stage(s_idx, stage, state)
        finally:
            self.tracker.close()
        return self.finish(state)

    def load_state(self) -> dict:
        last = self.dir / "last.pt"
        if last.is_file():
            state = torch.load(last, map_location="cpu", weights_only=True)
            print(f"[{self.tag}] resuming at stage {state['stage']} epoch {state['epoch'] + 1}")
            return state
        return {"stage": 0, "epoch": -1, "best": float("inf"), "bad_epochs": 0, "history": []}

    def run_stage(self, s_idx: int, stage, state: dict) -> None:
        loader = self.stage_loader(stage)
        stage = OmegaConf.merge(stage, {"steps_per_epoch": len(loader)})
        opt, sched = make_optimizer(self.net, stage, self.cfg, self.world)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        start = 0
        if state["stage"] == s_idx and state["epoch"] >= 0:  # resume inside this stage
            self.net.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"])
            start = state["epoch"] + 1
        elif s_idx > 0 and (self.dir / "best.pt").is_file():  # the next stage starts from the best so far
            self.net.load_state_dict(torch.load(self.dir / "best.pt", map_location=self.device, weights_only=True))
            state["bad_epochs"] = 0
        ema = make_ema(self.net, self.cfg.train.ema) if self.cfg.train.ema else None
        if ema and start > 0 and "ema" in state:
            ema.module.load_state_dict(state["ema"])
        scheduled = not isinstance(stage.get("low_vote_weight", 0.0), (int, float))
        for epoch in range(start, stage.run_epochs):
            if state["bad_epochs"] >= self.cfg.train.patience:
                break
            t0 = time.perf_counter()
            if isinstance(loader.sampler, DistributedSampler):
                loader.sampler.set_epoch(epoch + 1000 * s_idx)
            low_w = low_vote_weight_at(stage, epoch, self.cfg.labels.low_vote_weight) if scheduled else None
            loss_sum, steps = torch.zeros((), device=self.device), 0
            for batch in tqdm(loader, desc=f"{self.tag} s{s_idx} e{epoch}", disable=not self.progress, leave=False):
                loss_sum += train_step(self.train_net, batch, opt, sched, scaler, self.cfg, self.device,
                                       low_vote_weight=low_w)
                steps += 1
                if ema:
                    ema.update(self.net, step=epoch * len(loader) + steps)
            evaluated = ema.module if ema else self.net
            # rank 0 validates (the whole fold) and decides; the other ranks take its numbers
            scores = broadcast_from_main(self.validate(evaluated)[0] if self.is_main else None)
            self.record(state, s_idx, epoch, float(loss_sum) / max(1, steps), scores, time.perf_counter() - t0,
                        evaluated)
            self.save_state(state, s_idx, epoch, opt, sched, ema)

    def record(self, state, s_idx, epoch, train_loss, scores, seconds, net) -> None:
        # scores are rank 0's (broadcast), so every rank takes the same decisions here;
        # a full fit has none: its latest epoch is its best
        improved = not scores or scores["val_kl_high"] < state["best"] - 1e-6
        if improved:
            state["best"] = scores.get("val_kl_high", float("nan"))
            state["bad_epochs"] = 0
            if self.is_main:
                with atomic_path(self.dir / "best.pt") as tmp:
                    torch.save(net.state_dict(), tmp)
        else:
            state["bad_epochs"] += 1
        row = {"stage": s_idx, "epoch": epoch, "train_loss": train_loss, **scores,
               "lr_stage": float(self.stages[s_idx].lr), "seconds": round(seconds, 2), "best": improved}
        state["history"].append(row)
        self.tracker.log(row, step=len(state["history"]) - 1)
        if self.is_main:
            atomic_to_csv(pd.DataFrame(state["history"]), self.dir / "log.csv")
        if self.progress:
            val = (f"val KL {scores['val_kl']:.4f} high-vote {scores['val_kl_high']:.4f}{' *' if improved else ''}"
                   if scores else "full fit")
            print(f"[{self.tag}] stage {s_idx} epoch {epoch}: loss {train_loss:.4f} {val} ({seconds:.1f} s)")

    def save_state(self, state, s_idx, epoch, opt, sched, ema) -> None:
        state.update(stage=s_idx, epoch=epoch, model=self.net.state_dict(), optimizer=opt.state_dict(),
                     scheduler=sched.state_dict(), rng=torch.get_rng_state())
        if ema:
            state["ema"] = ema.module.state_dict()
        if epoch == self.stages[s_idx].run_epochs - 1 or state["bad_epochs"] >= self.cfg.train.patience:
            state.update(stage=s_idx + 1, epoch=-1)  # the stage is over: resume at the next one
        if self.is_main:
            with atomic_path(self.dir / "last.pt") as tmp:
                torch.save(state, tmp)
        barrier()  # best.pt and last.pt are on disk before any rank reads them

    def finish(self, state: dict) -> dict | None:
        if not self.is_main:
            barrier()
            return None
        self.net.load_state_dict(torch.load(self.dir / "best.pt", map_location=self.device, weights_only=True))
        # the OOF with the test predictions' TTA: ensemble weights are fit on the same kind of prediction
        scores, probs = self.validate(self.net, tta=bool(self.cfg.infer.tta_lr_swap))
        metrics = {"run": self.run_spec.name, "fold": self.run_spec.fold, "seed": self.run_spec.seed, **scores,
                   "epochs": len(state["history"]), "complete": True}
        if self.val_set is not None:
            atomic_to_csv(self.val_frame(probs), self.dir / "val_pred.csv")
            metrics.update(n_val=len(self.val_set.items), n_val_high=int(self.val_high.sum()))
        test = predict_test(self.cfg, [self.net], self.device, amp=self.amp,
                            prior=labels.prior(self.train_rows, self.min_votes))
        atomic_to_csv(test, self.dir / "test_pred.csv")
        atomic_write_json(self.dir / "metrics.json", metrics)
        (self.dir / "last.pt").unlink(missing_ok=True)  # the run is done; best.pt is what counts
        barrier()
        return metrics

    def val_frame(self, probs: np.ndarray) -> pd.DataFrame:
        items = self.val_set.items
        val = pd.DataFrame(probs, columns=list(schema.VOTE_COLUMNS))
        val.insert(0, "eeg_id", items["eeg_id"].to_numpy())
        val.insert(1, "fold", self.run_spec.fold)
        val[labels.TOTAL_VOTES] = items[labels.TOTAL_VOTES].to_numpy()
        val[[f"{c}_target" for c in schema.CLASSES]] = self.val_set.targets
        return val


class TreeRun(FoldRun):
    """A run of a model fitted once instead of trained by epochs (model kind qeeg_trees): the
    features of every training item's labelled middle window, one fit, then the same validation,
    TTA OOF, test predictions and files as a trained run (best.pt holds the fitted trees, log.csv
    one row), so folds, seeds, full fits, pseudo-labels, the ensemble and inference treat it like
    any other experiment. Only the first of train.stages applies (its rows and low_vote_weight)."""

    def run(self) -> dict:
        if self.world > 1:
            raise C.ConfigError(f"{self.tag}: a {self.cfg.model.kind} experiment fits in one process; "
                                "run it without torchrun")
        self.dir.mkdir(parents=True, exist_ok=True)
        C.save_resolved(self.cfg, self.dir / "config.yaml")
        state = {"stage": 0, "epoch": -1, "best": float("inf"), "bad_epochs": 0, "history": []}
        self.tracker = EpochLogger(self.cfg, self.dir, self.run_spec.name, enabled=True)
        try:
            t0 = time.perf_counter()
            train_kl = self.fit()
            scores = self.validate(self.net)[0]
            self.record(state, 0, 0, train_kl, scores, time.perf_counter() - t0, self.net)
        finally:
            self.tracker.close()
        return self.finish(state)

    def fit(self) -> float:
        """Fit the trees on the first stage's rows; returns their weighted training KL."""
        stage = self.stages[0]
        weighting = (self.min_votes, low_vote_weight_at(stage, 0, self.cfg.labels.low_vote_weight))
        data = HMSDataset(stage_rows(self.train_rows, stage, self.min_votes), *self.caches, train=False,
                          weighting=weighting, use_spec=True, signal_cfg=self.cfg.signal)
        features = feature_matrix(self.net, make_loader(data, self.cfg, shuffle=False), self.device,
                                  progress=self.progress, desc=f"{self.tag} features")
        self.net.core.fit(features, data.targets, data.weights, seed=self.run_spec.seed)
        with torch.no_grad():
            logits = self.net.core.trees(torch.from_numpy(features).to(self.device))
        probs = torch.softmax(logits, dim=1).cpu().numpy()
        return kl_score(data.targets, probs)


@torch.no_grad()
def feature_matrix(net, loader, device, progress: bool = False, desc: str = "features") -> np.ndarray:
    """(n_items, n_features) float64: the fitted-once core's features of each item, in order."""
    net.eval()
    out = []
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        batch = to_device(batch, device)
        out.append(net.core.features(net.model_signal(batch["signal"]), batch["spec"]).cpu().numpy())
    return np.concatenate(out)


# ---------------------------------------------------------------- experiment

def train_experiment(cfg: DictConfig, folds: list[int] | None = None, force: bool = False,
                     progress: bool = True) -> dict:
    """Train the requested folds (default: all, then the full-data fits), every seed of each,
    skipping finished runs unless forced; write the experiment's oof.csv and test_pred.csv
    once every run is done."""
    seed_everything(cfg.seed)
    _, world, _ = init_distributed(cfg.train.ddp_timeout_minutes)
    if world > 1:  # rank 0 builds caches and folds.csv first; the others then just find them
        if is_main_process():
            prepare(cfg, progress=progress)
            load_train(cfg)
        barrier()
    caches = prepare(cfg, progress=progress and world == 1)
    train = load_train(cfg)
    for run in cv_runs(cfg, folds):
        train_run(cfg, run, train, caches, force, progress)
    if folds is None and cfg.train.get("full_fits", 0):  # full fits need every CV run's best epoch first
        for run in full_runs(cfg, full_fit_epochs(cv_logs(cfg), len(cfg.train.stages))):
            train_run(cfg, run, train, caches, force, progress)
    return collect_experiment(cfg) if is_main_process() else {"name": cfg.name, "complete": False}


def train_run(cfg, run: RunSpec, train, caches, force: bool, progress: bool) -> dict | None:
    run_dir = exp_dir(cfg) / run.name
    if is_complete(run_dir) and not force:
        print(f"[{cfg.name} {run.name}] already complete: skipped (use --force to retrain)")
        return None
    if force and run_dir.exists() and is_main_process():
        run_dir.rename(run_dir.with_name(f"{run_dir.name}.old-{int(time.time())}"))
    barrier()
    seed_everything(run.seed)
    if run.is_full:
        print(f"[{cfg.name} {run.name}] full-data fit, epochs per stage {list(run.stage_epochs)} (from the CV runs)")
    runner = TreeRun if fitted_once(cfg) else FoldRun
    return runner(cfg, run, train, caches, progress).run()


def cv_logs(cfg) -> list[pd.DataFrame]:
    return [pd.read_csv(exp_dir(cfg) / run.name / "log.csv") for run in cv_runs(cfg)]


def collect_experiment(cfg: DictConfig) -> dict:
    """Merge run outputs once every run is complete: OOF (each fold's seeds averaged) with its
    KL on all and high-vote rows, and the test mean over the predicting runs."""
    root = exp_dir(cfg)
    cv = cv_runs(cfg)
    runs = cv + full_runs(cfg, [])
    if not all(is_complete(root / r.name) for r in runs):
        return {"name": cfg.name, "complete": False}
    oof = pd.concat([seed_mean([pd.read_csv(root / r.name / "val_pred.csv") for r in cv if r.fold == k])
                     for k in range(cfg.folds.n_folds)], ignore_index=True)
    atomic_to_csv(oof, root / "oof.csv")
    predicting = predicting_runs(cfg, runs)
    atomic_to_csv(seed_mean([pd.read_csv(root / r.name / "test_pred.csv") for r in predicting]), root / "test_pred.csv")
    summary = {"name": cfg.name, "complete": True, "runs": [r.name for r in predicting],
               **oof_scores(oof, cfg.labels.min_votes_high),
               "prior": labels.prior(load_train(cfg), cfg.labels.min_votes_high).tolist()}
    atomic_write_json(root / "summary.json", summary)
    print(f"[{cfg.name}] OOF KL {summary['oof_kl']:.4f}  high-vote OOF KL {summary['oof_kl_high']:.4f}"
          f"  ({len(cv)} CV runs; test mean of {len(predicting)} runs)")
    return summary


def seed_mean(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The first frame with its class probabilities replaced by the mean over frames (rows in
    the same order: the same fold's validation set, or test.csv's)."""
    for f in frames[1:]:
        if not np.array_equal(f["eeg_id"].to_numpy(), frames[0]["eeg_id"].to_numpy()):
            raise ValueError("runs to average predict different rows (stale predictions?)")
    mean = frames[0].copy()
    mean[list(schema.VOTE_COLUMNS)] = np.mean([f[list(schema.VOTE_COLUMNS)].to_numpy() for f in frames], axis=0)
    return mean


def oof_scores(oof: pd.DataFrame, min_votes: int) -> dict:
    target = oof[[f"{c}_target" for c in schema.CLASSES]].to_numpy()
    probs = oof[list(schema.VOTE_COLUMNS)].to_numpy()
    high = oof[labels.TOTAL_VOTES].to_numpy() >= min_votes
    return {"oof_kl": kl_score(target, probs),
            "oof_kl_high": kl_score(target[high], probs[high]) if high.any() else float("nan"),
            "n_oof": len(oof), "n_oof_high": int(high.sum())}
