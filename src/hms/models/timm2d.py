"""2D models: any timm backbone on a spectrogram image, and the same fed by mel
spectrograms computed from raw bipolar signals inside forward (on the GPU)."""
from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hms.data import schema
from hms.data.schema import N_CLASSES, SAMPLING_RATE
from hms.models.conv1d import signal_groups
from hms.signal.melspec import REFERENCES, TorchMelSpectrogram
from hms.signal.spectrogram import centre_crop
from hms.models.pooling import GeM
from hms.models.registry import register

log = logging.getLogger(__name__)

# Prefixes a checkpoint may carry when it was saved from a wrapper rather than the bare
# backbone (DDP's module., this package's backbone.); stripped before matching keys.
_STRIP_PREFIXES = ("module.", "backbone.")


def _unwrap_state_dict(obj) -> dict:
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "state_dict_ema"):
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
    return obj


def _strip_prefixes(state: dict) -> dict:
    for prefix in _STRIP_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_backbone_checkpoint(backbone: nn.Module, path: str | Path) -> dict:
    """Load a timm/torchvision-style backbone state_dict from a local file, leniently.

    Classifier weights in the file become 'unexpected' (the backbone has no head); a
    first conv saved for 3 channels is adapted to the model's in_chans with timm's rule
    (sum for 1 channel, repeat-and-scale otherwise) so ImageNet files fit 1-channel images.
    Returns the counts it logs.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone checkpoint_path not found: {path}")
    state = _strip_prefixes(_unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True)))
    own = backbone.state_dict()
    adapted, mismatched = [], []
    for key, value in list(state.items()):
        if key not in own or own[key].shape == value.shape:
            continue
        target = own[key]
        if value.ndim == 4 and target.ndim == 4 and value.shape[0] == target.shape[0] \
                and value.shape[2:] == target.shape[2:]:
            from timm.models import adapt_input_conv

            state[key] = adapt_input_conv(target.shape[1], value)
            adapted.append(key)
        else:
            mismatched.append(key)
            del state[key]
    result = backbone.load_state_dict(state, strict=False)
    counts = {"missing": len(result.missing_keys), "unexpected": len(result.unexpected_keys),
              "shape_mismatched": len(mismatched), "in_chans_adapted": len(adapted)}
    log.info("loaded backbone checkpoint %s: %s", path, counts)
    if result.missing_keys:
        log.warning("checkpoint %s leaves %d backbone tensors at init, e.g. %s",
                    path, len(result.missing_keys), result.missing_keys[:5])
    return counts


def feature_format(backbone: nn.Module) -> str:
    """How a timm backbone's forward_features lays out its output, from timm's own metadata:
    'NLC' tokens (B, N, C) for ViT-style models (they count their class/register tokens in
    `num_prefix_tokens`), 'NHWC' for the models that declare `output_fmt = 'NHWC'` (Swin),
    'NCHW' maps (B, C, H, W) for every other family (CNNs, MaxViT, TinyViT)."""
    if hasattr(backbone, "num_prefix_tokens"):
        return "NLC"
    return getattr(backbone, "output_fmt", "NCHW")


def _is_layer(module, name: str) -> bool:
    layer = getattr(module, name, None)
    return isinstance(layer, nn.Module) and not isinstance(layer, nn.Identity)


def normalised_features(backbone: nn.Module) -> bool:
    """Whether timm puts a norm layer after the last block (`norm`: ViT, Swin, MaxViT-rw, CoAtNet)
    or in its head after pooling (`head.norm`: MaxViT-tf, TinyViT, ConvNeXt): then the last
    features are signed normalised values (or a residual stream), not an activation's output."""
    return _is_layer(backbone, "norm") or _is_layer(getattr(backbone, "head", None), "norm")


