"""Measured throughput, by device name: configs/throughput.yaml (README's H200 figures, timm's
published benchmark, the fitted-once members' items/s) and the `hms bench train` results saved
under $HMS_WORK_DIR/bench/. A saved result carries its network's forward FLOPs and family
(jobs/flops.py), so that the plan can tell which members it holds for."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from hms import config as C
from hms.training.memory import BENCH_FILE, MEMORY_BENCH_KEYS
from hms.utils import atomic_write_text

THROUGHPUT_FILE = "throughput.yaml"  # in the configs folder


def device_name(device: str) -> str:
    """The name throughput is keyed by: the CUDA device's product name, or the CPU's threads."""
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu x{torch.get_num_threads()}"


def throughput_table() -> dict:
    return OmegaConf.to_container(OmegaConf.load(C.config_dir() / THROUGHPUT_FILE), resolve=True)


def bench_path(cfg: DictConfig) -> Path:
    return C.work_dir(cfg) / BENCH_FILE


def save_train_bench(cfg: DictConfig, result: dict) -> Path:
    """Append one `hms bench train` result (keyed by device name and experiment) to the work
    dir's bench file, where the plan finds it; the latest line for a key wins."""
    path = bench_path(cfg)
    keep = ["device_name", "experiment", "samples_per_s", "bare_model_samples_per_s", "batch",
            "forward_gflops", "family", *MEMORY_BENCH_KEYS]
    line = json.dumps({k: result[k] for k in keep if k in result})
    old = path.read_text() if path.is_file() else ""
    atomic_write_text(path, old + line + "\n")
    return path


def saved_benches(cfg: DictConfig) -> list[dict]:
    path = bench_path(cfg)
    out = []
    for i, line in enumerate(path.read_text().splitlines() if path.is_file() else [], start=1):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise C.ConfigError(f"{path} line {i} is not a JSON object ({exc}): delete the line") from None
    return out


@dataclass
class Reference:
    """Throughput measured for one experiment on one device."""
    experiment: str
    samples_per_s: float
    forward_gflops: float | None
    family: str | None
    device: str
    where: str  # the file it came from


def references(cfg: DictConfig, device: str, table: dict) -> list[Reference]:
    """This device's measurements (the bench file's over throughput.yaml's), by experiment."""
    found = {}
    for name, e in (table["devices"].get(device) or {}).get("experiments", {}).items():
        found[name] = Reference(name, float(e["samples_per_s"]), e.get("forward_gflops"), e.get("family"), device,
                                f"{C.config_dir() / THROUGHPUT_FILE}")
    for r in saved_benches(cfg):
        if r.get("device_name") == device:
            found[r["experiment"]] = Reference(r["experiment"], float(r["samples_per_s"]), r.get("forward_gflops"),
                                               r.get("family"), device, str(bench_path(cfg)))
    return list(found.values())
