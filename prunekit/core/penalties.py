"""Losses that shape training around pruning: network slimming's L1 on BatchNorm scales (Liu et al. 2017) and
knowledge distillation from the dense teacher (Hinton et al. 2015)."""

from __future__ import annotations

import torch
from torch import nn


def slimming_penalty(model: nn.Module, strength: float) -> torch.Tensor:
    """``strength * sum |gamma|`` over every BatchNorm scale of ``model`` (a scalar tensor with gradient)."""
    scales = [m.weight for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]
    if not scales:
        return torch.zeros(())
    return strength * sum(g.abs().sum() for g in scales)


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float, weight: float
) -> torch.Tensor:
    """``weight * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - weight) * CE(student, labels)``,
    logits (N, classes), the KL averaged over the batch; T^2 keeps the soft term's gradients at the hard one's
    scale (Hinton et al. 2015)."""
    soft = nn.functional.kl_div(
        nn.functional.log_softmax(student / temperature, dim=1),
        nn.functional.log_softmax(teacher / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return weight * temperature**2 * soft + (1 - weight) * nn.functional.cross_entropy(student, labels)
