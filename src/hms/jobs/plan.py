"""`hms plan`: what a set of experiments will cost, before anything trains and before any cache
is built. It reads train.csv and test.csv only (no parquet file is opened) and prints

  - every run of every experiment (CV folds x seeds, then the full-data fits: models/runs.py),
    the items each stage's epoch walks through (one item per eeg_id and vote vector, as
    inputs/dataset.py makes them) and the epochs per stage;
  - device time per member, from measured throughput: `hms bench train` results saved per device
    name under $HMS_WORK_DIR/bench/, then configs/throughput.yaml (README's H200 figures); a
    member with no measurement is scaled from a measured one by forward FLOPs;
  - totals on one GPU and on N GPUs (CV runs in parallel, one process per GPU);
  - the caches' disk space; the Kaggle notebook's time for ~2,000 test EEGs on a T4;

and, last, one JSON line. The main job (`hms run`) prints it first, and without explicit
configs stops when the estimate on this device is over STOP_HOURS.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from hms import config as C
from hms.cache.store import EEG_CACHE_SIGNALS, cache_rows  # the caches' own layout and arithmetic
from hms.data import io, labels, schema
from hms.data.folds import make_folds
from hms.data.validate import drop_excluded_rows
from hms.models.factory import fitted_once, model_input
from hms.signal.montage import montage_names
from hms.training.loop import stage_rows
from hms.training.memory import BENCH_FILE, MEMORY_BENCH_KEYS, card_table, plan_memory_lines
from hms.models.runs import RunSpec, cv_runs, full_runs, n_full_fits, n_seeds as configured_seeds, predicting_runs
from hms.utils import atomic_write_text

RECIPE_DIR = Path("configs/recipe")  # the competition recipe: the no-argument main job on a CUDA device
DEMO_DIR = Path("configs/demo")  # the CPU demo: the no-argument main job without one
STOP_HOURS = 3.0  # the no-argument main job stops before training when its plan exceeds this

# The EEG cache: one per dataset, shared by every member (hms.cache.store.EEG_CACHE_SIGNALS)
EEG_CACHE_COLUMNS = len(EEG_CACHE_SIGNALS)  # 19
CACHE_ITEM_BYTES = 2  # float16

# Inference items/s per training samples/s. A forward pass is about a third of a training
# step's FLOPs, but the loader and the spectrogram front end cost the same per item: 2, not 3.
INFER_SPEEDUP = 2.0
# The Kaggle notebook's T4 against the H200, used only when throughput.yaml has no timm_benchmark
# section to derive the T4 from (spec sheets: ~65 against ~990 dense fp16 tensor TFLOPS, 320 GB/s
# against 4.8 TB/s: both ~1/15).
T4_PER_H200 = 1 / 15
KAGGLE_TEST_EEGS = 2_000
# CPU seconds to read one test EEG and its spectrogram parquet and cache them, which the notebook
# does before predicting: `hms prepare --splits test --workers 1` took 7.1 s of CPU (user + sys,
# process start included) for 100 simulated test EEGs.
PREPARE_S_PER_TEST_EEG = 0.07
GPU_COUNTS = (2, 4, 8)  # totals printed for these GPU counts besides one

THROUGHPUT_FILE = "throughput.yaml"  # in the configs folder
SAME_FLOPS = 0.02  # a saved measurement counts for a config whose forward FLOPs are this close


# ---------------------------------------------------------------- devices and measured throughput

def device_name(device: str) -> str:
    """The name throughput is keyed by: the CUDA device's product name, or the CPU's threads."""
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu x{torch.get_num_threads()}"


NETWORK_SECTIONS = ("model", "image", "mel", "signal", "input", "context")  # what build_network reads
# network sections (YAML) -> (GFLOPs, the timm backbone's input height and width or None), within one process
_counted: dict[str, tuple[float, tuple[int, int] | None]] = {}


def _network_count(cfg: DictConfig) -> tuple[float, tuple[int, int] | None]:
    key = OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, [k for k in NETWORK_SECTIONS if k in cfg]), resolve=True)
    if key not in _counted:
        _counted[key] = _count_gflops(cfg)
    return _counted[key]


def forward_gflops(cfg: DictConfig) -> float:
    """The network's forward GFLOPs for one item: torch's flop counter (matmuls, convolutions,
    attention; not FFTs) on the CPU with random weights (never fetched: pretrained off)."""
    return _network_count(cfg)[0]


def backbone_input(cfg: DictConfig) -> tuple[int, int] | None:
    """Height and width of the image the network's timm backbone is given (whatever builds it:
    a mosaic, mels, the raw EEG as an image), seen in the same forward pass; None without one."""
    return _network_count(cfg)[1]


def _count_gflops(cfg: DictConfig) -> tuple[float, tuple[int, int] | None]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from hms.models.network import build_network

    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    if "pretrained" in cfg.model:
        cfg.model.pretrained = False
    net = build_network(cfg).eval()
    batch = {"signal": 30 * torch.randn(1, len(montage_names(cfg.signal.extras)), schema.EEG_WINDOW_SAMPLES),
             "spec": torch.rand(1, len(schema.CHAIN_NAMES), schema.SPEC_N_FREQS, schema.SPEC_WINDOW_FRAMES)}
    seen: list[tuple[int, int]] = []  # the first convolution inside a timm model: its stem
    hooks = [conv.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape[-2:])))
             for model in net.modules() if hasattr(model, "pretrained_cfg")
             for conv in model.modules() if isinstance(conv, torch.nn.Conv2d)]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(batch)
    for h in hooks:
        h.remove()
    return counter.get_total_flops() / 1e9, (seen[0] if seen else None)


def model_family(cfg: DictConfig) -> str:
    """What a FLOPs-scaled estimate takes its reference from first: a timm backbone (2D, however
    its image is made) or the repo's own 1D networks, whose FLOPs run at other rates."""
    return "timm" if "backbone" in cfg.model else "1d"


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


