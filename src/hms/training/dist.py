"""torchrun (DDP) helpers: join the process group, take decisions on rank 0 and share them.
Outside torchrun every helper is a no-op, so the fold loop reads the same either way."""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def launched_world_size() -> int:
    """The number of processes torchrun started (1 without torchrun), read before joining."""
    return int(os.environ.get("WORLD_SIZE", 1))


def init_distributed(timeout_minutes: float = 120.0) -> tuple[int, int, int]:
    """(rank, world size, local rank); joins the process group when launched by torchrun.
    The timeout covers rank 0 building the caches while the others wait in a barrier (a first
    real `hms prepare` takes longer than NCCL's default 10 minutes)."""
    world, local_rank = launched_world_size(), int(os.environ.get("LOCAL_RANK", 0))
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


def cuda_indexed(device: torch.device, local_rank: int | None = None) -> torch.device:
    """A CUDA device with an index: torchrun's local rank, else the configured one, else the
    current one. torch.cuda.set_device rejects a bare "cuda" (torch 2.11 raises ValueError)."""
    if device.type != "cuda":
        return device
    if local_rank is not None:
        return torch.device("cuda", local_rank)
    return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())
