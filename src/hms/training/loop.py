"""How one run of an experiment trains (a CV fold, one of its extra seeds, or a full-data fit;
see hms.models.runs): Run, what every run shares (its folder, rows, validation, results);
FoldRun's stages and epochs, the optimiser step, early stopping, resume from last.pt;
TreeRun for a model fitted once. A stage's rows and low-vote weight are
hms.training.stage's Stage; where a run stands (resume point, best score, history) is
hms.training.state's RunState. The experiment around it (caches, folds, which runs, the OOF) is
hms.training.experiment; the scheduling of runs over devices is hms.jobs.schedule.

Per run, in $HMS_WORK_DIR/<exp>/<run>/: best.pt (plain state_dict, loads with
weights_only=True), last.pt (resume state), metrics.json, log.csv, config.yaml, val_pred.csv,
test_pred.csv (full fits: no val_pred.csv).
"""
from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from hms import config as C
from hms.cache.store import open_cache
from hms.data import labels, schema
from hms.metric import kl_score
from hms.models.factory import fitted_once
from hms.inputs.dataset import make_dataset
from hms.inputs.loaders import make_loader
from hms.models.fingerprint import ConfigChanged, check_unchanged, fingerprint, resumable
from hms.training.dist import barrier, broadcast_from_main, cuda_indexed, init_distributed, launched_world_size
from hms.models.network import build_network
from hms.inference.batch import predict_probs, predict_test
from hms.inference.trees import ItemFeatures, tree_test_predictions
from hms.training.pseudo import pseudo_labelled
from hms.training.stage import Stage, stages_of
from hms.training.state import RunState
from hms.models.runs import RunSpec, all_runs, predicting_runs
from hms.training.step import TrainStep, device_setup
from hms.training.tracking import EpochLogger
from hms.models.workdir import exp_dir, load_checkpoint
from hms.utils import atomic_path, atomic_to_csv, atomic_write_json, bars_off


def check_launch(cfg: DictConfig) -> None:
    """A model fitted once has no gradient steps to share over processes: refuse torchrun before
    anything is built (its parameterless network would fail DDP's wrap with a less clear error)."""
    if launched_world_size() > 1 and fitted_once(cfg):
        raise C.ConfigError(f"{cfg.name}: a {cfg.model.kind} experiment is fitted once, in one process; run it "
                            "without torchrun (`hms train CONFIG --fold K`, or `hms run` for every fold)")


# ---------------------------------------------------------------- data
def val_mask_high(items: pd.DataFrame, min_votes: int) -> np.ndarray:
    return items[labels.TOTAL_VOTES].to_numpy() >= min_votes


# ---------------------------------------------------------------- optimisation

LR_SCALING = {"none": lambda world: 1.0, "sqrt": math.sqrt, "linear": float}


def scaled_lr(lr: float, world: int, rule: str) -> float:
    """The stage's lr for a global batch `world` times the configured one (train.ddp_lr_scale)."""
    if rule not in LR_SCALING:
        raise ValueError(f"train.ddp_lr_scale must be one of {list(LR_SCALING)}, got {rule!r}")
    return float(lr) * LR_SCALING[rule](world)


def make_optimizer(net, stage: Stage, cfg, steps_per_epoch: int, world: int = 1):
    """AdamW and its schedule over the stage's configured epochs of steps_per_epoch steps."""
    lr = scaled_lr(stage.lr, world, cfg.train.get("ddp_lr_scale", "none"))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=cfg.train.weight_decay)
    total = max(1, int(stage.epochs) * steps_per_epoch)
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


# ---------------------------------------------------------------- what every run shares

