"""A member's peak GPU memory in training, per micro-batch, and the micro-batch that fits a card.

    peak(m) = static + m x activations per sample x (1 + FRAGMENTATION) + WORKSPACE_BYTES

- activations per sample: the bytes of the tensors autograd saves for backward in one training
  forward (torch.autograd.graph.saved_tensors_hooks, on the CPU, batch 1, random weights,
  pretrained off; storages counted once, parameters left out), measured in fp32 and halved for
  bf16/fp16 autocast (convolution and matmul outputs, the bulk of what is saved, are 16-bit).
- static: fp32 weights, gradients, AdamW's two moments and the EMA copy (4 + 4 + 8 + 4 bytes per
  parameter), plus autocast's 16-bit copy of the weights (2).
- FRAGMENTATION and WORKSPACE_BYTES are the stated margin: the caching allocator's rounding and
  the backward's transient gradients of activations; cuDNN's workspace.

A peak measured by `hms bench train` on a GPU (torch.cuda.max_memory_allocated, saved with its
result in $HMS_WORK_DIR/bench/train.jsonl) wins where one exists at the same precision class:
peak(m) = static + (measured - static) x m / measured micro-batch.

`train.micro_batch: auto` picks the largest divisor of train.batch_size whose peak fits the
device's free memory (torch.cuda.mem_get_info, plus what this process already holds): every
micro-batch the same shape (one cuDNN tuning, equal BatchNorm groups). `hms plan` prints each
member's peak and micro-batch for CARDS."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from hms import config as C
from hms.data import schema
from hms.signal.montage import montage_names
from hms.utils import atomic_write_json

GB = 1e9
CARDS_GB = (24, 40, 80)  # the cards `hms plan` sizes every member for (RTX 3090/4090, A100 40 GB, A100/H100 80 GB)
FRAGMENTATION = 0.25
WORKSPACE_BYTES = 1.5e9
HALF_PRECISION_FACTOR = 0.5  # saved bytes under bf16/fp16 autocast against fp32
BYTES_PER_PARAMETER = {"weights": 4, "gradients": 4, "adamw": 8}
EMA_BYTES, AUTOCAST_COPY_BYTES = 4, 2
BENCH_FILE = Path("bench") / "train.jsonl"  # under $HMS_WORK_DIR: `hms bench train` results (hms.jobs.throughput writes and reads them)
SAVED_BYTES_FILE = Path("bench") / "saved_bytes.json"  # under $HMS_WORK_DIR: measure()'s counts by network
# what a bench result keeps for the memory model (hms.jobs.throughput.save_train_bench writes them)
MEMORY_BENCH_KEYS = ("peak_memory_bytes", "micro_batch", "precision", "parameters", "channels_last",
                     "infer_samples_per_s")


def random_batch(cfg: DictConfig, n: int) -> dict:
    """A batch of n random items shaped as the loader ships them (EEG-scale signals)."""
    return {"signal": 30 * torch.randn(n, len(montage_names(cfg.signal.extras)), schema.EEG_WINDOW_SAMPLES),
            "spec": torch.rand(n, len(schema.CHAIN_NAMES), schema.SPEC_N_FREQS, schema.SPEC_WINDOW_FRAMES),
            "target": torch.full((n, schema.N_CLASSES), 1 / schema.N_CLASSES), "weight": torch.ones(n)}


def saved_bytes(net: torch.nn.Module, batch: dict) -> int:
    """Bytes of the distinct storages autograd saves for backward in one forward of `net` on
    `batch` (parameters left out: they are counted as static memory)."""
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    seen: dict[int, int] = {}
    kept = []  # holding the saved tensors keeps their addresses unique while we count

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and t.device.type != "meta":
            seen[ptr] = max(seen.get(ptr, 0), storage.nbytes())
        kept.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(batch)
    kept.clear()
    return sum(seen.values())


def _plain_network_cfg(cfg: DictConfig) -> DictConfig:
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    if "pretrained" in cfg.model:
        cfg.model.pretrained = False  # never fetch weights to count bytes
    return cfg


_measured: dict[str, tuple[float, int]] = {}
NOT_NETWORK = ("name", "train", "paths", "device", "seed", "augment", "labels", "folds", "infer", "ensemble")


def measure(cfg: DictConfig) -> tuple[float, int]:
    """(fp32 bytes saved for backward per sample, trainable parameters) of the config's network
    in training mode, batch 1 on the CPU. Kept per network within a process (the bench's variants
    of a member share it) and in the work dir's SAVED_BYTES_FILE: MixNet-XL's count takes ~10 CPU-s
    and ~5 GB of host memory, which every run of `hms run` on every GPU would otherwise repeat."""
    from hms.models.network import build_network

    yaml = OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, [k for k in cfg if k not in NOT_NETWORK]), resolve=True)
    key = hashlib.sha1(f"{yaml}torch {torch.__version__}".encode()).hexdigest()[:16]
    if key not in _measured:
        path = C.work_dir(cfg) / SAVED_BYTES_FILE
        stored = json.loads(path.read_text()) if path.is_file() else {}
        if key not in stored:
            plain = _plain_network_cfg(cfg)
            torch.manual_seed(0)
            net = build_network(plain).train()
            n_params = sum(p.numel() for p in net.parameters() if p.requires_grad)
            stored[key] = [float(saved_bytes(net, random_batch(plain, 1))) if n_params else 0.0, n_params]
            if C.work_dir(cfg).is_dir():
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json(path, {**(json.loads(path.read_text()) if path.is_file() else {}), key: stored[key]})
        _measured[key] = (float(stored[key][0]), int(stored[key][1]))
    return _measured[key]


def half_precision(precision: str) -> bool:
    return precision in ("bf16", "fp16", "auto")


@dataclass
class MemoryModel:
    """A member's training memory: peak(micro) in bytes."""
    name: str
    batch_size: int
    parameters: int
    static_bytes: float
    per_sample_bytes: float  # activations (fp32-measured, scaled to the precision) with the margin
    measured: dict | None = None  # the bench line whose peak this uses

    def peak(self, micro: int) -> float:
        if self.measured:
            m0, peak0 = int(self.measured["micro_batch"]), float(self.measured["peak_memory_bytes"])
            return self.static_bytes + max(0.0, peak0 - self.static_bytes) * micro / m0
        return self.static_bytes + micro * self.per_sample_bytes + WORKSPACE_BYTES

    @property
    def source(self) -> str:
        if self.measured:
            return f"measured on {self.measured.get('device_name', '?')} at micro-batch {self.measured['micro_batch']}"
        return "estimated (CPU saved-tensor count)"

    def micro_batch_for(self, available_bytes: float) -> int | None:
        """The largest divisor of the batch whose peak fits, None when not even 1 does."""
        for m in sorted((d for d in range(1, self.batch_size + 1) if self.batch_size % d == 0), reverse=True):
            if self.peak(m) <= available_bytes:
                return m
        return None


