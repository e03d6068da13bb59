"""`hms plan`: what a set of experiments will cost, before anything trains and before any cache
is built. It reads train.csv and test.csv only (no parquet file is opened) and prints

  - every run of every experiment (CV folds x seeds, then the full-data fits: training/runs.py),
    the items each stage's epoch walks through (one item per eeg_id and vote vector, as
    training/dataset.py makes them) and the epochs per stage;
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
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from hms import config as C
from hms.cache.store import EEG_CACHE_SIGNALS, _layout, spans  # the caches' own layout and arithmetic
from hms.data import io, labels, schema
from hms.data.folds import make_folds
from hms.data.validate import drop_excluded_rows
from hms.models.factory import fitted_once, model_input
from hms.signal.montage import montage_names
from hms.training.loop import stage_rows
from hms.training.memory import BENCH_FILE, MEMORY_BENCH_KEYS, card_table, plan_memory_lines
from hms.training.runs import RunSpec, cv_runs, full_runs, predicting_runs
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
# The Kaggle notebook's T4 against the H200 the figures come from. Spec sheets: ~65 against
# ~990 dense fp16 tensor TFLOPS, 320 GB/s against 4.8 TB/s: both ~1/15. Small models at batch
# 32 leave an H200 partly idle, so a measured ratio would likely be kinder: an upper bound.
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
_counted: dict[str, float] = {}  # network sections (YAML) -> GFLOPs, within one process


def forward_gflops(cfg: DictConfig) -> float:
    """The network's forward GFLOPs for one item: torch's flop counter (matmuls, convolutions,
    attention; not FFTs) on the CPU with random weights (never fetched: pretrained off)."""
    key = OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, [k for k in NETWORK_SECTIONS if k in cfg]), resolve=True)
    if key not in _counted:
        _counted[key] = _count_gflops(cfg)
    return _counted[key]


def _count_gflops(cfg: DictConfig) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from hms.training.network import build_network

    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    if "pretrained" in cfg.model:
        cfg.model.pretrained = False
    net = build_network(cfg).eval()
    batch = {"signal": 30 * torch.randn(1, len(montage_names(cfg.signal.extras)), schema.EEG_WINDOW_SAMPLES),
             "spec": torch.rand(1, len(schema.CHAIN_NAMES), schema.SPEC_N_FREQS, schema.SPEC_WINDOW_FRAMES)}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(batch)
    return counter.get_total_flops() / 1e9


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


@dataclass
class Speed:
    samples_per_s: float
    how: str
    measured: bool


def member_speed(name: str, gflops: float, family: str, refs: list[Reference]) -> Speed:
    """Measured when `refs` has this experiment at these FLOPs; else a measured reference (same
    family first, nearest FLOPs) scaled by FLOPs, capped at the fastest member measured on
    the device (a light network is loader-bound, not FLOP-bound)."""
    for r in refs:
        if r.experiment == name and (r.forward_gflops is None or
                                     abs(r.forward_gflops - gflops) <= SAME_FLOPS * max(gflops, 1e-9)):
            return Speed(r.samples_per_s, f"measured on {r.device} ({r.where})", True)
    scalable = [r for r in refs if r.forward_gflops]
    if not scalable:
        raise C.ConfigError(f"no throughput measured on {refs[0].device if refs else 'this device'} to estimate "
                            f"{name!r} from: run `hms bench train CONFIG.yaml` here")
    same_family = [r for r in scalable if r.family == family] or scalable
    ref = min(same_family, key=lambda r: abs(math.log(r.forward_gflops / gflops)))
    fastest = max(r.samples_per_s for r in refs)
    sps = min(ref.samples_per_s * ref.forward_gflops / gflops, fastest)
    return Speed(sps, f"estimated from {ref.experiment} on {ref.device} ({_rate(ref.samples_per_s)}/s at "
                      f"{ref.forward_gflops:.3g} GFLOPs, this {gflops:.3g})", False)


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
    return Speed(float(entry["items_per_s"]), f"measured on the CPU ({entry['source']})", True)


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
        m.gflops = forward_gflops(cfg)
        family = model_family(cfg)
        m.here = member_speed(m.name, m.gflops, family, refs_here)
        m.gpu = m.here if refs_gpu is refs_here else member_speed(m.name, m.gflops, family, refs_gpu)
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


def kaggle_t4_minutes(member: MemberPlan) -> float:
    """~2,000 test EEGs through every predicting run, with TTA, on a T4 (H200 figures x T4_PER_H200)."""
    if member.kind == "fitted once":
        return member.predicting_runs * KAGGLE_TEST_EEGS / member.gpu.samples_per_s / 60
    rate = member.gpu.samples_per_s * INFER_SPEEDUP * T4_PER_H200
    return member.predicting_runs * KAGGLE_TEST_EEGS * member.tta / rate / 60


# ---------------------------------------------------------------- caches

def cache_bytes(tables: Tables) -> dict[str, int]:
    """Bytes of the caches `hms prepare` writes for this dataset: each eeg_id's labelled span at
    200 Hz x EEG_CACHE_COLUMNS, each spectrogram_id's span of 2 s frames x 400 bins (train), the
    whole files (test), float16 (cache/store.py's spans and layout)."""
    out = {}
    for split, table in (("train", tables.train), ("test", tables.test)):
        for kind, columns in (("eeg", EEG_CACHE_COLUMNS), ("spec", len(schema.SPEC_COLUMNS))):
            rows = int(_layout(spans(table, split, kind), kind)["length"].sum())
            out[f"{kind}_{split}"] = rows * columns * CACHE_ITEM_BYTES
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
                                 "gflops": None if m.gflops is None else round(m.gflops, 3)}
                        for m in self.members},
            "train_rows": len(self.tables.train), "eegs": int(self.tables.train.eeg_id.nunique()),
            "items": item_count(self.tables.train), "test_rows": len(self.tables.test),
            "memory": getattr(self, "memory", {}),
        }

    def gpu_hours_of(self, m: MemberPlan) -> float:
        return sum(r.gpu_seconds for r in m.runs) / 3600

    def kaggle_minutes(self) -> float:
        prepare = KAGGLE_TEST_EEGS * PREPARE_S_PER_TEST_EEG / 60
        return prepare + sum(kaggle_t4_minutes(m) for m in self.members)


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
    plan = Plan(members, tables, here, here_is_gpu, gpu_device, note, cache_bytes(tables), gpus,
                int(base.labels.min_votes_high))
    plan.memory = card_table(cfgs)  # peak memory and micro-batch per card (hms.training.memory)
    return plan


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
                     f"/s here, {m.here.how}" + ("" if m.gpu is m.here else f"; GPU {_rate(m.gpu.samples_per_s)}/s, {m.gpu.how}"))
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
                 f"(an estimate: {plan.gpu_device} inference x {T4_PER_H200:.3g} for the T4, reading "
                 f"{PREPARE_S_PER_TEST_EEG} s per EEG)")
    lines += plan_memory_lines(getattr(plan, "memory", {}))
    lines.append("[hms plan] upper bounds: every stage runs its configured epochs (early stopping and the full fits' "
                 f"CV-derived length cut them); inference at {INFER_SPEEDUP:g}x the training rate; no cache build time")
    return lines


