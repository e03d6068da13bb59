"""Loaders over the datasets: batch sizes, worker counts from the cores of a process's GPU
slot, and worker seeding."""
from __future__ import annotations

import os
import random

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from hms.config import resolve_device

CORES_ENV = "HMS_CORES_PER_JOB"  # set by the scheduler for each job: the cores of its device slot
MAX_TRAIN_WORKERS = 8
MAX_EVAL_WORKERS = 2  # validation and test batches need few: the scale bench kept a member busy with 1-3


def cores_per_process() -> int:
    """The cores this process may feed its device from: the scheduler's share of its slot
    ($HMS_CORES_PER_JOB), else this process's cores divided among torchrun's local processes."""
    if os.environ.get(CORES_ENV):
        return max(1, int(os.environ[CORES_ENV]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1))))


def loader_workers(setting, device, training: bool) -> int:
    """train.num_workers: a number, or auto: 0 on the CPU (the main process does the work); on a
    GPU, from the cores of this process's slot, one kept for the main process: evaluation
    loaders at most MAX_EVAL_WORKERS, training loaders the rest up to MAX_TRAIN_WORKERS (both
    loaders are persistent, so they run side by side)."""
    if setting != "auto":
        return int(setting)
    if torch.device(device).type == "cpu":
        return 0
    cores = cores_per_process()
    evaluation = min(MAX_EVAL_WORKERS, max(1, cores // 4))
    if not training:
        return evaluation
    return max(1, min(MAX_TRAIN_WORKERS, cores - 1 - evaluation))


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: one seed for numpy, python's random and the dataset's
    albumentations transforms, taken from torch's, which differs per worker and per epoch (the
    loader draws a new base seed each epoch). Without it every worker repeats the parent's
    random state: the same masks in each worker, and each epoch the last one's."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    dataset = torch.utils.data.get_worker_info().dataset
    if hasattr(dataset, "reseed"):
        dataset.reseed(seed)


def eval_batch_size(cfg) -> int:
    """Validation and test batches: infer.batch_size, or null for twice the training batch (no
    gradients or saved activations: a forward's memory is a small part of a training step's)."""
    size = OmegaConf.select(cfg, "infer.batch_size", default=None)
    return int(size) if size else 2 * int(cfg.train.batch_size)


def make_loader(dataset, cfg, shuffle: bool, sampler=None) -> DataLoader:
    """A training loader (shuffle or a sampler: train.batch_size, the last partial batch
    dropped) or an evaluation one (eval_batch_size, every item). Dropping the last partial
    batch: a batch of 1-31 items would get a full step's weight from a noisy gradient and
    BatchNorm statistics over a few items, and a new shape for cuDNN to tune; the shuffle
    drops other items each epoch. A set smaller than one batch keeps its one partial batch."""
    device = torch.device(resolve_device(cfg))
    training = shuffle or sampler is not None
    workers = loader_workers(cfg.train.num_workers, device, training)
    batch = int(cfg.train.batch_size) if training else eval_batch_size(cfg)
    drop_last = training and len(sampler if sampler is not None else dataset) > batch
    return DataLoader(dataset, batch_size=batch, shuffle=shuffle and sampler is None,
                      sampler=sampler, num_workers=workers, drop_last=drop_last,
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                      worker_init_fn=seed_worker if workers > 0 else None)
