"""Per-member device settings that training, the bench and inference share (issue 27): the
precision (bf16 where the card has it, fp16 with a GradScaler elsewhere, fp32 on the CPU),
channels-last for the 2D backbones (including the networks that build their image inside),
cuDNN autotuning, and how many loader workers a process gets from the cores of its GPU slot.

configs/base.yaml `train:` holds the defaults; a recipe config overrides them per member."""
from __future__ import annotations


import torch
from torch import nn

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
def _check(value, allowed, key: str) -> str:
    value = str(value).lower()
    if value not in allowed:
        raise ValueError(f"{key} must be one of {list(allowed)}, got {value!r}")
    return value


def has_bf16(device: torch.device) -> bool:
    """Native bf16 (Ampere, compute capability 8.0, and later). torch's is_bf16_supported() says
    True on a T4 too (emulated, slow) unless including_emulation=False."""
    device = torch.device(device)
    if device.type != "cuda":
        return False
    return torch.cuda.get_device_capability(device)[0] >= 8


def resolve_precision(setting, device) -> str:
    """'bf16' | 'fp16' | 'fp32' for train.precision on this device: auto is bf16 where the card
    has it natively (no GradScaler, no per-step host sync), fp16 + GradScaler elsewhere (the
    Kaggle notebook's T4); the CPU trains in fp32 (autocast there is bf16 emulation, slower)."""
    setting = _check(setting, PRECISIONS, "train.precision")
    device = torch.device(device)
    if device.type != "cuda" or setting == "fp32":
        return "fp32"
    if setting == "auto":
        return "bf16" if has_bf16(device) else "fp16"
    return setting


def train_precision(cfg, device) -> str:
    return resolve_precision(cfg.train.get("precision", "auto"), device)


def autocast(device, precision: str):
    """The autocast context of a resolved precision (disabled for fp32)."""
    dtype = AUTOCAST_DTYPES[precision]
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype, enabled=dtype is not None)


def grad_scaler(device, precision: str) -> torch.amp.GradScaler:
    """fp16 needs loss scaling; bf16 has fp32's exponent range and does not."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=precision == "fp16")


# ---------------------------------------------------------------- channels-last

def _is_timm_model(module: nn.Module) -> bool:
    return hasattr(module, "pretrained_cfg") and hasattr(module, "forward_features")


def image_backbones(net: nn.Module) -> list[nn.Module]:
    """The timm 2D backbones inside a network, whichever model kind holds them (timm2d,
    eeg_image, timm_mel): modules that are timm models (they carry `pretrained_cfg` and
    `forward_features`) with a 2D convolution in them."""
    found = []
    for module in net.modules():
        if _is_timm_model(module) and not any(module is f or _inside(module, f) for f in found) \
                and any(isinstance(m, nn.Conv2d) for m in module.modules()):
            found.append(module)
    return found


def _inside(module: nn.Module, outer: nn.Module) -> bool:
    return any(module is m for m in outer.modules())


def is_convolutional(backbone: nn.Module) -> bool:
    """A backbone without attention blocks: its maps stay (B, C, H, W) from stem to head, so
    channels-last reaches every convolution. TinyViT and the ViT/Swin/MaxViT families reshape
    their maps into (B, N, C) tokens for attention, where the channels-last layout buys nothing
    and each reshape of a channels-last map is a copy; `train.channels_last: true` still forces
    it on them (gpu_check.sh's recipe step measures both ways)."""
    return not any("attention" in type(m).__name__.lower() for m in backbone.modules())


def _stem(backbone: nn.Module) -> nn.Conv2d:
    return next(m for m in backbone.modules() if isinstance(m, nn.Conv2d))


def _to_channels_last(module, args):
    x = args[0]
    if isinstance(x, torch.Tensor) and x.ndim == 4:
        return (x.contiguous(memory_format=torch.channels_last), *args[1:])
    return None


CHANNELS_LAST_HOOK = "_hms_channels_last_hook"


def apply_channels_last(net: nn.Module, setting, device) -> list[str]:
    """Convert the network's 2D backbones to channels-last and make each one's input (the first
    convolution's, so the image a network builds inside is converted too) channels-last.
    setting: train.channels_last, auto (CUDA, convolutional backbones) | true (any 2D backbone, any
    device: the tests' CPU check) | false. Returns the converted backbones' class names."""
    setting = _check(setting, ("auto", "true", "false"), "train.channels_last")
    if setting == "false" or (setting == "auto" and torch.device(device).type != "cuda"):
        return []
    done = []
    for backbone in image_backbones(net):
        if setting == "auto" and not is_convolutional(backbone):
            continue
        backbone.to(memory_format=torch.channels_last)
        stem = _stem(backbone)
        if not hasattr(stem, CHANNELS_LAST_HOOK):
            setattr(stem, CHANNELS_LAST_HOOK, stem.register_forward_pre_hook(_to_channels_last))
        done.append(type(backbone).__name__)
    return done


# ---------------------------------------------------------------- cuDNN and loader workers

def set_cudnn(cfg, device) -> bool:
    """cudnn.benchmark per member (train.cudnn_benchmark: auto | true | false). auto = on: every
    member's input has a fixed shape, the last partial training batch is dropped and the last
    evaluation batch is padded to the full evaluation batch (training.predict), so a run meets
    two batch shapes (the micro-batch and the evaluation batch), each autotuned once. It was off
    because on an H200 it autotuned EfficientNet-B0 at 512x512 for 24 s per new batch shape (first,
    last, validation and TTA batches: ~50 s an epoch of 23 batches) for steps no faster than
    channels_last alone (0.06 s); the fixed shapes remove that re-tuning, and for B5 and MixNet-XL's
    large fp16 depthwise convolutions a few tunings per run are cheap (unmeasured: gpu_check.sh)."""
    setting = _check(cfg.train.get("cudnn_benchmark", "auto"), ("auto", "true", "false"), "train.cudnn_benchmark")
    on = torch.device(device).type == "cuda" and setting != "false"
    torch.backends.cudnn.benchmark = on
    return on
