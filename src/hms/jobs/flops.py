"""What a network costs per item, counted rather than measured: its forward FLOPs and the input
size of its timm backbone, from one forward pass on the CPU, counted once per network per
process. A bench result records them (jobs/throughput.py), so that the plan (jobs/plan.py) can
scale a measured rate to a member nobody has timed."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from hms.data import schema
from hms.signal.montage import montage_names

NETWORK_SECTIONS = ("model", "image", "mel", "signal", "input", "context")  # what shapes the network and its FLOPs (kaggle_spec only normalises)
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