SOURCES = ("measured", "timm benchmark", "FLOPs")  # where a member's samples/s comes from, best first


@dataclass
class Speed:
    samples_per_s: float
    how: str
    source: str  # one of SOURCES

    @property
    def measured(self) -> bool:
        return self.source == "measured"


def _same_flops(r: Reference, gflops: float) -> bool:
    return r.forward_gflops is not None and abs(r.forward_gflops - gflops) <= SAME_FLOPS * max(gflops, 1e-9)


def member_speed(name: str, gflops: float, family: str, refs: list[Reference],
                 timm: Speed | None = None) -> Speed:
    """Measured when `refs` has this experiment at these FLOPs, or another experiment of the same
    family at these FLOPs (the same network under other training settings); else `timm` (timm's
    published rate scaled to this device: timm_speed); else, last resort, a measured reference
    (same family first, nearest FLOPs) scaled by FLOPs, capped at the fastest member measured on
    the device (a light network is loader-bound, not FLOP-bound)."""
    for r in refs:
        if r.experiment == name and (r.forward_gflops is None or _same_flops(r, gflops)):
            return Speed(r.samples_per_s, f"measured on {r.device} ({r.where})", "measured")
    for r in refs:
        if r.family == family and _same_flops(r, gflops):
            return Speed(r.samples_per_s, f"measured on {r.device}: the same network as {r.experiment} "
                                          f"({r.where})", "measured")
    if timm is not None:
        return timm
    scalable = [r for r in refs if r.forward_gflops]
    if not scalable:
        raise C.ConfigError(f"no throughput measured on {refs[0].device if refs else 'this device'} to estimate "
                            f"{name!r} from: run `hms bench train CONFIG.yaml` here")
    same_family = [r for r in scalable if r.family == family] or scalable
    ref = min(same_family, key=lambda r: abs(math.log(r.forward_gflops / gflops)))
    fastest = max(r.samples_per_s for r in refs)
    sps = min(ref.samples_per_s * ref.forward_gflops / gflops, fastest)
    return Speed(sps, f"estimated from {ref.experiment} on {ref.device} by FLOPs, the last resort "
                      f"({_rate(ref.samples_per_s)}/s at {ref.forward_gflops:.3g} GFLOPs, this {gflops:.3g})", "FLOPs")


def timm_arch(cfg: DictConfig) -> str | None:
    """The timm architecture of a member's backbone (`mixnet_xl.ra_in1k` -> mixnet_xl)."""
    backbone = cfg.model.get("backbone")
    return str(backbone).split(".")[0] if backbone else None


def _timm_row(bench: dict, kind: str, arch: str | None) -> dict | None:
    return (bench.get(kind) or {}).get("models", {}).get(arch) if arch else None


def _per_pixels(row: dict, hw) -> float:
    """A timm row's samples/s at an input of hw pixels (throughput inversely to pixels)."""
    return row["samples_per_s"] * row["img_size"] ** 2 / (hw[0] * hw[1])


def timm_ratio(bench: dict, kind: str, anchor_samples_per_s: float) -> float:
    """The anchor experiment's measured samples/s over its timm row's, scaled to its input."""
    anchor = bench["anchor"]
    return anchor_samples_per_s / _per_pixels(_timm_row(bench, kind, anchor["model"]), anchor["input"])


def timm_speed(arch: str | None, hw, refs: list[Reference], table: dict) -> Speed | None:
    """timm's published samples/s for this backbone (the train table, else the infer one), scaled
    by pixels to this input and to the device by the anchor's ratio (timm_ratio); None when
    timm has no row for it, it has no image input, or the device has not measured the anchor."""
    bench = table.get("timm_benchmark")
    if not bench or hw is None:
        return None
    ref = next((r for r in refs if r.experiment == bench["anchor"]["experiment"]), None)
    for kind in ("train", "infer") if ref else ():
        row = _timm_row(bench, kind, arch)
        if row:
            ratio, src = timm_ratio(bench, kind, ref.samples_per_s), bench[kind]
            return Speed(_per_pixels(row, hw) * ratio,
                         f"timm benchmark: {arch} {_rate(row['samples_per_s'])}/s {kind} at {row['img_size']} px, "
                         f"batch {row['batch']} ({src['csv']}: {src['gpu']}, torch {src['torch']}) x pixels "
                         f"{row['img_size']}^2/({hw[0]} x {hw[1]}) x {ratio:.3g} ({ref.device} {ref.experiment} "
                         f"over timm {bench['anchor']['model']} {kind})", "timm benchmark")
    return None


# ---------------------------------------------------------------- the tables

@dataclass
class Tables:
    data_dir: Path
    train: pd.DataFrame  # train.csv less the rows validate.skip_bad excluded, with targets and folds
    test: pd.DataFrame


def read_tables(cfg: DictConfig) -> Tables:
    """train.csv and test.csv of the configured dataset, with targets and the folds training
    would make (computed here, written nowhere)."""
    data_dir = C.data_dir(cfg)
    if not (data_dir / schema.TRAIN_CSV).is_file():
        raise FileNotFoundError(f"{data_dir / schema.TRAIN_CSV} not found: `hms download` (real data), or "
                                f"`hms synth --out {C.synthetic_data_dir()}` (the embedded dataset the main job makes)")
    train = drop_excluded_rows(io.read_train_csv(data_dir / schema.TRAIN_CSV), C.work_dir(cfg))
    folds = make_folds(train, cfg.folds.n_folds, cfg.folds.seed, cfg.folds.get("method", "group"))
    train = labels.add_targets(train).merge(folds[["eeg_id", "fold"]], on="eeg_id", how="left")
    return Tables(data_dir, train, io.read_test_csv(data_dir / schema.TEST_CSV))


