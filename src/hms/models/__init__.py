"""Models: timm 2D backbones on spectrogram images (or on mel spectrograms made on the
device from raw signals), 1D networks on raw bipolar signals, and a factory keyed by
the config's `model.kind`. Every model maps its input to (B, 6) logits. Each model class
registers its kind where it is defined (`hms.models.registry.register`)."""
from hms.models.conv1d import CNNGRU, ParallelConv1DNet, WaveNet1D
from hms.models.factory import build_model, model_input, model_kinds, model_kwargs
from hms.models.registry import register, registered
from hms.signal.melspec import TorchMelSpectrogram
from hms.models.pooling import GeM
from hms.models.timm2d import OnTheFlyMelNet, TimmSpectrogramNet, load_backbone_checkpoint

__all__ = [
    "CNNGRU", "GeM", "OnTheFlyMelNet", "ParallelConv1DNet", "TimmSpectrogramNet", "TorchMelSpectrogram",
    "WaveNet1D", "build_model", "load_backbone_checkpoint", "model_input", "model_kinds", "model_kwargs",
    "register", "registered",
]
