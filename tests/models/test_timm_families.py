"""Every timm CNN family works or says why in one sentence (tests/models/timm_battery.py runs the checks).

Random weights with trained-looking norm layers, at an input where every kernel tap sees the image. Each
architecture either passes every check or is refused, for a named part, with the sentence listed here: a change
in what is refused fails the test, as a wrong number does. ``--wide`` adds the heavy members (VGG-11 has 129M
parameters; NFNet-F0 68M; a lambda-attention ResNet spends a minute in Torch-Pruning before it is refused)."""

import pytest

from prunekit.service.memory import release_freed_memory
from tests.models.timm_battery import run

pytestmark = pytest.mark.slow
FILTERS_UNSUPPORTED = "filter pruning is not supported for this model"
NO_PROBE = "collapse detection is not available for this model"
# architecture -> (family, input side, {check: a phrase of prunekit's refusal})
FAMILIES = {
    "resnet10t": ("ResNet", 96, {}),
    "resnext26ts": ("ResNeXt", 96, {"compaction": "is a grouped convolution"}),
    "seresnet18": ("SE-ResNet", 96, {}),
    "skresnet18": ("SK-ResNet", 96, {"probe": NO_PROBE, "compaction": "through a split, reshape or gather"}),
    "resnest14d": ("ResNeSt", 96, {"probe": NO_PROBE, "compaction": "through a split, reshape or gather"}),
    "regnetx_002": ("RegNetX", 96, {"compaction": "is a grouped convolution"}),
    "regnety_002": ("RegNetY", 96, {"compaction": "is a grouped convolution"}),
    "densenet121": ("DenseNet", 96, {}),
    "dla46_c": ("DLA", 96, {}),
    "dpn48b": ("DPN", 96, {"compaction": "a split of a concatenation it cannot follow"}),
    "repvgg_a0": ("RepVGG", 96, {}),
    "efficientnet_b0": ("EfficientNet", 96, {}),
    "mobilenetv2_050": ("MobileNetV2", 96, {}),
    "mobilenetv3_small_050": ("MobileNetV3", 96, {}),
    "mnasnet_small": ("MNASNet", 96, {}),
    "ghostnet_050": ("GhostNet", 96, {"compaction": "through a split, reshape or gather"}),
    "mixnet_s": (
        "MixNet",
        192,
        {"compaction": "through a split, reshape or gather"},
    ),  # 9x9 kernels at stride 32: a 6x6 map lets every tap see the image
    "rexnet_100": ("ReXNet", 96, {"compaction": "runs round a cycle"}),
    "lcnet_050": ("LCNet", 96, {}),
    "convnext_atto": ("ConvNeXt", 128, {"compaction": "differs from the masked one"}),
    "cspresnet50": ("CSPResNet", 96, {"compaction": "a split of a concatenation it cannot follow"}),
    "cspdarknet53": ("CSPDarkNet", 96, {"compaction": "a split of a concatenation it cannot follow"}),
    "darknet17": ("DarkNet", 96, {}),
    "ese_vovnet19b_slim_dw": ("VoVNet", 96, {}),
    "selecsls42b": ("SelecSLS", 96, {}),
    "hrnet_w18_small": ("HRNet", 96, {"probe": NO_PROBE}),
    "xception41": ("Xception", 96, {}),
    "nf_resnet26": ("NF-ResNet", 96, {"probe": NO_PROBE}),
    "nf_regnet_b0": ("NF-RegNet", 96, {"probe": NO_PROBE, "compaction": "is a grouped convolution"}),
    "mobileone_s0": ("MobileOne", 96, {}),
    "fastvit_t8": ("FastViT", 96, {"probe": NO_PROBE, "compaction": "the surgery's model does not run"}),
    "inception_v3": ("Inception", 128, {}),  # unpadded 3x3s on small late maps: 128 lets every tap see
}
WIDE = {
    "vgg11": ("VGG", 96, {}),
    "dm_nfnet_f0": ("NFNet", 96, {"probe": NO_PROBE, "compaction": "the surgery's model does not run"}),
    "lambda_resnet26t": ("lambda ResNet", 96, {"probe": NO_PROBE, "compaction": "could not group"}),
}
STANDARDISED = {"nf_resnet26", "nf_regnet_b0", "dm_nfnet_f0"}


def _cases():
    return [pytest.param(a, *v, id=a) for a, v in FAMILIES.items()] + [
        pytest.param(a, *v, id=a, marks=pytest.mark.wide) for a, v in WIDE.items()
    ]


def test_at_least_thirty_architectures_in_every_family_the_issue_names():
    assert len(FAMILIES) >= 30


@pytest.mark.parametrize(("arch", "family", "side", "refused"), _cases())
def test_timm_architecture(arch, family, side, refused):
    try:
        report = run(arch, side)
    finally:
        release_freed_memory()
    assert set(report.refusals) == set(refused), report.refusals
    for check, phrase in refused.items():
        assert phrase in report.refusals[check], report.refusals[check]
    standardised = any("standardise their weight" in n for n in report.notes)
    assert standardised == (arch in STANDARDISED), report.notes