@register("timm2d")
class TimmSpectrogramNet(nn.Module):
    """timm backbone (features only) -> pooling -> dropout -> linear: (B, C, H, W) -> (B, 6) logits.

    Pooling per family, decided from timm's metadata (feature_format, normalised_features):
      CNN maps (B, C, H, W) after  trainable GeM (3rd place's choice; gem_p, gem_trainable)
      an activation
      tokens (B, N, C) (ViT), NHWC the backbone's own head without its classifier
      maps (Swin), normalised maps (forward_head(pre_logits=True)): the class token or patch
      (MaxViT, TinyViT, ConvNeXt)  mean the model was pretrained with, Swin's average after its
                                   final LayerNorm, MaxViT-tf's average then LayerNorm. GeM clamps
                                   values below eps to eps, and a LayerNorm's output is centred on
                                   zero across channels (before its affine): about half of it.
    Grad-CAM reads `feature_tap`, which sees every map family's last map as (B, C, h, w); a
    token family has no map and gradcam_target_layer refuses it.
    """

    input_kind = "image"

    def __init__(
        self,
        backbone: str = "efficientnet_b0",
        in_chans: int = 1,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        drop_rate: float = 0.2,
        drop_path_rate: float = 0.0,
        gem_p: float = 3.0,
        gem_trainable: bool = True,
        n_classes: int = N_CLASSES,
        backbone_kwargs: dict | None = None,
    ):
        super().__init__()
        kwargs = dict(backbone_kwargs or {})
        if drop_path_rate:  # only when asked: not every timm family accepts the argument
            kwargs["drop_path_rate"] = drop_path_rate
        import timm  # here, not at the top: importing timm (and torchvision) costs ~2.5 s, which
        # every run of the 1D and tree members and every CLI process would pay for nothing
        # num_classes=0 keeps timm's pooling (and head norm) for forward_head(pre_logits=True)
        self.backbone = timm.create_model(backbone, pretrained=pretrained, in_chans=in_chans, num_classes=0, **kwargs)
        if checkpoint_path:
            load_backbone_checkpoint(self.backbone, checkpoint_path)
        self.backbone_name = backbone
        self.feature_format = feature_format(self.backbone)
        # Identity tap on the final feature map: one Grad-CAM target for every timm
        # family, whatever its last conv/norm/act module is called.
        self.feature_tap = nn.Identity()
        gem = self.feature_format == "NCHW" and not normalised_features(self.backbone)
        # None where timm's head pools: an unused trainable p would stall DDP's gradient reduction
        self.pool = GeM(p=gem_p, trainable=gem_trainable) if gem else None
        width = self.backbone.num_features if gem else getattr(self.backbone, "head_hidden_size", None) \
            or self.backbone.num_features
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(width, n_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's last features: (B, C, h, w) for map families (NHWC permuted), (B, N, C) tokens."""
        feats = self.backbone.forward_features(x)
        if feats.ndim != (3 if self.feature_format == "NLC" else 4):
            raise ValueError(f"backbone {self.backbone_name} returned features {tuple(feats.shape)}, "
                             f"not the {self.feature_format} layout its timm metadata declares")
        if self.feature_format == "NLC":
            return feats
        if self.feature_format == "NHWC":
            feats = feats.permute(0, 3, 1, 2)
        return self.feature_tap(feats)

    def pool_features(self, feats: torch.Tensor) -> torch.Tensor:
        """forward_features' output -> (B, width)."""
        if self.pool is not None:
            return self.pool(feats)
        if self.feature_format == "NHWC":  # timm's head takes the layout forward_features gave
            feats = feats.permute(0, 2, 3, 1)
        return self.backbone.forward_head(feats, pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.pool_features(self.forward_features(x))))

    def gradcam_target_layer(self) -> nn.Module:
        """Module whose output is the backbone's last feature map (B, C, h, w)."""
        if self.feature_format == "NLC":
            raise ValueError(f"Grad-CAM needs a feature map, and backbone {self.backbone_name} gives tokens "
                             f"(B, N, C): use a map family (a CNN, Swin, MaxViT, TinyViT) to explain with Grad-CAM")
        return self.feature_tap

    def last_stage(self) -> nn.Module:
        """The backbone's deepest stage as timm's feature_info names it."""
        return self.backbone.get_submodule(self.backbone.feature_info[-1]["module"])


class SignalImageNet(nn.Module):
    """Base of the 2D kinds that build their own image from the signals (timm_mel, eeg_image):
    HMSNet feeds them the cleaned signals (B, S, T), the subclass's `signals_to_image` makes the
    image and `net`, the timm backbone and head every 2D kind shares (TimmSpectrogramNet),
    classifies it. A subclass's constructor hands its timm keys (backbone, pretrained, drop_rate,
    ...) on through `**timm`, so their defaults are stated once, in TimmSpectrogramNet; it decides
    in_chans from its image."""

    input_kind = "signal"  # what HMSNet feeds it: the image is made inside
    builds_own_image = True

    def __init__(self, in_chans: int, **timm):
        super().__init__()
        self.net = TimmSpectrogramNet(in_chans=in_chans, **timm)

    @staticmethod
    def timm_keys() -> dict:
        """The keys `**timm` takes, with their defaults (factory.model_kwargs adds them)."""
        params = inspect.signature(TimmSpectrogramNet.__init__).parameters
        return {name: p.default for name, p in params.items() if name not in ("self", "in_chans")}

    def signals_to_image(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, T) -> (B, C, H, W); public for plots and Grad-CAM overlays."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.signals_to_image(x))

    def gradcam_target_layer(self) -> nn.Module:
        return self.net.gradcam_target_layer()


