"""The training step, one for FoldRun and `hms bench train` (so the bench times exactly what
training runs): one optimiser step over an effective batch of train.batch_size items, taken in
micro-batches of train.micro_batch with gradient accumulation.

- Each micro-batch's weighted KL is scaled by its share of the batch's weight, so k micro-batches
  sum to the loss of the whole batch (kl_loss divides by the sum of the weights) and give the
  same gradients (tests/test_device.py). BatchNorm in training mode still normalises each
  micro-batch by its own statistics (3rd place trained MixNet-XL at 16 x 2 the same way).
- Under DDP, gradients are all-reduced once, on the last micro-batch (`no_sync` before).
- Clipping, the GradScaler's step and update, the lr scheduler and the EMA act once per optimiser
  step, after the last micro-batch.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel

from hms.models.factory import fitted_once
from hms.training.augment import NetworkAugmenter, augment_batch
from hms.models.device import apply_channels_last, autocast, grad_scaler, set_cudnn, train_precision
from hms.training.losses import kl_loss
from hms.training.memory import choose_micro_batch
from hms.inference.batch import to_device


@dataclass
class DeviceSetup:
    precision: str  # bf16 | fp16 | fp32
    micro_batch: int  # items per forward/backward; batch_size / micro_batch steps of accumulation
    channels_last: list[str]  # the backbones converted
    cudnn_benchmark: bool


def device_setup(cfg, net, device, tag: str = "", say=print) -> DeviceSetup:
    """The member's device settings applied to `net` (already on `device`), for FoldRun and the
    bench alike: cuDNN autotuning, precision, channels-last for every 2D backbone (also where the
    network builds its image inside: eeg_image, timm_mel), the micro-batch (on CUDA: the memory
    estimate against the free memory, printed)."""
    device = torch.device(device)
    cudnn = set_cudnn(cfg, device)
    precision = train_precision(cfg, device)
    converted = apply_channels_last(net, cfg.train.get("channels_last", "auto"), device)
    micro = int(cfg.train.batch_size) if fitted_once(cfg) else choose_micro_batch(cfg, device, precision, tag, say=say)
    return DeviceSetup(precision, micro, converted, cudnn)


class Section(dict):
    """A config section as a plain dict read like the DictConfig it came from (cfg.key and
    cfg.get): torch.compile guards on plain values, where an OmegaConf object every step would
    break its graph."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


def plain_section(section) -> Section:
    return Section(OmegaConf.to_container(section, resolve=True) if OmegaConf.is_config(section) else section)


def micro_slices(n: int, micro: int | None) -> list[slice]:
    """Consecutive slices of n items, micro at a time (the last one smaller when micro does not
    divide n)."""
    micro = n if not micro or micro >= n else int(micro)
    return [slice(i, min(n, i + micro)) for i in range(0, n, micro)]


def _ddp(net):
    inner = getattr(net, "_orig_mod", net)  # torch.compile wraps the DDP module
    return inner if isinstance(inner, DistributedDataParallel) else None


class TrainStep:
    """Call with a loader batch: one optimiser step; returns the batch's loss as a device tensor
    (reading it would sync every step).

    net: the network (EMA and clipping read its parameters); train_net: what the forward goes
    through (DDP- or compile-wrapped, else net). `updates` counts optimiser steps: FoldRun sets it
    at each epoch's start so the EMA's warm-up continues across epochs and resumes."""

    def __init__(self, net, opt, sched, cfg, device, precision: str, micro_batch: int | None = None,
                 train_net=None, ema=None):
        self.net, self.train_net = net, train_net if train_net is not None else net
        self.opt, self.sched, self.ema = opt, sched, ema
        self.device, self.precision, self.micro_batch = torch.device(device), precision, micro_batch
        self.scaler = grad_scaler(self.device, precision)
        self.augment_cfg = plain_section(cfg.augment)
        self.augmenter = NetworkAugmenter(self.augment_cfg)
        self.grad_clip = float(cfg.train.grad_clip or 0.0)
        self.updates = 0

    def __call__(self, batch: dict, augment: bool = True, low_vote_weight: float | None = None) -> torch.Tensor:
        """augment=False: the bare step `hms bench train` compares with. low_vote_weight: this
        epoch's weight for rows under min_votes (a decaying schedule); None keeps the dataset's."""
        batch = to_device(batch, self.device)
        if low_vote_weight is not None:
            batch["weight"] = torch.where(batch["low_vote"], low_vote_weight, 1.0).float()
        if augment:
            augment_batch(batch, self.augment_cfg)  # mixup over the whole batch, as without accumulation
        n = len(batch["target"])
        total_weight = batch["weight"].float().sum().clamp_min(1e-12)
        parts = micro_slices(n, self.micro_batch)
        ddp = _ddp(self.train_net)
        self.opt.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device)
        for i, part in enumerate(parts):
            micro = {k: v[part] for k, v in batch.items()}
            sync = ddp is None or i == len(parts) - 1
            with contextlib.nullcontext() if sync else ddp.no_sync():
                with autocast(self.device, self.precision):
                    logits = self.train_net(micro, self.augmenter if augment else None)
                # this micro-batch's share of the batch's weighted mean
                loss = kl_loss(logits, micro["target"], micro["weight"]) * (micro["weight"].float().sum() / total_weight)
                self.scaler.scale(loss).backward()
            loss_sum += loss.detach()
        if self.grad_clip:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        self.updates += 1
        if self.ema is not None:
            self.ema.update(self.net, step=self.updates)
        return loss_sum