def item_count(rows: pd.DataFrame) -> int:
    """Items training makes of these rows: one per eeg_id and (normalised) vote vector."""
    return int(len(rows.drop_duplicates(["eeg_id", *schema.VOTE_COLUMNS])))


# ---------------------------------------------------------------- runs and members

@dataclass
class RunPlan:
    name: str
    stage_items: list[int]
    stage_epochs: list[int]
    val_items: int  # 0 for a full fit
    test_items: int
    full: bool
    seconds: float = 0.0  # on the plan's device
    gpu_seconds: float = 0.0  # on one GPU


@dataclass
class MemberPlan:
    name: str
    kind: str  # image | signal | fitted once
    runs: list[RunPlan]
    tta: int
    predicting_runs: int
    gflops: float | None = None
    here: Speed | None = None
    gpu: Speed | None = None
    t4_infer_per_s: float | None = None  # the Kaggle notebook's T4 (t4_rate); fitted once: None
    t4_how: str = ""


def run_plans(cfg: DictConfig, tables: Tables, counts: dict) -> list[RunPlan]:
    """Every run with its items per stage (memoised in `counts`: folds repeat across seeds and
    experiments). Full fits: the configured epochs, an upper bound on what the CV runs' best
    epochs will give them."""
    fitted = fitted_once(cfg)
    stages = list(cfg.train.stages)[:1] if fitted else list(cfg.train.stages)  # fitted once: the first stage's rows
    epochs = [1] if fitted else [int(s.epochs) for s in stages]
    min_votes = int(cfg.labels.min_votes_high)
    runs: list[RunSpec] = cv_runs(cfg) + full_runs(cfg, epochs)

    def count(fold, rows_kind):
        key = (fold, rows_kind, min_votes, cfg.folds.n_folds)
        if key not in counts:
            train = tables.train
            if rows_kind == "val":
                rows = train[train.fold == fold]
            else:
                rows = stage_rows(train if fold is None else train[train.fold != fold],
                                  OmegaConf.create({"rows": rows_kind}), min_votes)
            counts[key] = item_count(rows)
        return counts[key]

    return [RunPlan(r.name, [count(r.fold, s.rows) for s in stages], list(r.stage_epochs or epochs),
                    0 if r.is_full else count(r.fold, "val"), len(tables.test), r.is_full) for r in runs]


def run_seconds(run: RunPlan, samples_per_s: float, tta: int, fitted: bool) -> float:
    """Training epochs at samples/s; validation every epoch, the TTA OOF and the test
    predictions at INFER_SPEEDUP times that. A fitted-once member: items/s through a whole run."""
    if fitted:
        return (run.stage_items[0] + run.val_items + run.test_items) / samples_per_s
    train = sum(n * e for n, e in zip(run.stage_items, run.stage_epochs)) / samples_per_s
    infer_items = run.val_items * (sum(run.stage_epochs) + tta) + run.test_items * tta
    return train + infer_items / (samples_per_s * INFER_SPEEDUP)


def tree_speed(name: str, cfg: DictConfig, table: dict) -> Speed:
    entry = table.get("fitted_once", {}).get(str(cfg.model.kind))
    if not entry or not entry.get("items_per_s"):
        raise C.ConfigError(f"{name}: no items/s for model kind {cfg.model.kind!r} under fitted_once in "
                            f"{C.config_dir() / THROUGHPUT_FILE}")
    return Speed(float(entry["items_per_s"]), f"measured on the CPU ({entry['source']})", "measured")


def member_plan(cfg: DictConfig, tables: Tables, counts: dict, refs_here, refs_gpu,
                table: dict) -> MemberPlan:
    fitted = fitted_once(cfg)
    runs = run_plans(cfg, tables, counts)
    tta = 2 if cfg.infer.tta_lr_swap else 1
    all_specs = cv_runs(cfg) + full_runs(cfg, [])
    m = MemberPlan(str(cfg.name), "fitted once" if fitted else model_input(cfg.model), runs, tta,
                   len(predicting_runs(cfg, all_specs)))
    if fitted:
        m.here = m.gpu = tree_speed(m.name, cfg, table)
    else:
        m.gflops, hw, arch = forward_gflops(cfg), backbone_input(cfg), timm_arch(cfg)
        family = model_family(cfg)
        m.here = member_speed(m.name, m.gflops, family, refs_here, timm_speed(arch, hw, refs_here, table))
        m.gpu = m.here if refs_gpu is refs_here else member_speed(m.name, m.gflops, family, refs_gpu,
                                                                  timm_speed(arch, hw, refs_gpu, table))
        m.t4_infer_per_s, m.t4_how = t4_rate(arch, hw, m.gpu, table)
    for r in runs:
        r.seconds = run_seconds(r, m.here.samples_per_s, tta, fitted)
        r.gpu_seconds = run_seconds(r, m.gpu.samples_per_s, tta, fitted)
    return m


def makespan(seconds: list[float], n: int) -> float:
    """Wall time of independent runs on n workers, longest first onto the least loaded one."""
    load = [0.0] * max(1, n)
    for s in sorted(seconds, reverse=True):
        load[load.index(min(load))] += s
    return max(load)


def parallel_hours(member: MemberPlan, n: int) -> float:
    """On n GPUs: the CV runs in parallel, then the full fits (they wait for the CV runs' best epochs)."""
    cv = makespan([r.gpu_seconds for r in member.runs if not r.full], n)
    return (cv + makespan([r.gpu_seconds for r in member.runs if r.full], n)) / 3600