def print_plan(plan: Plan) -> None:
    for line in plan_lines(plan):
        print(line)
    print(json.dumps(plan.summary()), flush=True)


# ---------------------------------------------------------------- the main job's choice and stop

def main_job_configs(device: str) -> tuple[list[str], str]:
    """The no-argument main job's configs and the line that says which and why: with a CUDA
    device the competition recipe (RECIPE_DIR), else the CPU demo (DEMO_DIR)."""
    recipe = sorted(str(p) for p in RECIPE_DIR.glob("*.yaml"))
    if device.startswith("cuda") and recipe:
        return recipe, (f"[hms] CUDA device {device_name(device)} found: training the competition recipe "
                        f"({RECIPE_DIR}/, {len(recipe)} experiments)")
    demo = sorted(str(p) for p in DEMO_DIR.glob("*.yaml"))
    why = (f"no {RECIPE_DIR}/ here" if device.startswith("cuda") else
           f"no CUDA device (device {device})")
    return demo, (f"[hms] {why}: training the CPU demo ({DEMO_DIR}/, {len(demo)} experiments); "
                  "name configs to train others, e.g. `hms run configs/recipe/*.yaml`")


def main_job_files(overrides: list[str]) -> list[str]:
    """The no-argument main job's configs (the recipe this machine suits); prints which and why."""
    files, why = main_job_configs(C.resolve_device(C.load_config([], list(overrides))))
    print(why, flush=True)
    return files


class PlanTooLong(RuntimeError):
    """The no-argument main job's plan is over STOP_HOURS on this device."""


def check_budget(plan: Plan, limit_hours: float = STOP_HOURS) -> None:
    if plan.hours_here <= limit_hours:
        return
    raise PlanTooLong(
        f"the plan's estimate on this device ({plan.device}) is {_h(plan.hours_here)} for {plan.runs} runs, over "
        f"the main job's {limit_hours:g} h: stopped before building caches or training. Two ways on:\n"
        "  --yes: train this plan anyway (`hms run --yes`, `bash scripts/train_all_folds.sh --yes`)\n"
        "  explicit configs: train the experiments you name, no limit (`hms run CONFIG.yaml ...`, e.g. "
        f"`bash scripts/train_all_folds.sh {DEMO_DIR}/conv1d.yaml`)")
