"""KL divergence on soft targets: the metric, differentiable, with per-row weights."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean over rows of KL(target || softmax(logits)); zero-target terms add 0,
    exactly like the competition metric (which equals this with unit weights)."""
    log_p = F.log_softmax(logits.float(), dim=1)
    target = target.float()
    terms = torch.where(target > 0, target * (torch.log(target.clamp_min(1e-30)) - log_p), torch.zeros_like(log_p))
    rows = terms.sum(dim=1)
    if weight is None:
        return rows.mean()
    weight = weight.float()
    return (rows * weight).sum() / weight.sum().clamp_min(1e-12)