MEL_LAYOUTS = ("chain_avg_stack", "chain_avg_channels", "pairs_stack", "pairs_channels")
PANEL_ORDERS = ("chains", "left_right")
ZOOM_PLACEMENTS = ("right", "centre")


def left_right_order() -> list[int]:
    """BIPOLAR_PAIRS indices with each left pair followed by its right mirror, temporal chains
    first (Fp1-F7, Fp2-F8, F7-T3, F8-T4, ..., Fp1-F3, Fp2-F4, ...): 3rd place's panel order."""
    mirror = schema.mirrored_bipolar_order()
    left = [i for c in ("LL", "LP") for i in range(schema.CHAIN_NAMES.index(c) * schema.PAIRS_PER_CHAIN,
                                                    (schema.CHAIN_NAMES.index(c) + 1) * schema.PAIRS_PER_CHAIN)]
    return [j for i in left for j in (i, mirror[i])]


def electrode_neighbours() -> list[list[int]]:
    """For each bipolar pair, the pairs that share one of its electrodes: exactly two in the
    double banana (a chain's next and previous pair, or at a chain end the other chain that
    starts or ends at the same electrode). 3rd place's `mirror_ids2`."""
    pairs = schema.BIPOLAR_PAIRS
    out = [[j for j, q in enumerate(pairs) if j != i and set(p) & set(q)] for i, p in enumerate(pairs)]
    if any(len(n) != 2 for n in out):
        raise ValueError(f"every bipolar pair should share an electrode with two others, got {out}")
    return out


def fresh_first_conv(backbone: nn.Module, in_chans: int) -> nn.Conv2d:
    """Replace the backbone's first conv (timm's pretrained_cfg first_conv) by a new, randomly
    initialised Conv2d of the same geometry for `in_chans` channels (3rd place's new stem:
    their mixnet_xl conv_stem, 3 x 3, stride 2, padding 1, no bias). Returns it."""
    name = (getattr(backbone, "pretrained_cfg", None) or {}).get("first_conv")
    old = backbone.get_submodule(name) if name else None
    if type(old) is not nn.Conv2d:
        raise ValueError(f"fresh_stem: backbone {type(backbone).__name__} has no plain Conv2d first conv "
                         f"(timm first_conv {name!r}: {type(old).__name__})")
    new = nn.Conv2d(in_chans, old.out_channels, kernel_size=old.kernel_size, stride=old.stride,
                    padding=old.padding, dilation=old.dilation, bias=old.bias is not None)
    parent, _, leaf = name.rpartition(".")
    setattr(backbone.get_submodule(parent) if parent else backbone, leaf, new)
    return new


def _refuse_bad_options(layout, top_db, db_reference, zoom_placement, panel_order, zoom_cut,
                        contrast_channels, n_signals) -> None:
    """OnTheFlyMelNet's transform options that do not fit together, named by their model keys."""
    if layout not in MEL_LAYOUTS:
        raise ValueError(f"model.layout {layout!r} not in {MEL_LAYOUTS}")
    if top_db is None:  # the image needs a floor: frames padded to `width` sit on it
        raise ValueError("OnTheFlyMelNet needs a numeric top_db")
    if db_reference not in REFERENCES:
        raise ValueError(f"model.db_reference {db_reference!r} not in {REFERENCES}")
    if zoom_placement not in ZOOM_PLACEMENTS:
        raise ValueError(f"model.zoom_placement {zoom_placement!r} not in {ZOOM_PLACEMENTS}")
    if panel_order not in PANEL_ORDERS:
        raise ValueError(f"model.panel_order {panel_order!r} not in {PANEL_ORDERS}")
    if not 0 < zoom_cut < 1:
        raise ValueError(f"model.zoom_cut must be a fraction in (0, 1), got {zoom_cut}")
    by_pair = (contrast_channels or panel_order != "chains")
    if by_pair and (not layout.startswith("pairs") or n_signals != len(schema.BIPOLAR_PAIRS)):
        raise ValueError("model.contrast_channels and panel_order need a pairs layout of the "
                         f"{len(schema.BIPOLAR_PAIRS)} bipolar pairs, got layout {layout!r}, n_signals {n_signals}")
    if contrast_channels and layout != "pairs_stack":
        raise ValueError("model.contrast_channels stacks 3 channels per pair: it needs layout pairs_stack")