def t4_rate(arch: str | None, hw, gpu: Speed, table: dict) -> tuple[float, str]:
    """Inference items/s on the Kaggle notebook's T4, never above the GPU plan's inference rate:
    timm's published inference row for this backbone (pixel-scaled) x t4_per_infer_gpu where
    there is one; else the GPU plan's inference rate x the T4/H200 ratio those figures give the
    anchor (timm's anchor row on the T4 over the anchor's H200 inference); without a
    timm_benchmark section, x T4_PER_H200 (spec sheets)."""
    h200 = gpu.samples_per_s * INFER_SPEEDUP
    bench = table.get("timm_benchmark")
    if not bench:
        return h200 * T4_PER_H200, f"H200 inference x {T4_PER_H200:.3g} (spec sheets)"
    per_gpu = float(bench["t4_per_infer_gpu"])
    row = _timm_row(bench, "infer", arch)
    if row and hw is not None:
        return min(h200, _per_pixels(row, hw) * per_gpu), (f"timm {arch} {bench['infer']['gpu']} inference at "
                                                           f"{hw[0]} x {hw[1]} x {per_gpu:g}")
    ratio = t4_per_h200(table)
    return h200 * ratio, f"GPU inference x {ratio:.3g} (the T4/H200 ratio of {bench['anchor']['model']})"


def t4_per_h200(table: dict) -> float:
    """The T4 against the reference H200 on the anchor: timm's anchor inference row on the T4
    (pixel-scaled to the anchor's input, x t4_per_infer_gpu) over the anchor's measured H200
    inference (training samples/s x INFER_SPEEDUP)."""
    bench = table["timm_benchmark"]
    anchor = bench["anchor"]
    h200 = table["devices"][table["gpu_reference"]]["experiments"][anchor["experiment"]]["samples_per_s"]
    t4 = _per_pixels(_timm_row(bench, "infer", anchor["model"]), anchor["input"]) * float(bench["t4_per_infer_gpu"])
    return t4 / (h200 * INFER_SPEEDUP)


def kaggle_t4_minutes(member: MemberPlan) -> float:
    """~2,000 test EEGs through every predicting run, with TTA, on a T4 (t4_rate)."""
    return member_t4_minutes(member, member.predicting_runs, member.tta)


def member_t4_minutes(member: MemberPlan, predicting: int, tta: int) -> float:
    if member.kind == "fitted once":
        return predicting * KAGGLE_TEST_EEGS / member.gpu.samples_per_s / 60
    return predicting * KAGGLE_TEST_EEGS * tta / member.t4_infer_per_s / 60


def notebook_prepare_minutes() -> float:
    """Reading and caching the test EEGs, before any prediction."""
    return KAGGLE_TEST_EEGS * PREPARE_S_PER_TEST_EEG / 60


# ---------------------------------------------------------------- caches

def cache_bytes(tables: Tables) -> dict[str, int]:
    """Bytes of the caches `hms prepare` writes for this dataset: each eeg_id's labelled span at
    200 Hz x EEG_CACHE_COLUMNS, each spectrogram_id's span of 2 s frames x 400 bins (train), the
    whole files (test), float16 (cache/store.py's spans and layout)."""
    out = {}
    for split, table in (("train", tables.train), ("test", tables.test)):
        for kind, columns in (("eeg", EEG_CACHE_COLUMNS), ("spec", len(schema.SPEC_COLUMNS))):
            out[f"{kind}_{split}"] = cache_rows(table, split, kind) * columns * CACHE_ITEM_BYTES
    return out


# ---------------------------------------------------------------- the plan

@dataclass
class Plan:
    members: list[MemberPlan]
    tables: Tables
    device: str
    here_is_gpu: bool
    gpu_device: str
    refs_note: str
    cache: dict[str, int]
    gpus: int = 1  # processes the main job will run (one per GPU)
    min_votes: int = 10  # labels.min_votes_high
    memory: dict = field(default_factory=dict)  # peak memory and micro-batch per card (hms.training.memory)

    @property
    def runs(self) -> int:
        return sum(len(m.runs) for m in self.members)

    @property
    def hours_here(self) -> float:
        """Wall hours on this machine: one process, or `gpus` in parallel on a GPU machine."""
        if self.here_is_gpu and self.gpus > 1:
            return sum(parallel_hours(m, self.gpus) for m in self.members)
        return sum(r.seconds for m in self.members for r in m.runs) / 3600

    def gpu_hours(self, n: int = 1) -> float:
        return sum(parallel_hours(m, n) for m in self.members)

    def summary(self) -> dict:
        return {
            "runs": self.runs, "gpu_hours_1": round(self.gpu_hours(1), 2),
            "gpu_hours_n": {str(n): round(self.gpu_hours(n), 2) for n in GPU_COUNTS},
            "gpu_device": self.gpu_device, "device": self.device, "hours_here": round(self.hours_here, 2),
            "cache_gb": round(sum(self.cache.values()) / 1e9, 2), "cache_bytes": self.cache,
            "kaggle_t4_minutes": round(self.kaggle_minutes(), 1),
            "members": {m.name: {"runs": len(m.runs), "gpu_hours": round(self.gpu_hours_of(m), 2),
                                 "hours_here": round(sum(r.seconds for r in m.runs) / 3600, 2),
                                 "samples_per_s": round(m.here.samples_per_s, 1), "measured": m.here.measured,
                                 "source": m.here.source, "gpu_samples_per_s": round(m.gpu.samples_per_s, 1),
                                 "gpu_source": m.gpu.source,
                                 "gflops": None if m.gflops is None else round(m.gflops, 3)}
                        for m in self.members},
            "train_rows": len(self.tables.train), "eegs": int(self.tables.train.eeg_id.nunique()),
            "items": item_count(self.tables.train), "test_rows": len(self.tables.test),
            "memory": self.memory,
        }

    def gpu_hours_of(self, m: MemberPlan) -> float:
        return sum(r.gpu_seconds for r in m.runs) / 3600

    def kaggle_minutes(self) -> float:
        return notebook_prepare_minutes() + sum(kaggle_t4_minutes(m) for m in self.members)