def run_device(cfg: DictConfig, local_rank: int | None = None) -> torch.device:
    """The run's device (torchrun's local GPU, else the configured one), made current, with TF32
    matmuls on CUDA."""
    device = cuda_indexed(torch.device(C.resolve_device(cfg)), local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return device


class Run:
    """What a trained run and a fitted-once run share: the config, the run's folder, the caches,
    its training rows (pseudo-labelled), its stages, the held-out fold, the network, the epoch
    log and the files a finished run leaves. Subclasses say how the network learns (`run`),
    predicts the fold (`val_probs`) and the test (`test_predictions`)."""

    def __init__(self, cfg: DictConfig, run: RunSpec, train: pd.DataFrame, caches: dict, progress: bool,
                 device: torch.device, is_main: bool = True):
        self.cfg, self.run_spec, self.device, self.is_main = cfg, run, device, is_main
        self.progress = progress and is_main
        self.tag = f"{cfg.name} {run.name}"
        self.dir = exp_dir(cfg) / run.name
        self.stages = stages_of(cfg, run.stage_epochs)
        self.min_votes = cfg.labels.min_votes_high
        self.caches = (open_cache(caches["train"]["eeg"]), open_cache(caches["train"]["spec"]))
        self.train_rows = pseudo_labelled(train if run.is_full else train[train.fold != run.fold], cfg, run, device)
        self.val_set = None if run.is_full else make_dataset(cfg, train[train.fold == run.fold], self.caches, "eval")
        if self.val_set is not None:
            self.val_high = val_mask_high(self.val_set.items, self.min_votes)
        self.net = build_network(cfg).to(device)

    def say(self, line: str) -> None:
        if self.is_main:
            print(line, flush=True)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cfg)

    def start(self) -> None:
        """Refuse a folder started under another config (its config.yaml names its weights), then
        save this run's config in it."""
        check_unchanged(self.cfg, [self.dir])
        if self.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            C.save_resolved(self.cfg, self.dir / "config.yaml")
        barrier()

    def val_probs(self, net, tta: bool) -> np.ndarray:
        raise NotImplementedError

    def test_predictions(self) -> pd.DataFrame:
        raise NotImplementedError

    def validate(self, net, tta: bool = False) -> tuple[dict, np.ndarray | None]:
        if self.val_set is None:  # a full fit: nothing held out
            return {}, None
        probs = self.val_probs(net, tta)
        target = self.val_set.targets
        high = self.val_high if self.val_high.any() else np.ones(len(target), bool)
        return {"val_kl": kl_score(target, probs), "val_kl_high": kl_score(target[high], probs[high])}, probs

    def record(self, state: RunState, s_idx: int, epoch: int, train_loss: float, scores: dict, seconds: float,
               net) -> None:
        """An epoch into the state, log.csv and the tracker; best.pt when it improved. Under DDP the
        scores are rank 0's (broadcast), so every rank takes the same decisions here."""
        row = {"stage": s_idx, "epoch": epoch, "train_loss": train_loss, **scores,
               "lr_stage": self.stages[s_idx].lr, "seconds": round(seconds, 2)}
        improved = state.record(row, scores)
        if improved and self.is_main:
            with atomic_path(self.dir / "best.pt") as tmp:
                torch.save(net.state_dict(), tmp)
        self.tracker.log(state.history[-1], step=len(state.history) - 1)
        if self.is_main:
            atomic_to_csv(pd.DataFrame(state.history), self.dir / "log.csv")
        if self.progress:
            val = (f"val KL {scores['val_kl']:.4f} high-vote {scores['val_kl_high']:.4f}{' *' if improved else ''}"
                   if scores else "full fit")
            print(f"[{self.tag}] stage {s_idx} epoch {epoch}: loss {train_loss:.4f} {val} ({seconds:.1f} s)")

    def write_results(self, state: RunState) -> dict:
        """val_pred.csv, test_pred.csv and, last (it marks the run complete), metrics.json."""
        # the OOF with the test predictions' TTA: ensemble weights are fit on the same kind of prediction
        scores, probs = self.validate(self.net, tta=bool(self.cfg.infer.tta_lr_swap))
        metrics = {"run": self.run_spec.name, "fold": self.run_spec.fold, "seed": self.run_spec.seed, **scores,
                   "epochs": len(state.history), "complete": True, "fingerprint": self.fingerprint}
        if self.val_set is not None:
            atomic_to_csv(self.val_frame(probs), self.dir / "val_pred.csv")
            metrics.update(n_val=len(self.val_set.items), n_val_high=int(self.val_high.sum()))
        metrics["prior"] = self.prior().tolist()  # what a test row without data gets, if it predicts later
        if self.predicts_test:
            atomic_to_csv(self.test_predictions(), self.dir / "test_pred.csv")
        atomic_write_json(self.dir / "metrics.json", metrics)
        return metrics

    @property
    def predicts_test(self) -> bool:
        """Whether this run's test predictions join the experiment's test mean (train.test_runs).
        A CV run of an experiment whose full fits alone predict the test writes none: nobody
        reads it (experiment.test_predictions_of predicts it from best.pt if the setting changes)."""
        return self.run_spec.name in {r.name for r in predicting_runs(self.cfg, all_runs(self.cfg))}

    def prior(self) -> np.ndarray:
        """The class prior of the training rows: what a test item without data is given."""
        return labels.prior(self.train_rows, self.min_votes)

    def val_frame(self, probs: np.ndarray) -> pd.DataFrame:
        items = self.val_set.items
        val = pd.DataFrame(probs, columns=list(schema.VOTE_COLUMNS))
        val.insert(0, "eeg_id", items["eeg_id"].to_numpy())
        val.insert(1, "fold", self.run_spec.fold)
        val[labels.TOTAL_VOTES] = items[labels.TOTAL_VOTES].to_numpy()
        val[[f"{c}_target" for c in schema.CLASSES]] = self.val_set.targets
        return val