@register("timm_mel")
class OnTheFlyMelNet(SignalImageNet):
    """Raw bipolar signals (B, S, T) -> log-mel image on device -> the timm head (SignalImageNet).

    layout:
      chain_avg_stack    average the pairs of each chain, panels stacked vertically (1 ch;
                         the starter's 4 x 128 x 256 EEG image)
      chain_avg_channels the same panels as channels (n_chains ch)
      pairs_stack        every pair its own panel, stacked vertically (1 ch)
      pairs_channels     every pair its own channel (S ch)
    Signals beyond full chains (midline, EKG) form one extra group.
    dB is mapped by (db + db_offset) / db_scale (the starter's /40 rule maps relative dB to
    about [-1, 1]).
    db_reference: "max" (librosa ref=np.max: each spectrogram's loudest bin is 0 dB, floor at
    -top_db) or "absolute" (torchaudio AmplitudeToDB(top_db), 3rd place: dB re power 1, values
    not shifted, floored top_db below the loudest bin of the sample's view, all its panels
    together, so a quiet or zeroed pair stays dark). torchaudio floors a 3D (B*S, mels, frames)
    input at the whole batch's max; the floor here is per sample, so a prediction does not
    depend on the rows it was batched with.
    mel_scale, mel_norm, pad_mode: TorchMelSpectrogram's (torchaudio: htk, None, reflect).
    zoom_seconds (3rd place): a second mel of the central zoom_seconds with its own STFT
    (zoom_n_fft, zoom_win_length, zoom_hop_length; same mels and band), zoom_width frames;
    zoom_placement "right": right of the full view; "centre" (3rd place): in place of the full
    view's central zoom_cut fraction of frames.
    contrast_channels (3rd place, pairs_stack): 3 channels per pair: its dB, it minus the mean of
    the other pairs, it minus the mean of the two pairs sharing an electrode with it.
    panel_order (pairs layouts): "chains" (LL, RL, LP, RP) or "left_right" (3rd place: each left
    pair then its right mirror). fresh_stem (3rd place): a new randomly initialised first conv.
    backbone, pretrained, drop_rate, ...: the timm head's keys (TimmSpectrogramNet's).
    sr: the signals' rate; HMSNet derives it from input.downsample.
    """

    def __init__(
        self,
        n_signals: int = 16,
        layout: str = "chain_avg_stack",
        chain_size: int = 4,
        image_size: Sequence[int] | None = None,
        sr: float = SAMPLING_RATE,
        n_fft: int = 1024,
        win_length: int = 128,
        hop_divisor: int = 256,
        hop_length: int | None = None,
        n_mels: int = 128,
        fmin: float = 0.0,
        fmax: float = 20.0,
        top_db: float = 80.0,
        db_reference: str = "max",
        mel_scale: str = "slaney",
        mel_norm: str | None = "slaney",
        pad_mode: str = "constant",
        width: int = 256,
        db_offset: float = 40.0,
        db_scale: float = 40.0,
        zoom_seconds: float | None = None,
        zoom_n_fft: int = 2048,
        zoom_win_length: int = 16,
        zoom_hop_length: int = 4,
        zoom_width: int = 512,
        zoom_placement: str = "right",
        zoom_cut: float = 0.2,
        contrast_channels: bool = False,
        panel_order: str = "chains",
        fresh_stem: bool = False,
        **timm,
    ):
        _refuse_bad_options(layout, top_db, db_reference, zoom_placement, panel_order, zoom_cut,
                            contrast_channels, n_signals)
        group_sizes = signal_groups(n_signals, chain_size)
        in_chans = {"chain_avg_channels": len(group_sizes), "pairs_channels": n_signals}.get(layout, 1)
        in_chans = 3 if contrast_channels else in_chans
        super().__init__(in_chans, **timm)
        self.layout, self.width, self.group_sizes = layout, width, group_sizes
        self.image_size = tuple(image_size) if image_size else None
        self.db_offset, self.db_scale, self.top_db = db_offset, db_scale, top_db
        self.db_reference = db_reference
        # absolute dB is floored here, over all the sample's panels; max-referenced per spectrogram
        mel_top_db = top_db if db_reference == "max" else None
        spectrum = dict(sr=sr, n_mels=n_mels, fmin=fmin, fmax=fmax, top_db=mel_top_db, mel_scale=mel_scale,
                        norm=mel_norm, pad_mode=pad_mode, reference=db_reference)
        self.mel = TorchMelSpectrogram(n_fft=n_fft, win_length=win_length, hop_length=hop_length,
                                       hop_divisor=hop_divisor, **spectrum)
        self.sr, self.zoom_seconds, self.zoom_width = sr, zoom_seconds, zoom_width
        self.zoom_placement, self.zoom_cut = zoom_placement, zoom_cut
        self.zoom = TorchMelSpectrogram(
            n_fft=zoom_n_fft, win_length=zoom_win_length, hop_length=zoom_hop_length, **spectrum,
        ) if zoom_seconds else None
        self.contrast_channels, self.panel_order = contrast_channels, panel_order
        if contrast_channels:
            self.register_buffer("neighbours", torch.tensor(electrode_neighbours()), persistent=False)
        if panel_order != "chains":
            self.register_buffer("order", torch.tensor(left_right_order()), persistent=False)
        if fresh_stem:
            fresh_first_conv(self.net.backbone, in_chans)

    def _fix_width(self, db: torch.Tensor, width: int, floor: torch.Tensor) -> torch.Tensor:
        frames = db.shape[-1]
        if frames >= width:
            return db[..., :width]  # the starter keeps the first `width` frames
        return torch.cat([db, floor.expand(*db.shape[:-1], width - frames)], dim=-1)

    def _panels_db(self, x: torch.Tensor, mel: TorchMelSpectrogram, width: int) -> torch.Tensor:
        """(B, S, T) -> (B, panels, n_mels, width) dB: one panel per pair, or per group's mean;
        frames past the signal's end sit on the floor."""
        if self.layout.startswith("chain_avg"):  # each group's mean dB (one log per group)
            db = torch.cat([mel.mean_db(g, g.shape[1]) for g in torch.split(x, self.group_sizes, dim=1)], 1)
        else:
            db = mel(x)  # (B, S, n_mels, frames)
        if self.db_reference == "absolute":
            floor = db.amax(dim=(1, 2, 3), keepdim=True) - float(self.top_db)
            db = torch.maximum(db, floor)
        else:
            floor = db.new_full((1, 1, 1, 1), -float(self.top_db))
        return self._fix_width(db, width, floor)

    def _with_zoom(self, full: torch.Tensor, zoomed: torch.Tensor, n_samples: int) -> torch.Tensor:
        """The zoomed view right of the full one, or (3rd place) in place of the full view's
        central zoom_cut of frames: their int(w * cut // 2) frames either side of column
        w * centre // T, clamped inside the view."""
        if self.zoom_placement == "right":
            return torch.cat([full, zoomed], dim=-1)
        w = full.shape[-1]
        half = int(w * self.zoom_cut // 2)
        start = min(max(w * (n_samples // 2) // n_samples - half, 0), w - 2 * half - 1)
        return torch.cat([full[..., :start], zoomed, full[..., start + 2 * half:]], dim=-1)

    def _contrasts(self, db: torch.Tensor) -> torch.Tensor:
        """(B, P, M, W) -> (B, P, 3, M, W): each pair's dB, it minus the mean of the other pairs,
        it minus the mean of its two electrode neighbours (3rd place's 3 channels)."""
        others = (db.sum(1, keepdim=True) - db) / (db.shape[1] - 1)
        near = db[:, self.neighbours].mean(2)
        return torch.stack([db, db - others, db - near], dim=2)

    def signals_to_image(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, T) -> (B, C, H, W) normalised image; public for plots and Grad-CAM overlays."""
        if x.shape[1] != sum(self.group_sizes):
            raise ValueError(f"expected {sum(self.group_sizes)} signals, got {x.shape[1]}")
        db = self._panels_db(x, self.mel, self.width)
        if self.zoom is not None:  # the labelled centre, finer in time
            zoomed = self._panels_db(centre_crop(x, self.zoom_seconds, self.sr), self.zoom, self.zoom_width)
            db = self._with_zoom(db, zoomed, x.shape[-1])
        if self.contrast_channels:  # (B, P, 3, M, W): the dB offset only on the pair's own dB
            img = self._contrasts(db)
            img[:, :, 0] += self.db_offset
            img = img / self.db_scale
        else:
            img = (db + self.db_offset) / self.db_scale
        if self.panel_order != "chains":
            img = img[:, self.order]
        if self.contrast_channels:
            img = img.transpose(1, 2).flatten(2, 3)  # (B, 3, P * M, W): panels top to bottom
        elif self.layout.endswith("_stack"):
            img = img.flatten(1, 2).unsqueeze(1)  # panels top to bottom in chain order
        if self.image_size:
            img = F.interpolate(img, size=self.image_size, mode="bilinear", align_corners=False)
        return img
