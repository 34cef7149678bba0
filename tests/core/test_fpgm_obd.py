"""FPGM and OBD against what their papers define, computed here without the engine."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad

from prunekit.core.importance import ScoreContext, get_criterion
from prunekit.core.lab import Lab
from tests.helpers import TinyCNN, TinyResNet, tiny_loaded


class OneConv(nn.Module):
    def __init__(self, filters: torch.Tensor) -> None:
        super().__init__()
        self.conv = nn.Conv2d(filters.shape[1], filters.shape[0], filters.shape[2], bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(filters)

    def forward(self, x):
        return self.conv(x)


def test_fpgm_scores_the_filter_at_the_layers_geometric_median_lowest():
    # Five 1x1 filters on two input channels: a cross around the origin; the origin is its geometric median.
    points = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0], [0.0, -3.0], [0.1, 0.1]])
    model = OneConv(points[:, :, None, None]).eval()
    scores = get_criterion("fpgm").score(ScoreContext(model, (2, 4, 4)), "filter")["conv"]
    assert int(scores.argmin()) == 4
    by_hand = [sum(float((points[i] - points[j]).norm()) for j in range(5)) for i in range(5)]
    assert torch.allclose(scores.double(), torch.tensor(by_hand, dtype=torch.float64), rtol=1e-6)


def _obd_by_hand(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """1/2 * mean over images of (d loss_image / d w)² * w², each image's gradient by torch.func on its own."""
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(p, image, label):
        return nn.functional.cross_entropy(functional_call(model, (p, buffers), (image[None],)), label[None])

    fisher = {n: torch.zeros_like(params[f"{n}.weight"]) for n in layers}
    for image, label in zip(images, labels, strict=True):
        grads = grad(loss)(params, image, label)
        for n in layers:
            fisher[n] += grads[f"{n}.weight"] ** 2
    return {n: 0.5 * fisher[n] / len(labels) * params[f"{n}.weight"] ** 2 for n in layers}


@pytest.mark.parametrize("cls", [TinyCNN, TinyResNet])
def test_obd_equals_half_the_squared_gradient_mean_times_the_squared_weight(cls):
    loaded = tiny_loaded(cls)
    lab = Lab(loaded)
    images, labels = lab.calibration()
    ctx = ScoreContext(loaded.model, loaded.input_spec.shape, (images, labels))
    ours = get_criterion("obd").score(ctx, "unstructured")
    reference = _obd_by_hand(tiny_loaded(cls).model, images, labels)
    assert set(ours) == set(reference)
    for name in ours:
        assert torch.allclose(ours[name], reference[name].float(), rtol=1e-4, atol=1e-12), name
    per_filter = get_criterion("obd").score(ctx, "filter")
    for name in ours:
        assert torch.allclose(per_filter[name], ours[name].reshape(ours[name].shape[0], -1).sum(1), rtol=1e-5)


def test_obd_leaves_the_given_model_as_it_was():
    loaded = tiny_loaded(TinyCNN)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    Lab(loaded).table("obd", "unstructured")
    assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())
    assert all(p.grad is None for p in loaded.model.parameters())
