"""Per-layer params/MACs against the seed figure and torch's own FlopCounterMode."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from torchvision import models

from prunekit.core.profile import profile_model


@pytest.fixture(scope="module")
def vgg16_profile():
    return profile_model(models.vgg16(weights=None), (3, 224, 224))


def test_vgg16_seed_figure(vgg16_profile):
    convs = [layer for layer in vgg16_profile.layers if layer.is_conv]
    assert len(convs) == 13
    last3 = convs[-3:]
    assert sum(x.params for x in last3) == 7_079_424
    assert vgg16_profile.conv_params == 14_714_688
    assert sum(x.macs for x in last3) == 1_387_266_048
    assert vgg16_profile.conv_macs == 15_346_630_656
    assert round(100 * 7_079_424 / vgg16_profile.conv_params, 2) == 48.11


def _flop_counter_macs(model, shape) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *shape))
    return counter.get_total_flops() // 2


@pytest.mark.parametrize(
    ("name", "gmacs"),
    [("resnet18", 1.814), ("resnet50", 4.089), ("vgg16", 15.470), ("mobilenet_v2", 0.301)],
)
def test_totals_agree_with_flop_counter(name, gmacs):
    model = models.get_model(name, weights=None).eval()
    ours = profile_model(model, (3, 224, 224)).total_macs
    assert ours == _flop_counter_macs(model, (3, 224, 224))
    assert round(ours / 1e9, 3) == gmacs


def test_params_cover_the_whole_model():
    model = models.resnet18(weights=None)
    prof = profile_model(model, (3, 224, 224))
    assert prof.total_params == sum(p.numel() for p in model.parameters())
    assert sum(x.params for x in prof.layers) == prof.total_params  # every parameter sits in one leaf row