def make_plan(cfgs: list[DictConfig], gpus: int = 1) -> Plan:
    """The plan for these experiment configs (named, as run_all.experiment_configs gives them)
    on the dataset and device of the first."""
    base = cfgs[0]
    device = C.resolve_device(base)
    here_is_gpu = device.startswith("cuda")
    table = throughput_table()
    here = device_name(device)
    refs_here = references(base, here, table)
    note, gpu_device = f"this device ({here}) has measured throughput", here if here_is_gpu else table["gpu_reference"]
    if not refs_here:
        ref_device = table["gpu_reference" if here_is_gpu else "cpu_reference"]
        refs_here = references(base, ref_device, table)
        note = (f"this device ({here}) has measured nothing: figures of the reference '{ref_device}' in "
                f"{THROUGHPUT_FILE} (`hms bench train CONFIG.yaml` here measures it)")
        gpu_device = f"{here} (at {ref_device} figures)" if here_is_gpu else gpu_device
    refs_gpu = refs_here if here_is_gpu else references(base, gpu_device, table)
    tables = read_tables(base)
    counts: dict = {}
    members = [member_plan(cfg, tables, counts, refs_here, refs_gpu, table) for cfg in cfgs]
    return Plan(members, tables, here, here_is_gpu, gpu_device, note, cache_bytes(tables), gpus,
                int(base.labels.min_votes_high), card_table(cfgs))


def _rate(per_s: float) -> str:
    return f"{per_s:,.0f}" if per_s >= 100 else f"{per_s:.3g}"


def _h(hours: float) -> str:
    return f"{hours:.2f} h" if hours < 10 else f"{hours:.1f} h"


def plan_lines(plan: Plan) -> list[str]:
    t = plan.tables
    high = labels.high_vote_mask(t.train, plan.min_votes)
    lines = [f"[hms plan] dataset {t.data_dir}: {len(t.train):,} train rows, {t.train.eeg_id.nunique():,} EEGs, "
             f"{t.train.patient_id.nunique():,} patients, {item_count(t.train):,} items ({item_count(t.train[high]):,} "
             f"with >= {plan.min_votes} votes); test.csv {len(t.test):,} row{'' if len(t.test) == 1 else 's'}",
             f"[hms plan] device {plan.device}: {plan.refs_note}"]
    for m in plan.members:
        lines.append(f"[hms plan] {m.name} ({m.kind}"
                     + (f", {m.gflops:.3g} forward GFLOPs/item" if m.gflops is not None else "")
                     + f"): {len(m.runs)} runs, {_rate(m.here.samples_per_s)} {'items' if m.gflops is None else 'samples'}"
                     f"/s here [{m.here.source}], {m.here.how}"
                     + ("" if m.gpu is m.here else f"; GPU {_rate(m.gpu.samples_per_s)}/s [{m.gpu.source}], {m.gpu.how}"))
        for r in m.runs:
            stages = " + ".join(f"{n:,} x {e}" for n, e in zip(r.stage_items, r.stage_epochs))
            val = f", val {r.val_items:,}" if r.val_items else ""
            lines.append(f"    {r.name:14s} items x epochs {stages}{val}, test {r.test_items:,}: "
                         f"{_h(r.seconds / 3600)} here, {_h(r.gpu_seconds / 3600)} on one {plan.gpu_device}")
    lines.append(f"[hms plan] per member, hours here / on one {plan.gpu_device}: "
                 + ", ".join(f"{m.name} {sum(r.seconds for r in m.runs) / 3600:.2f} / {plan.gpu_hours_of(m):.2f}"
                             for m in plan.members))
    lines.append(f"[hms plan] total: {plan.runs} runs, {_h(plan.hours_here)} on this device ({plan.device}"
                 + (f", {plan.gpus} GPUs" if plan.here_is_gpu and plan.gpus > 1 else ", one process") + "); "
                 f"{plan.gpu_device}: 1 GPU {_h(plan.gpu_hours(1))}, "
                 + ", ".join(f"{n} GPUs {_h(plan.gpu_hours(n))}" for n in GPU_COUNTS)
                 + " (CV runs in parallel, one process per GPU, then the full fits)")
    c = plan.cache
    lines.append(f"[hms plan] caches (one per dataset, float16): EEG {EEG_CACHE_COLUMNS} columns "
                 f"{(c['eeg_train'] + c['eeg_test']) / 1e9:.2f} GB, spectrograms "
                 f"{(c['spec_train'] + c['spec_test']) / 1e9:.2f} GB (test {(c['eeg_test'] + c['spec_test']) / 1e9:.3f} GB"
                 f" of them): {sum(c.values()) / 1e9:.2f} GB")
    lines.append(f"[hms plan] Kaggle notebook, ~{KAGGLE_TEST_EEGS:,} test EEGs on a T4: ~{plan.kaggle_minutes():.0f} min "
                 f"(an estimate, reading {PREPARE_S_PER_TEST_EEG} s per EEG; T4 items/s: "
                 + ", ".join(f"{m.name} {_rate(m.t4_infer_per_s)} ({m.t4_how})" for m in plan.members
                             if m.t4_infer_per_s) + ")")
    lines += plan_memory_lines(plan.memory)
    lines.append("[hms plan] upper bounds: every stage runs its configured epochs (early stopping and the full fits' "
                 f"CV-derived length cut them); inference at {INFER_SPEEDUP:g}x the training rate; no cache build time")
    return lines


def print_plan(plan: Plan, cfgs: list[DictConfig] | None = None, selection: "Selection | None" = None) -> None:
    """The plan's lines, then, with a selection (select), what the budget trains and leaves out;
    last the JSON line (with the selection's budget_hours, chosen, left_out, ...)."""
    for line in plan_lines(plan) + (budget_lines(plan, cfgs, selection) if selection else []):
        print(line)
    print(json.dumps({**plan.summary(), **(budget_summary(plan, cfgs, selection) if selection else {})}), flush=True)


# ---------------------------------------------------------------- the main job's choice and stop

