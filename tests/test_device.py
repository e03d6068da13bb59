"""Device settings on the CPU (issue 27): gradient accumulation equals one batch (also under DDP
with gloo), `train.micro_batch: auto` against a fake free-memory figure, channels-last on every
2D member's backbone input, the bench and FoldRun calling one step, precision per card, loader
workers per GPU slot, the dropped last training batch and the padded last evaluation batch."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import tiny_config
from hms.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


def tiny_net_cfg(tmp_path, *extra):
    return tiny_config(tmp_path, tmp_path, "device=cpu", "train.grad_clip=0", *extra)


def random_batch(n: int, seed: int = 0) -> dict:
    from hms.training.memory import random_batch as shaped

    g = torch.Generator().manual_seed(seed)
    batch = shaped(load_config([], []), n)
    batch["signal"] = 30 * torch.randn(batch["signal"].shape, generator=g)
    batch["spec"] = torch.rand(batch["spec"].shape, generator=g)
    batch["target"] = torch.softmax(torch.randn(n, 6, generator=g), 1)
    batch["weight"] = torch.rand(n, generator=g) + 0.2  # unequal weights: the share must follow them
    batch["low_vote"] = torch.zeros(n, dtype=torch.bool)
    return batch


def step_grads(cfg, batch: dict, micro: int | None, train_net_wrap=None, device=torch.device("cpu")) -> list[torch.Tensor]:
    """Gradients after one TrainStep of a fresh seeded network in eval mode (BatchNorm uses its
    running statistics, dropout is off: what differs between micro-batches and one batch is only
    the accumulation)."""
    from hms.training.loop import make_optimizer
    from hms.training.stage import first_stage
    from hms.models.network import build_network
    from hms.training.step import TrainStep

    torch.manual_seed(0)
    net = build_network(cfg).eval()
    opt, sched = make_optimizer(net, first_stage(cfg), cfg, steps_per_epoch=1)
    train_net = train_net_wrap(net) if train_net_wrap else net
    TrainStep(net, opt, sched, cfg, device, "fp32", micro, train_net=train_net)(dict(batch), augment=False)
    return [p.grad.detach().cpu().clone() for p in net.parameters()]


# ---------------------------------------------------------------- accumulation

@pytest.mark.parametrize("micro", [4, 3, 1])
def test_accumulated_micro_batches_give_the_gradients_of_one_batch(tmp_path, micro):
    """8 items in micro-batches of 4 (2 equal), 3 (3, 3, 2: the last smaller) and 1, with
    unequal item weights: each micro-batch's weighted KL scaled by its share of the weight."""
    cfg = tiny_net_cfg(tmp_path)
    batch = random_batch(8)
    whole = step_grads(cfg, batch, None)
    parts = step_grads(cfg, batch, micro)
    assert any(g.abs().sum() > 0 for g in whole)
    for a, b in zip(whole, parts):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_the_weight_share_makes_micro_batch_losses_sum_to_the_batch_loss():
    """What the gradient check rests on, and why a plain mean over micro-batches would fail it:
    kl_loss divides by the sum of the weights, so unequal micro-batches need their share."""
    from hms.training.losses import kl_loss
    from hms.training.step import micro_slices

    batch = random_batch(8)
    logits = torch.randn(8, 6)
    whole = kl_loss(logits, batch["target"], batch["weight"])
    parts = micro_slices(8, 3)
    assert [p.stop - p.start for p in parts] == [3, 3, 2]
    shared = sum(kl_loss(logits[p], batch["target"][p], batch["weight"][p]) * batch["weight"][p].sum()
                 / batch["weight"].sum() for p in parts)
    plain = sum(kl_loss(logits[p], batch["target"][p], batch["weight"][p]) for p in parts) / len(parts)
    torch.testing.assert_close(shared, whole)
    assert abs(float(plain - whole)) > 1e-4


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str, cfg_yaml: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cfg = OmegaConf.create(cfg_yaml)
        batch = random_batch(6, seed=rank)  # each rank its own shard
        calls = {"sync": 0}

        def wrap(net):
            ddp = DistributedDataParallel(net)
            original = ddp.no_sync

            def counted():
                calls["sync"] += 1
                return original()
            ddp.no_sync = counted
            return ddp

        whole = step_grads(cfg, batch, None, wrap)
        skipped_whole = calls["sync"]
        parts = step_grads(cfg, batch, 4, wrap)  # 4 + 2: one micro-batch under no_sync
        torch.save({"whole": whole, "parts": parts, "no_sync": (skipped_whole, calls["sync"] - skipped_whole)},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_accumulation_under_ddp_with_gloo_equals_one_batch(tmp_path):
    """Two CPU processes (gloo), each with its own 6 items: micro-batches of 4 + 2 with no_sync on
    the first give the all-reduced gradients of the whole local batches, the same on both ranks."""
    import torch.multiprocessing as mp

    cfg = tiny_net_cfg(tmp_path)
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path), OmegaConf.to_yaml(cfg)), nprocs=2,
             join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["no_sync"] == (0, 1) and r1["no_sync"] == (0, 1)  # no_sync on all but the last micro-batch
    local = step_grads(cfg, random_batch(6, seed=0), None)  # rank 0's batch alone, no DDP
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(local, r0["whole"]))  # the ranks did average
    for whole0, parts0, parts1 in zip(r0["whole"], r0["parts"], r1["parts"]):
        torch.testing.assert_close(parts0, whole0, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(parts1, parts0, rtol=0, atol=0)


# ---------------------------------------------------------------- micro_batch: auto

def test_micro_batch_auto_picks_the_largest_divisor_that_fits_a_fake_free_memory(tmp_path, monkeypatch, capsys):
    from hms.training import memory

    cfg = tiny_net_cfg(tmp_path, "train.batch_size=32", "train.micro_batch=auto")
    model = memory.memory_model(cfg, "bf16")
    assert model.per_sample_bytes > 0 and model.static_bytes > 0
    free = (model.peak(8) + model.peak(16)) / 2  # 8 fits, 16 does not
    monkeypatch.setattr(memory, "free_bytes", lambda device: free)
    assert memory.choose_micro_batch(cfg, "cuda", "bf16", "tiny fold0") == 8
    line = capsys.readouterr().out
    assert "[tiny fold0] memory:" in line and "micro-batch 8 (auto, 4 steps of accumulation per batch of 32" in line
    monkeypatch.setattr(memory, "free_bytes", lambda device: model.peak(1) / 2)
    with pytest.raises(ConfigError, match="even a micro-batch of 1 needs"):
        memory.choose_micro_batch(cfg, "cuda", "bf16")
    assert memory.choose_micro_batch(cfg, "cpu", "fp32") == 32  # the CPU: the whole batch


def test_a_measured_peak_wins_over_the_estimate(tmp_path, monkeypatch):
    from hms.training import memory

    cfg = tiny_net_cfg(tmp_path, "train.batch_size=32", "train.micro_batch=auto")
    estimate = memory.memory_model(cfg, "bf16")
    bench = tmp_path / memory.BENCH_FILE
    bench.parent.mkdir(parents=True, exist_ok=True)
    peak = estimate.static_bytes + 16 * 1e9  # 1 GB per item measured at micro-batch 16
    bench.write_text(json.dumps({"experiment": "tiny", "device_name": "NVIDIA H200", "micro_batch": 16,
                                 "peak_memory_bytes": peak, "precision": "bf16",
                                 "parameters": estimate.parameters}) + "\n")
    model = memory.memory_model(cfg, "bf16")
    assert model.measured and "measured on NVIDIA H200 at micro-batch 16" in model.source
    assert model.peak(16) == pytest.approx(peak) and model.peak(4) == pytest.approx(estimate.static_bytes + 4e9)
    monkeypatch.setattr(memory, "free_bytes", lambda device: estimate.static_bytes + 5e9)
    assert memory.choose_micro_batch(cfg, "cuda", "bf16") == 4
    assert memory.memory_model(cfg, "fp32").measured is None  # an fp32 run does not use a 16-bit peak


@pytest.mark.parametrize("value", [0, 33, "half", 2.5])
def test_a_bad_micro_batch_names_the_key(tmp_path, value):
    from hms.training.memory import check_micro_batch

    cfg = tiny_net_cfg(tmp_path, "train.batch_size=32")
    cfg.train.micro_batch = value
    with pytest.raises(ConfigError, match="train.micro_batch must be null, auto or an integer from 1"):
        check_micro_batch(cfg)


def test_the_saved_byte_count_is_kept_in_the_work_dir(tmp_path, monkeypatch):
    from hms.training import memory

    cfg = tiny_net_cfg(tmp_path)
    memory._measured.clear()  # an earlier test may have counted this network in this process
    counted = memory.measure(cfg)
    memory._measured.clear()
    monkeypatch.setattr(memory, "saved_bytes", lambda net, batch: pytest.fail("counted again"))
    assert memory.measure(cfg) == counted and (tmp_path / memory.SAVED_BYTES_FILE).is_file()


def test_saved_bytes_count_each_storage_once_and_leave_parameters_out():
    from hms.training.memory import saved_bytes

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(100, 100, bias=False)

        def forward(self, batch):
            return torch.relu(self.lin(batch["x"])).sum()

    # the linear layer saves its input (for the weight's gradient) and ReLU its output; the
    # weight is a parameter (static memory), not counted
    assert saved_bytes(Net(), {"x": torch.randn(10, 100)}) == 2 * 10 * 100 * 4


# ---------------------------------------------------------------- channels-last

RECIPE_2D = {  # recipe members with a 2D backbone, shrunk to CPU size (the backbone stays the recipe's)
    "configs/recipe/effnet_b0_two_stage.yaml": ["image.panel_height=32", "image.panel_width=64"],
    "configs/recipe/effnet_b5_raw_image.yaml": ["model.image_size=[32, 128]"],
    "configs/recipe/mixnet_xl_mel_zoom.yaml": ["model.n_mels=8", "model.width=32", "model.zoom_width=32"],
    "configs/recipe/tinyvit_512_mosaic.yaml": ["image.image_size=[64, 64]", "image.panel_height=32",
                                              "image.panel_width=64"],
}


def recipe_net(path: str, extra: list[str]):
    from hms.models.network import build_network

    cfg = load_config([str(ROOT / path)], list(extra))
    if "pretrained" in cfg.model:  # random weights: nothing is fetched
        cfg.model.pretrained = False
    torch.manual_seed(0)
    return build_network(cfg).eval(), cfg


def test_every_recipe_member_with_a_2d_backbone_is_in_the_channels_last_check():
    from hms.jobs.bench import split_by_training
    from hms.models.device import image_backbones

    stepped, _ = split_by_training(sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs/recipe").glob("*.yaml")),
                                   ROOT)
    with_2d = [p for p in stepped if image_backbones(recipe_net(p, RECIPE_2D.get(p, []))[0])]
    assert sorted(with_2d) == sorted(RECIPE_2D)


@pytest.mark.parametrize("path", sorted(RECIPE_2D))
def test_channels_last_reaches_every_2d_backbone_input_and_keeps_the_logits(path):
    """B5's raw-EEG image and MixNet-XL's mel image are built inside the network: the stem's
    input is still channels-last once enabled, and the logits equal the contiguous network's."""
    from hms.models.device import apply_channels_last, image_backbones, is_convolutional

    contiguous, cfg = recipe_net(path, RECIPE_2D[path])
    converted, _ = recipe_net(path, RECIPE_2D[path])
    backbones = image_backbones(converted)
    assert len(backbones) == 1
    auto = apply_channels_last(converted, "auto", "cuda")  # what a CUDA run does (the tensors stay here)
    assert bool(auto) == is_convolutional(backbones[0]) == ("tiny_vit" not in cfg.model.backbone)
    assert apply_channels_last(converted, "true", "cpu")  # forced: every 2D backbone, on this CPU
    assert apply_channels_last(contiguous, "auto", "cpu") == []  # auto is CUDA only
    seen = {}

    def record(name):  # the stem's input (these images have 1 channel: both layouts at once) and its map
        def hook(module, args, out):
            seen[name] = (args[0].is_contiguous(memory_format=torch.channels_last),
                          out.is_contiguous(memory_format=torch.channels_last), out.is_contiguous())
        return hook

    logits = {}
    for name, net in (("contiguous", contiguous), ("converted", converted)):
        stem = next(m for m in image_backbones(net)[0].modules() if isinstance(m, torch.nn.Conv2d))
        handle = stem.register_forward_hook(record(name))
        with torch.no_grad():
            logits[name] = net(random_batch(2))
        handle.remove()
    assert seen["converted"] == (True, True, False)  # channels-last from the stem on
    assert seen["contiguous"][1:] == (False, True)
    torch.testing.assert_close(logits["converted"], logits["contiguous"], rtol=1e-4, atol=1e-4)


def test_a_multi_channel_image_enters_the_backbone_channels_last(tmp_path):
    from hms.models.device import apply_channels_last, image_backbones
    from hms.models.network import build_network

    cfg = tiny_config(tmp_path, tmp_path, "model={kind: timm_mel, backbone: resnet10t, n_fft: 256, win_length: 32, "
                      "n_mels: 16, width: 32, layout: chain_avg_channels}")
    net = build_network(cfg).eval()
    apply_channels_last(net, "true", "cpu")
    stem = next(m for m in image_backbones(net)[0].modules() if isinstance(m, torch.nn.Conv2d))
    seen = []
    stem.register_forward_hook(lambda m, args, out: seen.append((args[0].shape[1], args[0].is_contiguous(
        memory_format=torch.channels_last), args[0].is_contiguous())))
    with torch.no_grad():
        net(random_batch(2))
    assert seen == [(4, True, False)]


# ---------------------------------------------------------------- one step for training and the bench

def test_fold_run_and_the_bench_take_the_same_step_in_train_mode(tiny_synth, tmp_path, monkeypatch):
    """One TrainStep class serves both; every call sees the network in training mode (validation
    leaves it in eval mode, and nothing set it back before) and a plain augment section."""
    from hms.jobs import bench
    from hms.training import loop, step
    from hms.training.experiment import train_experiment

    calls = []
    original = step.TrainStep.__call__

    def counted(self, batch, augment=True, low_vote_weight=None):
        calls.append((self.net.training, OmegaConf.is_config(self.augment_cfg), len(batch["target"])))
        return original(self, batch, augment, low_vote_weight)

    monkeypatch.setattr(step.TrainStep, "__call__", counted)
    # one stage on all rows: more than one batch of them, so the last partial batch is dropped
    cfg = tiny_config(tiny_synth, tmp_path, "device=cpu", "train.micro_batch=4",
                      "train.stages=[{rows: all, epochs: 2, lr: 3.0e-3}]")
    train_experiment(cfg, folds=[0], progress=False)
    from_training = len(calls)
    result = bench.bench_train(tiny_config(tiny_synth, tmp_path, "device=cpu", "train.micro_batch=4"), steps=1,
                               repeats=1)
    assert from_training > 0 and len(calls) > from_training
    assert all(training and not is_config for training, is_config, _ in calls)
    assert {n for *_, n in calls} == {16}  # the last partial training batch dropped: every batch full
    assert result["micro_batch"] == 4 and result["precision"] == "fp32" and result["infer_samples_per_s"] > 0
    assert loop.TrainStep is step.TrainStep


# ---------------------------------------------------------------- precision, workers, loaders

def test_precision_auto_is_bf16_on_ampere_and_later_and_fp16_with_a_scaler_on_a_t4(monkeypatch):
    from hms.models import device as dev

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (7, 5))  # T4
    assert dev.resolve_precision("auto", "cuda") == "fp16"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))  # H100/H200
    assert dev.resolve_precision("auto", "cuda") == "bf16"
    assert dev.grad_scaler("cpu", "fp16").is_enabled() and not dev.grad_scaler("cpu", "bf16").is_enabled()
    assert dev.resolve_precision("fp16", "cuda") == "fp16"
    assert dev.resolve_precision("auto", "cpu") == dev.resolve_precision("bf16", "cpu") == "fp32"
    with pytest.raises(ValueError, match="train.precision must be one of"):
        dev.resolve_precision("half", "cuda")