# ---------------------------------------------------------------- a trained run

class FoldRun(Run):
    """Trains one run (a CV fold, or a full-data fit with no validation) through its stages,
    resumable from last.pt after every epoch; one process, or one of torchrun's."""

    def __init__(self, cfg: DictConfig, run: RunSpec, train: pd.DataFrame, caches: dict, progress: bool):
        check_launch(cfg)
        self.rank, self.world, local_rank = init_distributed(cfg.train.ddp_timeout_minutes)
        device = run_device(cfg, local_rank if self.world > 1 else None)
        super().__init__(cfg, run, train, caches, progress, device, is_main=self.rank == 0)
        if self.val_set is not None:
            self.val_loader = make_loader(self.val_set, cfg, shuffle=False)
        self.setup = device_setup(cfg, self.net, self.device, self.tag, say=self.say)  # shared with the bench
        self.precision = self.setup.precision
        self.train_net = self.net  # what the optimiser steps through: DDP-wrapped under torchrun
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_net = DistributedDataParallel(self.net, device_ids=ids)
        if cfg.train.compile:  # compile the DDP wrapper, as PyTorch advises, so it can split graphs at buckets
            self.train_net = torch.compile(self.train_net)

    def stage_loader(self, stage: Stage) -> DataLoader:
        ds = make_dataset(self.cfg, stage.rows_of(self.train_rows), self.caches, "train", stage.weighting)
        sampler = (DistributedSampler(ds, num_replicas=self.world, rank=self.rank, seed=self.run_spec.seed)
                   if self.world > 1 else None)
        return make_loader(ds, self.cfg, shuffle=True, sampler=sampler)

    def val_probs(self, net, tta: bool) -> np.ndarray:
        return predict_probs(net, self.val_loader, self.device, tta_lr_swap=tta, precision=self.precision)

    def run(self) -> dict:
        self.start()
        state = self.load_state()
        self.tracker = EpochLogger(self.cfg, self.dir, self.run_spec.name, enabled=self.is_main)
        try:
            for s_idx, stage in enumerate(self.stages):
                if s_idx < state.stage or stage.run_epochs == 0:
                    continue
                self.run_stage(s_idx, stage, state)
        finally:
            self.tracker.close()
        return self.finish(state)

    def load_state(self) -> RunState:
        last = self.dir / "last.pt"
        if not last.is_file():
            return RunState()
        state = RunState.from_dict(load_checkpoint(last))
        saved = state.snapshot.get("fingerprint", self.fingerprint)
        if not resumable(saved, self.cfg, self.dir):
            raise ConfigChanged(f"{last} was saved under another config than {self.tag}'s (fingerprint "
                                f"{saved}, now {self.fingerprint}): retrain the run with --force")
        print(f"[{self.tag}] resuming at stage {state.stage} epoch {state.epoch + 1}")
        return state

    def run_stage(self, s_idx: int, stage: Stage, state: RunState) -> None:
        loader = self.stage_loader(stage)
        opt, sched = make_optimizer(self.net, stage, self.cfg, len(loader), self.world)
        start = self.stage_start(s_idx, state, opt, sched)
        ema = make_ema(self.net, self.cfg.train.ema) if self.cfg.train.ema else None
        if ema and start > 0 and "ema" in state.snapshot:
            ema.module.load_state_dict(state.snapshot["ema"])
        step = TrainStep(self.net, opt, sched, self.cfg, self.device, self.precision, self.setup.micro_batch,
                         train_net=self.train_net, ema=ema)
        for epoch in range(start, stage.run_epochs):
            if state.out_of_patience(self.cfg.train.patience):
                break
            t0 = time.perf_counter()
            train_loss = self.train_epoch(loader, step, stage, s_idx, epoch)
            evaluated = ema.module if ema else self.net
            # rank 0 validates (the whole fold) and decides; the other ranks take its numbers
            scores = broadcast_from_main(self.validate(evaluated)[0] if self.is_main else None)
            self.record(state, s_idx, epoch, train_loss, scores, time.perf_counter() - t0, evaluated)
            self.save_state(state, s_idx, epoch, opt, sched, ema)

    def stage_start(self, s_idx: int, state: RunState, opt, sched) -> int:
        """The stage's first epoch: after last.pt's when it stopped inside this stage (weights,
        optimiser, scheduler and RNG restored), else 0, a later stage starting from the best
        checkpoint so far."""
        if state.resumes_in(s_idx):
            saved = state.snapshot
            self.net.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            sched.load_state_dict(saved["scheduler"])
            torch.set_rng_state(saved["rng"])
            return state.epoch + 1
        if s_idx > 0 and (self.dir / "best.pt").is_file():
            self.net.load_state_dict(load_checkpoint(self.dir / "best.pt", self.device))
            state.restart_patience()
        return 0

    def train_epoch(self, loader: DataLoader, step: TrainStep, stage: Stage, s_idx: int, epoch: int) -> float:
        """One pass over the stage's rows; returns the mean training loss."""
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch + 1000 * s_idx)
        # a constant weight is already in the dataset's weights; a scheduled one is set per batch
        low_w = stage.weight_at(epoch) if stage.scheduled else None
        loss_sum, steps = torch.zeros((), device=self.device), 0
        step.updates = epoch * len(loader)  # the EMA's warm-up goes on across epochs and resumes
        self.train_net.train()  # validation left the network in eval mode
        bar = tqdm(loader, desc=f"{self.tag} s{s_idx} e{epoch}", disable=bars_off(self.progress), leave=False)
        for batch in bar:
            loss_sum += step(batch, low_vote_weight=low_w)
            steps += 1
        return float(loss_sum) / max(1, steps)

    def save_state(self, state: RunState, s_idx: int, epoch: int, opt, sched, ema) -> None:
        snapshot = {"model": self.net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "rng": torch.get_rng_state(), "fingerprint": self.fingerprint}
        if ema:
            snapshot["ema"] = ema.module.state_dict()
        over = epoch == self.stages[s_idx].run_epochs - 1 or state.out_of_patience(self.cfg.train.patience)
        state.saved_after(s_idx, epoch, over, snapshot)  # over: resume at the next stage
        if self.is_main:
            with atomic_path(self.dir / "last.pt") as tmp:
                torch.save(state.to_dict(), tmp)
        barrier()  # best.pt and last.pt are on disk before any rank reads them

    def finish(self, state: RunState) -> dict | None:
        if not self.is_main:
            barrier()
            return None
        self.net.load_state_dict(load_checkpoint(self.dir / "best.pt", self.device))
        metrics = self.write_results(state)
        (self.dir / "last.pt").unlink(missing_ok=True)  # the run is done; best.pt is what counts
        barrier()
        return metrics

    def test_predictions(self) -> pd.DataFrame:
        return predict_test(self.cfg, [self.net], self.device, precision=self.precision, prior=self.prior())