def is_simulated(data_dir: Path) -> bool:
    """The embedded dataset (input/synthetic, made by the main job when nothing else is there) or
    any simulated one (`hms synth`, --like-kaggle too): the simulator writes its hidden answers
    beside the tables (schema.ANSWERS_DIR), which the competition's data never has."""
    return Path(data_dir).resolve() == C.synthetic_data_dir().resolve() or (Path(data_dir) / schema.ANSWERS_DIR).is_dir()


@dataclass
class MainJob:
    """What the no-argument main job trains, and how far: its first line says which and why."""
    files: list[str]
    line: str
    hours: float | None  # the budget (select); None: everything
    stop: bool  # stop when the plan is over STOP_HOURS here (check_budget)


def main_job_configs(device: str, data_dir: Path, hours: str | None = None, yes: bool = False) -> MainJob:
    """The competition recipe (RECIPE_DIR) with a CUDA device and the real data, trained to a
    budget: NIGHT_HOURS unless --hours says (--hours all or --yes: the whole recipe). Else the
    demo (DEMO_DIR): on simulated data on any device (the recipe waits for `hms download`), and on
    a CPU, where it stops over STOP_HOURS (--yes goes on, --hours H trains what fits in H)."""
    recipe = sorted(str(p) for p in RECIPE_DIR.glob("*.yaml"))
    demo = sorted(str(p) for p in DEMO_DIR.glob("*.yaml"))
    cuda, simulated = device.startswith("cuda"), is_simulated(data_dir)
    if cuda and recipe and not simulated:
        budget = None if yes else parse_hours(hours) if hours is not None else NIGHT_HOURS
        said = ("the whole recipe" + (" (--yes)" if yes else " (--hours all)") if budget is None else
                f"to a budget of {budget:g} h" + ("" if hours is not None else " (one night)"))
        return MainJob(recipe, f"[hms] CUDA device {device_name(device)} and the real data in {data_dir}: training "
                               f"the competition recipe ({RECIPE_DIR}/, {len(recipe)} experiments) {said}, its most "
                               "valuable members first; change it with --hours H, or --hours all for the whole "
                               "recipe", budget, False)
    why = (f"the simulated dataset {data_dir} (the recipe waits for the real data: `hms download`)" if simulated else
           f"no {RECIPE_DIR}/ here" if cuda else f"no CUDA device (device {device})")
    budget = parse_hours(hours)
    limit = (f"to a budget of {budget:g} h (--hours)" if budget is not None else
             "to the end (--yes)" if yes else f"stopping first if its plan is over {STOP_HOURS:g} h here "
             "(--yes trains it anyway, --hours H the part that fits in H hours)")
    return MainJob(demo, f"[hms] {why}: training the demo ({DEMO_DIR}/, {len(demo)} experiments) {limit}; "
                         "name configs to train others, e.g. `hms run configs/recipe/*.yaml`",
                   budget, not yes and budget is None)


def main_job(overrides: list[str], hours: str | None = None, yes: bool = False) -> MainJob:
    """The no-argument main job for this machine and dataset; prints its first line."""
    cfg = C.load_config([], list(overrides))
    job = main_job_configs(C.resolve_device(cfg), C.data_dir(cfg), hours, yes)
    print(job.line, flush=True)
    return job


class PlanTooLong(RuntimeError):
    """The no-argument main job's plan is over STOP_HOURS on this device."""


def check_budget(plan: Plan, limit_hours: float = STOP_HOURS) -> None:
    if plan.hours_here <= limit_hours:
        return
    raise PlanTooLong(
        f"the plan's estimate on this device ({plan.device}) is {_h(plan.hours_here)} for {plan.runs} runs, over "
        f"the main job's {limit_hours:g} h: stopped before building caches or training. Ways on:\n"
        "  --yes: train this plan anyway (`hms run --yes`, `bash scripts/train_all_folds.sh --yes`)\n"
        "  --hours H: train its most valuable whole members that fit in H hours here\n"
        "  explicit configs: train the experiments you name, no limit (`hms run CONFIG.yaml ...`, e.g. "
        f"`bash scripts/train_all_folds.sh {DEMO_DIR}/conv1d.yaml`)")


# ---------------------------------------------------------------- the budget: what fits in H hours

UNIFORM_KL = 1.09  # the uniform prediction's public KL (top-recipes.md): a member's value is its gain over it
NIGHT_HOURS = 10.0  # the no-argument main job's default budget on a CUDA device with the real data
NOTEBOOK_MINUTES = 300.0  # the default limit on the Kaggle notebook's estimate (Kaggle stops it at 9 h)


def member_value(cfg: DictConfig) -> float:
    """UNIFORM_KL - the member's published single-model KL (published.kl); 0 without one."""
    kl = (cfg.get("published") or {}).get("kl")
    return 0.0 if kl is None else max(0.0, UNIFORM_KL - float(kl))


def run_seed(run: RunPlan) -> int:
    return int(run.name.split("-seed")[1]) if "-seed" in run.name else 0


@dataclass
class Unit:
    """What the budget takes or leaves whole: one seed of a member over every fold, or its full fits."""
    member: str
    what: str  # "seed S" | "full fits"
    runs: list[RunPlan]
    value: float  # the member's (member_value)
    hours: float = 0.0  # what it adds to the selection's hours (the selection's order)

    @property
    def label(self) -> str:
        return f"{self.member} {self.what} ({len(self.runs)} runs)"


def member_units(m: MemberPlan, value: float) -> list[Unit]:
    """Seed 0's CV runs, then the full fits, then each further seed's CV runs."""
    seeds = sorted({run_seed(r) for r in m.runs if not r.full})
    units = [Unit(m.name, f"seed {s}", [r for r in m.runs if not r.full and run_seed(r) == s], value) for s in seeds]
    full = [r for r in m.runs if r.full]
    return units[:1] + ([Unit(m.name, "full fits", full, value)] if full else []) + units[1:]