@pytest.mark.parametrize("cores, train, evaluation", [(16, 8, 2), (4, 2, 1), (2, 1, 1), (64, 8, 2)])
def test_loader_workers_come_from_the_cores_of_the_gpu_slot(monkeypatch, cores, train, evaluation):
    from hms.inputs.loaders import CORES_ENV, loader_workers

    monkeypatch.setenv(CORES_ENV, str(cores))
    assert loader_workers("auto", "cuda", training=True) == train
    assert loader_workers("auto", "cuda", training=False) == evaluation
    assert loader_workers("auto", "cpu", training=True) == 0 and loader_workers(3, "cuda", True) == 3


def test_the_scheduler_gives_each_gpu_job_its_share_of_the_cores(monkeypatch):
    import os

    from hms.inputs.loaders import CORES_ENV
    from hms.jobs.schedule import slot_env

    cores = len(os.sched_getaffinity(0))
    assert slot_env("0", 0, 2)[CORES_ENV] == str(max(1, cores // 2))


def test_training_drops_the_last_partial_batch_and_evaluation_runs_at_a_larger_batch(tmp_path):
    from torch.utils.data import TensorDataset

    from hms.inputs.loaders import make_loader

    cfg = tiny_config(tmp_path, tmp_path, "device=cpu", "train.batch_size=8")
    items = TensorDataset(torch.arange(20))
    train, val = make_loader(items, cfg, shuffle=True), make_loader(items, cfg, shuffle=False)
    assert [len(b[0]) for b in train] == [8, 8] and train.drop_last
    assert [len(b[0]) for b in val] == [16, 4]  # null infer.batch_size: twice the training batch
    assert [len(b[0]) for b in make_loader(TensorDataset(torch.arange(5)), cfg, shuffle=True)] == [5]
    cfg.infer.batch_size = 6
    assert [len(b[0]) for b in make_loader(items, cfg, shuffle=False)] == [6, 6, 6, 2]


def test_a_padded_last_evaluation_batch_keeps_its_items_and_takes_the_full_shape():
    from hms.inference.batch import padded

    batch = {"signal": torch.randn(3, 2, 5), "spec": torch.randn(3, 4, 1, 1)}
    full = padded(batch, 8)
    assert full["signal"].shape[0] == full["spec"].shape[0] == 8
    assert torch.equal(full["signal"][:3], batch["signal"]) and torch.equal(full["signal"][3:], batch["signal"][:1].expand(5, 2, 5))
    assert padded(batch, 3) is batch


# ---------------------------------------------------------------- hms plan

def test_hms_plan_prints_each_members_peak_and_micro_batch_for_three_cards(tiny_synth, tmp_path, capsys):
    from hms.cli import main
    from hms.training import memory

    overrides = [f"paths.data_dir={tiny_synth}", f"paths.work_dir={tmp_path}", "device=cpu"]
    bench = tmp_path / memory.BENCH_FILE
    bench.parent.mkdir(parents=True)
    # a member measured at 30 GB for micro-batch 16 of its 32: 24 GB cards get 8, 40 GB 16, 80 GB 32
    bench.write_text(json.dumps({"experiment": "conv1d", "device_name": "NVIDIA H200", "micro_batch": 16,
                                 "samples_per_s": 1000.0, "batch": 32,
                                 "peak_memory_bytes": 30e9, "precision": "bf16", "parameters": 10}) + "\n")
    assert main(["plan", "configs/demo/conv1d.yaml", "configs/demo/qeeg_trees.yaml",
                 "configs/demo_2d/panels_resnet10t.yaml", *overrides]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])["memory"]
    assert set(summary) == {"conv1d", "panels_resnet10t"}  # the trees have no training steps
    assert summary["conv1d"]["micro_batch"] == {"24": 8, "40": 16, "80": 32}
    assert summary["conv1d"]["peak_gb"] == pytest.approx(60.0, abs=0.1)
    assert "[hms plan] memory conv1d: ~60.0 GB peak at batch 32 (16-bit AMP, measured on NVIDIA H200 at micro-batch 16)" \
           "; micro-batch with train.micro_batch: auto on 24 GB: 8, 40 GB: 16, 80 GB: 32" in out
    resnet = summary["panels_resnet10t"]
    assert resnet["source"].startswith("estimated") and 0 < resnet["activations_gb_per_sample"] < 1
    assert f"[hms plan] memory panels_resnet10t: ~{resnet['peak_gb']:.1f} GB peak" in out