def measured_peak(cfg: DictConfig, name: str, precision: str) -> dict | None:
    """The latest `hms bench train` line for this experiment with a peak at this precision class."""
    path = C.work_dir(cfg) / BENCH_FILE
    found = None
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("experiment") == name and r.get("peak_memory_bytes") and r.get("micro_batch") \
                and half_precision(str(r.get("precision", "fp16"))) == half_precision(precision):
            found = r
    return found


def memory_model(cfg: DictConfig, precision: str = "auto", use_measured: bool = True) -> MemoryModel:
    """precision: the resolved one on a device, or auto (16-bit: what a GPU trains in). The CPU
    forward that counts saved bytes runs only when no measured peak exists."""
    name = str(cfg.get("name") or "experiment")
    measured = measured_peak(cfg, name, precision) if use_measured else None
    if measured and measured.get("parameters"):
        saved, n_params = 0.0, int(measured["parameters"])
    else:
        saved, n_params = measure(cfg)
    per_param = sum(BYTES_PER_PARAMETER.values()) + (EMA_BYTES if float(cfg.train.ema or 0) else 0)
    if half_precision(precision):
        per_param += AUTOCAST_COPY_BYTES
        saved *= HALF_PRECISION_FACTOR
    return MemoryModel(name, int(cfg.train.batch_size), n_params, float(n_params * per_param),
                       saved * (1 + FRAGMENTATION), measured)


