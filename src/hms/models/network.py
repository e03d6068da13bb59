"""What sits between a batch and a model: the 2D image builder (Kaggle panels + EEG mel
panels computed on the device, tiled like the starter notebook's mosaic) and the wrapper
that applies image augmentations in training. Checkpoints hold this wrapper's state_dict."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from hms import config as C
from hms.data import schema
from hms.models.context import build_context
from hms.models.factory import build_model, model_input, model_kwargs
from hms.signal.cleaner import WindowCleaner
from hms.signal.montage import montage_names
from hms.signal.kaggle_spec import normalize_batch
from hms.signal.spectrogram import centre_crop, chain_panels, mel_module
from hms.models.workdir import load_checkpoint

IMAGE_SOURCES = ("kaggle", "eeg", "eeg_center")  # eeg_center: mel panels of the central mel.center_seconds
IMAGE_LAYOUTS = ("mosaic", "channels")


def widened(batch: dict) -> dict:
    """The batch with floating tensors as float32 (items ship float16); no copy when already so."""
    return {k: v.float() if v.is_floating_point() else v for k, v in batch.items()}


class ImageBuilder(nn.Module):
    """Batch -> (B, C, H, W). Panels per source: 4 Kaggle chains and/or 4 EEG mel chains
    (mean over each chain's 4 pairs), all resized to (panel_height, panel_width).
    mosaic: one channel, sources side by side, chains stacked (the starter's 512x512);
    channels: one channel per panel."""

    def __init__(self, sources=IMAGE_SOURCES, layout="mosaic", panel_height=128, panel_width=256,
                 image_size=None, mel: dict | None = None, spec_normalize: str = "panel",
                 sr: float = schema.SAMPLING_RATE):
        """mel: base.yaml's `mel:` section, the one home of the EEG panels' settings (its sr
        aside); sr: the rate of the signals fed, 200 Hz / input.downsample (HMSNet's fed_rate)."""
        super().__init__()
        bad = [s for s in sources if s not in IMAGE_SOURCES]
        if bad or layout not in IMAGE_LAYOUTS:
            raise ValueError(f"image.sources must be among {IMAGE_SOURCES} (got {list(sources)}), "
                             f"image.layout one of {IMAGE_LAYOUTS} (got {layout!r})")
        self.sources, self.layout = tuple(sources), layout
        self.panel = (int(panel_height), int(panel_width))
        self.image_size = tuple(image_size) if image_size else None
        self.spec_normalize, self.sr = spec_normalize, sr
        mel = dict(mel or {})
        self.center_seconds = mel.get("center_seconds")
        if "eeg_center" in self.sources and not self.center_seconds:
            raise ValueError("image source eeg_center needs mel.center_seconds (e.g. 10)")
        uses_mel = {"eeg", "eeg_center"} & set(self.sources)
        self.mel_width = int(mel["width"]) if uses_mel else None
        self.mel = mel_module(mel, sr) if uses_mel else None

    @property
    def in_chans(self) -> int:
        return 1 if self.layout == "mosaic" else 4 * len(self.sources)

    def eeg_panels(self, signal: torch.Tensor) -> torch.Tensor:
        pairs = signal[:, : len(schema.BIPOLAR_PAIRS)]
        return chain_panels(pairs, self.mel, self.mel_width).flip(-2)  # low frequencies at the bottom

    def forward(self, batch: dict, augmenter=None) -> torch.Tensor:
        """augmenter (training, hms.training.augment.NetworkAugmenter): time warp and SpecAugment masks per source, before tiling, so
        a warp never bends the 10-minute Kaggle panels and the 50 s EEG panels together and a
        frequency stripe covers the same band in all four chains."""
        panels = []
        if "kaggle" in self.sources:
            panels.append(normalize_batch(batch["spec"], self.spec_normalize).flip(-2))
        if "eeg" in self.sources:
            panels.append(self.eeg_panels(batch["signal"]))
        if "eeg_center" in self.sources:  # the labelled central seconds, zoomed to a full panel
            panels.append(self.eeg_panels(centre_crop(batch["signal"], self.center_seconds, self.sr)))
        panels = [F.interpolate(p, size=self.panel, mode="bilinear", align_corners=False) for p in panels]
        if augmenter is not None:  # after resizing: the same cost as on the final image
            panels = [augmenter.image(p) for p in panels]
        if self.layout == "channels":
            image = torch.cat(panels, dim=1)
        else:  # chains stacked vertically per source, sources side by side
            image = torch.cat([p.flatten(1, 2) for p in panels], dim=-1).unsqueeze(1)
        if self.image_size:
            image = F.interpolate(image, size=self.image_size, mode="bilinear", align_corners=False)
        return image


def fed_rate(explicit, downsample: int) -> float:
    """The rate a mel bank or a feature model is built for: that of the signals fed to it,
    200 Hz / input.downsample. An explicit mel.sr, model.sr or model.fs wins: the config loader
    refuses one that differs (hms.config.check_rates), so only a run saved before the rate was
    derived can carry one, and its network is rebuilt as it trained."""
    return explicit if explicit is not None else C.signal_rate(downsample)


def with_signal_keys(model_cfg: dict, signal_cfg: dict | None, downsample: int) -> dict:
    """A signal model's config with the keys HMSNet fills in when the kind takes them: the signal
    count and names (signal.extras add midline/EKG signals) and the rate of the signals it reads
    (sr: timm_mel's mel bank, fs: the feature models')."""
    extras = list((signal_cfg or {}).get("extras") or ())
    accepted = model_kwargs(model_cfg["kind"])
    if "n_signals" in accepted:
        model_cfg.setdefault("n_signals", len(montage_names(extras)))
    if "extras" in accepted:
        model_cfg.setdefault("extras", extras)
    for key in ("sr", "fs"):
        if key in accepted:
            model_cfg[key] = fed_rate(model_cfg.get(key), downsample)
    return model_cfg


class HMSNet(nn.Module):
    """Batch dict -> logits (B, 6), for every model kind. The batch's signals are raw 50 s
    windows; `cleaner` turns them into the model's input (see hms.signal.cleaner). With
    context_cfg enabled, a branch on the 10-minute Kaggle panels adds its logits to the
    model's (hms.models.context)."""

    def __init__(self, model_cfg, image_cfg=None, mel_cfg=None, signal_cfg=None, input_cfg=None,
                 context_cfg=None, spec_normalize: str = "panel"):
        """spec_normalize: kaggle_spec.normalize, for the image's Kaggle panels and the context branch."""
        super().__init__()
        input_cfg = dict(input_cfg or {})
        downsample = int(input_cfg.get("downsample", 1))
        self.context = build_context(context_cfg, spec_normalize)
        self.cleaner = WindowCleaner(dict(signal_cfg or {}), float(input_cfg.get("signal_seconds", 50)), downsample)
        model_cfg = dict(model_cfg)
        self.input_kind = model_input(model_cfg)
        self.builder = None
        if self.input_kind == "image":
            mel = dict(mel_cfg or {})
            self.builder = ImageBuilder(mel=mel, spec_normalize=spec_normalize,
                                        sr=fed_rate(mel.get("sr"), downsample), **dict(image_cfg or {}))
            model_cfg.setdefault("in_chans", self.builder.in_chans)
        else:
            model_cfg = with_signal_keys(model_cfg, signal_cfg, downsample)
        self.core = build_model(model_cfg)
        if self.context is not None and getattr(self.core, "fitted_once", False):
            raise ValueError(f"model kind {model_cfg['kind']!r} already reads the spectrogram and is not "
                             "trained by gradient steps: set context.enabled: false")

    def model_signal(self, signal: torch.Tensor, augmenter=None) -> torch.Tensor:
        """Raw windows -> the cleaned, cropped, decimated signals the model reads."""
        if augmenter is None:
            return self.cleaner(signal)
        return augmenter.signal(self.cleaner(signal, augmenter.extra_gain(signal.shape[0])))

    def inputs(self, batch: dict, augmenter=None) -> torch.Tensor:
        signal = self.model_signal(batch["signal"], augmenter)
        if self.builder is None:
            return signal
        return self.builder({**batch, "signal": signal}, augmenter)

    def logits(self, model_input: torch.Tensor, spec: torch.Tensor | None = None) -> torch.Tensor:
        """The core model's logits on its input, plus the context branch's on the raw Kaggle
        panels (B, 4, 100, 300) when there is one."""
        logits = self.core(model_input, spec) if getattr(self.core, "reads_spec", False) else self.core(model_input)
        if self.context is None:
            return logits
        return logits + self.context(spec)

    def forward(self, batch: dict, augmenter=None) -> torch.Tensor:
        """augmenter: the training step's NetworkAugmenter (hms.training.augment), None to predict."""
        batch = widened(batch)  # a raw loader batch works too
        return self.logits(self.inputs(batch, augmenter), batch.get("spec"))


def build_network(cfg) -> HMSNet:
    """From a resolved experiment config (model, image, mel, signal, input, context and
    kaggle_spec sections)."""
    def plain(section):
        return OmegaConf.to_container(section, resolve=True) if section is not None else None

    context = OmegaConf.select(cfg, "context")  # runs trained before the branch existed lack it
    return HMSNet(plain(cfg.model), plain(cfg.image), plain(cfg.mel), plain(cfg.signal), plain(cfg.input),
                  plain(context), spec_normalize=cfg.kaggle_spec.normalize)


def load_fold_network(fold_dir: Path, overrides: dict, device="cpu") -> tuple[DictConfig, torch.nn.Module]:
    """(a run's resolved config.yaml in today's keys merged with `overrides`, network from its
    best.pt in eval mode): inference, reports, and pseudo-label teachers load trained runs through this."""
    fold_dir = Path(fold_dir)
    if not (fold_dir / "best.pt").is_file():
        raise FileNotFoundError(f"{fold_dir}/best.pt: this fold is not trained")
    cfg = OmegaConf.merge(C.load_run_config(fold_dir), overrides)
    if "pretrained" in cfg.model:
        cfg.model.pretrained = False  # the weights come from best.pt; never fetch ImageNet ones here
    net = build_network(cfg).to(device)
    net.load_state_dict(load_checkpoint(fold_dir / "best.pt", device))
    return cfg, net.eval()