def selection_hours(plan: Plan, runs: list[RunPlan], on_gpu: bool = False) -> float:
    """Wall hours of these runs on this machine's slots (plan.hours_here's arithmetic: each
    member's CV runs in parallel, then its full fits), or with on_gpu on plan.gpus of the plan's
    GPU (a preview of `hms run` there from another machine)."""
    n = plan.gpus if plan.here_is_gpu or on_gpu else 1
    chosen = {id(r) for r in runs}
    return sum(makespan([r.gpu_seconds if on_gpu else r.seconds for r in m.runs if id(r) in chosen and r.full == full], n)
               for m in plan.members for full in (False, True)) / 3600


@dataclass
class Selection:
    """The part of a plan that fits a budget: whole units in value order (Budget.order)."""
    hours: float | None  # the budget; None: everything (--hours all)
    chosen: list[Unit]
    left_out: list[Unit]
    overrides: dict[str, list[str]]  # per chosen member: key=value making `hms run` train exactly its units
    order: list[Unit]  # every unit, in budget_order
    on_gpu: bool = False  # hours on plan.gpus of the plan's GPU, not this machine's (selection_hours)
    notebook_limit: float = NOTEBOOK_MINUTES
    notebook_choices: list[str] = field(default_factory=list)  # "member: key=value", the notebook limit's

    @property
    def members(self) -> list[str]:
        return list(dict.fromkeys(u.member for u in self.chosen))


def budget_order(plan: Plan, values: dict[str, float], on_gpu: bool = False) -> list[Unit]:
    """Every member's seed 0 over every fold first, by value per hour of it (value: member_value;
    equal values: the cheaper first), then the full fits, then the second seeds, ..., members in
    that same order."""
    units = {m.name: member_units(m, values[m.name]) for m in plan.members}
    first = sorted((u[0] for u in units.values()),
                   key=lambda u: (-u.value / max(selection_hours(plan, u.runs, on_gpu), 1e-9),
                                  selection_hours(plan, u.runs, on_gpu)))
    order = [u.member for u in first]
    later = [u for name in order for u in units[name][1:]]
    return first + sorted(later, key=lambda u: (u.what != "full fits", u.what, order.index(u.member)))


def select(plan: Plan, cfgs: list[DictConfig], hours: float | None,
           notebook_limit: float = NOTEBOOK_MINUTES, on_gpu: bool = False) -> Selection:
    """Take units in budget_order while the selection's hours stay within `hours` (a unit that does
    not fit is left out and the next is tried; a member's later units only with its seed 0, and
    seed s only after seed s - 1); then the notebook's choices (notebook_choices)."""
    values = {str(c.name): member_value(c) for c in cfgs}
    chosen, left = [], []
    order = budget_order(plan, values, on_gpu)
    for u in order:
        have = [c.what for c in chosen if c.member == u.member]
        seed = int(u.what.split()[1]) if u.what.startswith("seed") else None
        after = "seed 0" in have and (seed is None or f"seed {seed - 1}" in have) or seed == 0
        total = selection_hours(plan, [r for c in chosen + [u] for r in c.runs], on_gpu)
        if after and (hours is None or total <= hours):
            u.hours = total - selection_hours(plan, [r for c in chosen for r in c.runs], on_gpu)
            chosen.append(u)
        else:
            u.hours = selection_hours(plan, u.runs, on_gpu)
            left.append(u)
    overrides = {}
    for cfg in cfgs:
        mine = [u for u in chosen if u.member == cfg.name]
        if mine:
            n_seeds = sum(u.what.startswith("seed") for u in mine)
            full = sum(len(u.runs) for u in mine if u.what == "full fits")
            overrides[str(cfg.name)] = [f"train.{k}={v}" for k, v, old in
                                        (("n_seeds", n_seeds, configured_seeds(cfg)),
                                         ("full_fits", full, n_full_fits(cfg))) if int(old) != v]
    s = Selection(hours, chosen, left, overrides, order, on_gpu, notebook_limit)
    notebook_choices(plan, cfgs, s)
    return s


def selected_t4_minutes(m: MemberPlan, cfg: DictConfig, s: Selection) -> float:
    """The notebook's minutes for this member's chosen runs under its chosen overrides."""
    if m.name not in s.overrides:
        return 0.0
    sel = OmegaConf.merge(cfg, OmegaConf.from_dotlist(s.overrides[m.name]))
    predicting = len(predicting_runs(sel, cv_runs(sel) + full_runs(sel, [])))
    tta = 2 if sel.infer.tta_lr_swap and m.kind != "fitted once" else 1
    return member_t4_minutes(m, predicting, tta)


def selection_notebook_minutes(plan: Plan, cfgs: list[DictConfig], s: Selection) -> float:
    by_name = {str(c.name): c for c in cfgs}
    return notebook_prepare_minutes() + sum(selected_t4_minutes(m, by_name[m.name], s) for m in plan.members)


def notebook_choices(plan: Plan, cfgs: list[DictConfig], s: Selection) -> None:
    """While the notebook's estimate is over its limit, take the choice that cuts it, members with
    the most notebook minutes first: the full fits alone predict the test (train.test_runs=full,
    where a member has full fits), then no left/right TTA (infer.tta_lr_swap=false)."""
    by_name = {str(c.name): c for c in cfgs}
    for key, value, applies in (("train.test_runs", "full", lambda c: c.train.get("test_runs", "all") == "all"
                                 and n_full_fits(OmegaConf.merge(c, OmegaConf.from_dotlist(s.overrides[c.name]))) > 0),
                                ("infer.tta_lr_swap", "false", lambda c: bool(c.infer.tta_lr_swap))):
        for m in sorted((m for m in plan.members if m.name in s.overrides and m.kind != "fitted once"),
                        key=lambda m: -selected_t4_minutes(m, by_name[m.name], s)):
            if selection_notebook_minutes(plan, cfgs, s) <= s.notebook_limit:
                return
            if applies(by_name[m.name]) and f"{key}={value}" not in s.overrides[m.name]:
                s.overrides[m.name].append(f"{key}={value}")
                s.notebook_choices.append(f"{m.name}: {key}={value}")


