"""`hms plan`: what a set of experiments will cost, before anything trains and before any cache
is built. It reads train.csv and test.csv only (no parquet file is opened) and prints

  - every run of every experiment (CV folds x seeds, then the full-data fits: models/runs.py),
    the items each stage's epoch walks through (one item per eeg_id and vote vector, as
    inputs/dataset.py makes them) and the epochs per stage;
  - device time per member, from measured throughput (jobs/throughput.py: `hms bench train`
    results saved per device name under $HMS_WORK_DIR/bench/, then configs/throughput.yaml,
    README's H200 figures); a member with no measurement is scaled from a measured one by
    forward FLOPs (jobs/flops.py);
  - totals on one GPU and on N GPUs (CV runs in parallel, one process per GPU);
  - the caches' disk space; the Kaggle notebook's time for ~2,000 test EEGs on a T4;

and, last, one JSON line (jobs/budget.py prints it, with what a budget selects). The main job
(`hms run`) prints it first, and without explicit configs stops when the estimate on this
device is over main_job.STOP_HOURS.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from hms import config as C
from hms.cache.store import EEG_CACHE_SIGNALS, cache_rows  # the caches' own layout and arithmetic
from hms.data import io, labels, schema
from hms.data.folds import make_folds
from hms.data.validate import drop_excluded_rows
from hms.jobs.flops import backbone_input, forward_gflops, model_family
from hms.jobs.throughput import THROUGHPUT_FILE, Reference, device_name, references, throughput_table
from hms.models.factory import fitted_once, model_input
from hms.training.stage import stages_of
from hms.training.memory import card_table, plan_memory_lines
from hms.models.runs import RunSpec, all_runs, cv_runs, full_runs, predicting_runs

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
SAME_FLOPS = 0.02  # a saved measurement counts for a config whose forward FLOPs are this close


# ---------------------------------------------------------------- a member's samples/s on a device

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
    stages = stages_of(cfg)[:1] if fitted else stages_of(cfg)  # fitted once: the first stage's rows
    epochs = [1] if fitted else [s.epochs for s in stages]
    min_votes = int(cfg.labels.min_votes_high)
    runs: list[RunSpec] = cv_runs(cfg) + full_runs(cfg, epochs)

    def count(fold, stage=None):  # stage None: the fold's validation rows
        key = (fold, stage.rows if stage else "val", min_votes, cfg.folds.n_folds)
        if key not in counts:
            train = tables.train
            if stage is None:
                rows = train[train.fold == fold]
            else:
                rows = stage.rows_of(train if fold is None else train[train.fold != fold])
            counts[key] = item_count(rows)
        return counts[key]

    return [RunPlan(r.name, [count(r.fold, s) for s in stages], list(r.stage_epochs or epochs),
                    0 if r.is_full else count(r.fold), len(tables.test), r.is_full) for r in runs]


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
    all_specs = all_runs(cfg)
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


def trained_member_plan(name: str, run_cfg: DictConfig, predicting: int, refs: list[Reference],
                        table: dict) -> MemberPlan:
    """A trained experiment as the Kaggle notebook loads it: its runs' own config (network, TTA),
    `predicting` runs, its speed on the plan's GPU and its inference rate on the T4; nothing to train."""
    fitted = fitted_once(run_cfg)
    m = MemberPlan(name, "fitted once" if fitted else model_input(run_cfg.model), [],
                   2 if run_cfg.infer.tta_lr_swap and not fitted else 1, predicting)
    if fitted:
        m.gpu = tree_speed(name, run_cfg, table)
    else:
        gflops, hw, arch = forward_gflops(run_cfg), backbone_input(run_cfg), timm_arch(run_cfg)
        m.gpu = member_speed(name, gflops, model_family(run_cfg), refs, timm_speed(arch, hw, refs, table))
        m.t4_infer_per_s, m.t4_how = t4_rate(arch, hw, m.gpu, table)
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
    """The plan for these experiment configs (named, as experiments.experiment_configs gives them)
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


def hours_text(hours: float) -> str:
    return f"{hours:.2f} h" if hours < 10 else f"{hours:.1f} h"


def processes_note(plan: Plan) -> str:
    """How the total's runs share this machine: GPUs in parallel; without a GPU the runs at once
    (schedule.cpu_slots), which the CPU rates, timed one run at a time, do not credit."""
    if plan.gpus <= 1:
        return ", one process"
    if plan.here_is_gpu:
        return f", {plan.gpus} GPUs"
    return f", {plan.gpus} runs at once, estimated as one after another"


def member_lines(m: MemberPlan, gpu_device: str) -> list[str]:
    """A member's speed here (and on the plan's GPU) and where it comes from, then one line per run."""
    lines = [f"[hms plan] {m.name} ({m.kind}"
             + (f", {m.gflops:.3g} forward GFLOPs/item" if m.gflops is not None else "")
             + f"): {len(m.runs)} runs, {_rate(m.here.samples_per_s)} {'items' if m.gflops is None else 'samples'}"
             f"/s here [{m.here.source}], {m.here.how}"
             + ("" if m.gpu is m.here else f"; GPU {_rate(m.gpu.samples_per_s)}/s [{m.gpu.source}], {m.gpu.how}")]
    for r in m.runs:
        stages = " + ".join(f"{n:,} x {e}" for n, e in zip(r.stage_items, r.stage_epochs))
        val = f", val {r.val_items:,}" if r.val_items else ""
        lines.append(f"    {r.name:14s} items x epochs {stages}{val}, test {r.test_items:,}: "
                     f"{hours_text(r.seconds / 3600)} here, {hours_text(r.gpu_seconds / 3600)} on one {gpu_device}")
    return lines


def plan_lines(plan: Plan) -> list[str]:
    t = plan.tables
    high = labels.high_vote_mask(t.train, plan.min_votes)
    lines = [f"[hms plan] dataset {t.data_dir}: {len(t.train):,} train rows, {t.train.eeg_id.nunique():,} EEGs, "
             f"{t.train.patient_id.nunique():,} patients, {item_count(t.train):,} items ({item_count(t.train[high]):,} "
             f"with >= {plan.min_votes} votes); test.csv {len(t.test):,} row{'' if len(t.test) == 1 else 's'}",
             f"[hms plan] device {plan.device}: {plan.refs_note}"]
    lines += [line for m in plan.members for line in member_lines(m, plan.gpu_device)]
    lines.append(f"[hms plan] per member, hours here / on one {plan.gpu_device}: "
                 + ", ".join(f"{m.name} {sum(r.seconds for r in m.runs) / 3600:.2f} / {plan.gpu_hours_of(m):.2f}"
                             for m in plan.members))
    lines.append(f"[hms plan] total: {plan.runs} runs, {hours_text(plan.hours_here)} on this device ({plan.device}"
                 + processes_note(plan) + "); "
                 f"{plan.gpu_device}: 1 GPU {hours_text(plan.gpu_hours(1))}, "
                 + ", ".join(f"{n} GPUs {hours_text(plan.gpu_hours(n))}" for n in GPU_COUNTS)
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


class PlanTooLong(RuntimeError):
    """A plan over its limit: the job stops before building a cache or training (the no-argument
    main job's main_job.STOP_HOURS; a budget that nothing fits: budget.NothingFits)."""