def check_micro_batch(cfg: DictConfig) -> int | str:
    """train.micro_batch: null (the whole batch), auto, or an int in 1..train.batch_size."""
    value, batch = cfg.train.get("micro_batch"), int(cfg.train.batch_size)
    if value is None or value == "auto":
        return batch if value is None else "auto"
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= batch:
        raise C.ConfigError(f"train.micro_batch must be null, auto or an integer from 1 to train.batch_size "
                            f"({batch}), got {value!r}")
    return value


def free_bytes(device: torch.device) -> float:
    """What this process can still allocate on the device: the driver's free memory plus what
    torch's allocator already holds here (the network moved there, cached blocks)."""
    free, _ = torch.cuda.mem_get_info(device)
    return float(free + torch.cuda.memory_reserved(device))


def choose_micro_batch(cfg: DictConfig, device, precision: str, tag: str = "", say=print) -> int:
    """The micro-batch a run trains with, and (on CUDA) the line that sets it against the device's
    free memory. auto on the CPU: the whole batch (host memory is not what runs out)."""
    setting = check_micro_batch(cfg)
    device = torch.device(device)
    if device.type != "cuda":
        return int(cfg.train.batch_size) if setting == "auto" else setting
    model = memory_model(cfg, precision)
    free = free_bytes(device)
    micro = setting if setting != "auto" else model.micro_batch_for(free)
    if micro is None:
        raise C.ConfigError(f"{tag or model.name}: even a micro-batch of 1 needs ~{model.peak(1) / GB:.1f} GB "
                            f"({model.source}), over the {free / GB:.1f} GB free on {device}")
    steps = -(-model.batch_size // micro)
    say(f"[{tag or model.name}] memory: ~{model.peak(micro) / GB:.1f} GB peak at micro-batch {micro} "
        f"({'auto, ' if setting == 'auto' else ''}{steps} step{'s' if steps > 1 else ''} of accumulation per batch of "
        f"{model.batch_size}, {precision}; {model.source}) against {free / GB:.1f} GB free on {device}"
        + ("" if model.peak(micro) <= free else ": it may run out of memory (train.micro_batch: auto picks one that fits)"))
    return int(micro)


# ---------------------------------------------------------------- hms plan's hook

def card_table(cfgs: list[DictConfig]) -> dict[str, dict]:
    """Per stepped member: its peak at the configured micro-batch (or the whole batch) and the
    micro-batch `auto` picks on each of CARDS_GB, 16-bit AMP."""
    from hms.models.factory import fitted_once

    out = {}
    for cfg in cfgs:
        if fitted_once(cfg):
            continue
        model = memory_model(cfg, "auto")
        setting = check_micro_batch(cfg)
        micro = model.batch_size if setting == "auto" else setting
        out[str(cfg.name)] = {
            "batch": model.batch_size, "peak_gb": round(model.peak(micro) / GB, 1), "source": model.source,
            "activations_gb_per_sample": round(model.per_sample_bytes / GB, 3),
            "micro_batch": {str(gb): model.micro_batch_for(gb * GB) for gb in CARDS_GB}}
    return out


def plan_memory_lines(table: dict[str, dict]) -> list[str]:
    lines = []
    for name, m in table.items():
        cards = ", ".join(f"{gb} GB: {m['micro_batch'][str(gb)] or 'does not fit'}" for gb in CARDS_GB)
        lines.append(f"[hms plan] memory {name}: ~{m['peak_gb']:.1f} GB peak at batch {m['batch']} "
                     f"(16-bit AMP, {m['source']}); micro-batch with train.micro_batch: auto on {cards}")
    return lines