def budget_lines(plan: Plan, cfgs: list[DictConfig], s: Selection) -> list[str]:
    budget = "all (--hours all)" if s.hours is None else f"{s.hours:g} h"
    n = plan.gpus if plan.here_is_gpu or s.on_gpu else 1
    where = f"{n} x {plan.gpu_device} (--on-gpu)" if s.on_gpu else f"this device ({plan.device}" + (
        f", {n} GPUs)" if n > 1 else ", one process)")
    lines = [f"[hms plan] budget {budget} on {where}; order: each member's seed 0 over every fold by value per hour "
             f"(value = {UNIFORM_KL} - its published KL), then full fits, then further seeds; a member is trained "
             "whole or left out; hours: what each unit adds"]
    lines += [f"    {'train    ' if u in s.chosen else 'leave out'} {u.label}: {_h(u.hours)} (value {u.value:.3f})"
              for u in s.order]
    used = selection_hours(plan, [r for u in s.chosen for r in u.runs], s.on_gpu)
    if not s.chosen:
        cheapest = min(selection_hours(plan, member_units(m, 0)[0].runs, s.on_gpu) for m in plan.members)
        lines.append(f"[hms plan] nothing fits: the budget {budget} is below the cheapest member's seed 0 "
                     f"({_h(cheapest)} here): nothing to train (--hours {math.ceil(cheapest * 10) / 10:g} or more)")
    else:
        lines.append(f"[hms plan] budget: {len(s.members)} members, {sum(len(u.runs) for u in s.chosen)} runs, "
                     f"{_h(used)} on {where.split(' (')[0]}; left out {len(s.left_out)} units")
    minutes = selection_notebook_minutes(plan, cfgs, s)
    lines.append(f"[hms plan] Kaggle notebook of this selection: ~{minutes:.0f} min against the limit "
                 f"{s.notebook_limit:g} min (--notebook-minutes)"
                 + (f"; choices to fit it: {', '.join(s.notebook_choices)}" if s.notebook_choices else "")
                 + ("; STILL OVER: leave a member out or raise the limit" if minutes > s.notebook_limit else ""))
    return lines


def budget_summary(plan: Plan, cfgs: list[DictConfig], s: Selection) -> dict:
    return {"budget_hours": s.hours, "chosen": [u.label for u in s.chosen], "left_out": [u.label for u in s.left_out],
            "budget_used_hours": round(selection_hours(plan, [r for u in s.chosen for r in u.runs], s.on_gpu), 2),
            "member_overrides": s.overrides, "notebook_limit_minutes": s.notebook_limit,
            "notebook_minutes": round(selection_notebook_minutes(plan, cfgs, s), 1),
            "notebook_choices": s.notebook_choices}


def parse_hours(text: str | None) -> float | None:
    """--hours: a positive number, or `all` (None: no budget)."""
    if text is None or str(text).lower() == "all":
        return None
    try:
        hours = float(text)
    except ValueError:
        raise C.ConfigError(f"--hours takes a number of hours or 'all', got {text!r}") from None
    if not hours > 0:
        raise C.ConfigError(f"--hours must be positive, got {text!r}")
    return hours


class NothingFits(PlanTooLong):
    """The budget is below the cheapest member's seed 0: nothing to train."""


def packaged_notebook_minutes(cfg: DictConfig, experiments: list[str]) -> tuple[float, str]:
    """The notebook's estimate for these trained experiments (every run that predicts, as the
    notebook loads them: training.runs.run_dirs; each run's own config for TTA and network) on the
    Kaggle T4 (kaggle_t4_minutes), and the choice that cuts it most, for `hms kaggle package`."""
    from hms.models.runs import run_dirs

    table = throughput_table()
    refs = references(cfg, table["gpu_reference"], table)
    minutes, cuts = notebook_prepare_minutes(), []
    for name in experiments:
        dirs = run_dirs(C.work_dir(cfg) / name)
        run_cfg = OmegaConf.load(dirs[0] / "config.yaml")
        fitted = fitted_once(run_cfg)
        m = MemberPlan(name, "fitted once" if fitted else model_input(run_cfg.model), [],
                       2 if run_cfg.infer.tta_lr_swap and not fitted else 1, len(dirs))
        if fitted:
            m.gpu = tree_speed(name, run_cfg, table)
        else:
            gflops, hw, arch = forward_gflops(run_cfg), backbone_input(run_cfg), timm_arch(run_cfg)
            m.gpu = member_speed(name, gflops, model_family(run_cfg), refs, timm_speed(arch, hw, refs, table))
            m.t4_infer_per_s, m.t4_how = t4_rate(arch, hw, m.gpu, table)
        mine = kaggle_t4_minutes(m)
        minutes += mine
        full = [d for d in dirs if d.name.startswith("full")]
        if full and len(full) < len(dirs):
            cuts.append((mine * (1 - len(full) / len(dirs)), f"{name}: train.test_runs=full (its {len(full)} full fits "
                         f"alone predict; `hms train CONFIG train.test_runs=full` re-collects its finished runs, then "
                         f"`hms ensemble`) saves ~{mine * (1 - len(full) / len(dirs)):.0f} min"))
        if m.tta == 2:
            cuts.append((mine / 2, f"{name}: infer.tta_lr_swap=false (no left/right TTA) saves ~{mine / 2:.0f} min"))
        cuts.append((mine, f"{name}: leaving it out of the ensemble saves ~{mine:.0f} min"))
    best = max(cuts, key=lambda c: c[0])[1] if cuts else "nothing to cut"
    return minutes, best