# ---------------------------------------------------------------- a fitted-once run

class TreeRun(Run):
    """A run of a model fitted once instead of trained by epochs (model kind qeeg_trees): the
    features of every training item's labelled middle window, one fit, then the same validation,
    TTA OOF, test predictions and files as a trained run (best.pt holds the fitted trees, log.csv
    one row), so folds, seeds, full fits, pseudo-labels, the ensemble and inference treat it like
    any other experiment. Only the first of train.stages applies (its rows and low-vote weight).
    One process, no DDP (check_launch refuses torchrun), no optimiser or precision set-up.
    The features (and their mirrored copies for the TTA) come from the split's feature cache
    (ItemFeatures), extracted once for all the experiment's runs, not again in each."""

    def __init__(self, cfg: DictConfig, run: RunSpec, train: pd.DataFrame, caches: dict, progress: bool):
        check_launch(cfg)
        super().__init__(cfg, run, train, caches, progress, run_device(cfg))
        self.features = ItemFeatures(cfg, "train", train, caches["train"]["eeg"], caches["train"]["spec"], progress)

    def run(self) -> dict:
        self.start()
        state = RunState()
        self.tracker = EpochLogger(self.cfg, self.dir, self.run_spec.name, enabled=True)
        try:
            t0 = time.perf_counter()
            train_kl = self.fit()
            scores = self.validate(self.net)[0]
            self.record(state, 0, 0, train_kl, scores, time.perf_counter() - t0, self.net)
        finally:
            self.tracker.close()
        # the fitted trees are in memory: no best.pt to reload, no last.pt to remove
        return self.write_results(state)

    def fit(self) -> float:
        """Fit the trees on the first stage's rows; returns their weighted training KL."""
        stage = self.stages[0]
        data = make_dataset(self.cfg, stage.rows_of(self.train_rows), self.caches, "eval", stage.weighting)
        features = self.features.of(data.items)
        self.net.core.fit(features, data.targets, data.weights, seed=self.run_spec.seed)
        with torch.no_grad():
            logits = self.net.core.trees(torch.from_numpy(features).to(self.device))
        probs = torch.softmax(logits, dim=1).cpu().numpy()
        return kl_score(data.targets, probs)

    def val_probs(self, net, tta: bool) -> np.ndarray:
        """From the cached features of the fold's items."""
        return self.features.probs(net, self.val_set.items, self.device, tta)

    def test_predictions(self) -> pd.DataFrame:
        """From the test feature cache (built by the first run, read by the others)."""
        return tree_test_predictions(self.cfg, [self.net], self.device, prior=self.prior())
