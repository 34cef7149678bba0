"""Every model in ``list_models()``: profile, dense path probe, and pruning at 0.5, checked independently.

Independent methods: MACs against ``torch.utils.flop_counter`` (its convolution and addmm/mm counts:
the weight products; batched matmuls between activations are attention, which the convention leaves
out), the dense probe against the count of exact zeros in the weights, removal counts against the
requested sparsity. The default suite takes one model per family (EVERY_FAMILY); ``--wide`` takes all. Models over 150M parameters or 5.5 GMACs are checked for profile and the dense probe
only, to keep the suite within its time (their pruning path is the same code as the light models').
The profile and the flop counter share one forward pass (the counter watches the profile's). A heavy
convolutional model's dense probe runs on a 160-pixel image rather than its own size: the same
operations and the same weights, each still on some path (a weight seen only by padding would show
up as effective sparsity above the exact zeros, and fail), at a fifth of the activation memory.
"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from prunekit.core.connectivity import PathProbe, connectivity
from prunekit.core.lab import Lab
from prunekit.core.profile import profile_model
from prunekit.core.spec import PruneConfig
from prunekit.errors import ProbeUnsupportedError, PrunekitError
from prunekit.models import zoo
from prunekit.service.memory import release_freed_memory
from tests.helpers import spec_of

pytestmark = pytest.mark.slow
ROWS = {row.name: row for row in zoo.list_models() if row.family != "timm"}  # timm: test_timm_families.py
HEAVY_PARAMS, HEAVY_MACS = 150e6, 5.5e9
GIANT_PROBE_SIDE = 160  # a heavy convolutional model's dense-probe image (see the module docstring)
# Attention mixes tokens through softmax and adds learned position tables: the twin cannot represent
# that exactly, so these families must say "not available", and no other model may.
ATTENTION = ("vit_", "swin_", "maxvit_")
WEIGHT_OPS = ("aten.convolution", "aten.addmm", "aten.mm")


def _profile_and_flop_counter_macs(loaded: zoo.Loaded):
    """Our profile and FlopCounterMode's weight MACs, both from the profile's one forward pass (the
    profile switches MultiheadAttention's fused path off, which the counter needs to see its linears)."""
    counter = FlopCounterMode(display=False)
    with counter:
        profile = profile_model(loaded.model, loaded.input_spec.shape)
    counts = counter.get_flop_counts()["Global"]
    return profile, sum(v for op, v in counts.items() if str(op) in WEIGHT_OPS) // 2  # FLOPs = 2 x MACs


def _zero_fraction(loaded: zoo.Loaded, layers: set[str]) -> float:
    weights = [m.weight for n, m in loaded.model.named_modules() if n in layers]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def _dense_probe(loaded: zoo.Loaded, prunable: set[str], shape: tuple[int, ...], hand_over: bool = False) -> None:
    """``hand_over``: the model becomes the probe's twin (a giant's second copy would not fit in 8 GB)."""
    zeros = _zero_fraction(loaded, prunable)
    try:
        probe = PathProbe(loaded.model, shape, validate=False, copy_model=not hand_over)
        conn = connectivity(probe, probe.net if hand_over else loaded.model)
    except ProbeUnsupportedError as exc:
        assert loaded.name.startswith(ATTENTION), f"{loaded.name}: probe unsupported: {exc}"
        assert "collapse detection is not available for this model" in str(exc)
        return
    assert not loaded.name.startswith(ATTENTION)
    assert not conn.collapsed and conn.disconnected_layers == []
    assert set(conn.effective_layer_sparsity) == prunable
    # Dense: nothing is cut, so the only ineffective weights are exact zeros and the weights whose
    # only paths run through them (a whole zero filter kills its channel; Lite0's shipped weights have some).
    if zeros == 0:
        assert conn.effective_sparsity == 0.0
    else:
        assert zeros <= conn.effective_sparsity <= zeros + 0.001


def _check_pruning(lab: Lab, structure: str, scope: str, paths: bool) -> None:
    try:
        result = lab.result(spec_of("magnitude", structure, "none", PruneConfig(0.5, scope)), paths=paths)
    except PrunekitError as exc:  # a clear refusal is allowed; a crash is not
        assert "not supported" in str(exc), str(exc)
        return
    table = lab.table("magnitude", structure)
    assert abs(result.units_removed - 0.5 * result.units_total) <= len(table.sets)
    prunable = sum(layer.params for layer in result.layers)
    zeros = round(result.achieved_sparsity * prunable)
    if structure == "unstructured":
        assert zeros >= result.units_removed
    assert result.achieved_sparsity > 0.0 and result.nonzero_params < result.total_params
    if not paths:
        assert result.effective_sparsity is None
    elif lab.probe_unavailable is None:
        assert result.effective_sparsity >= result.achieved_sparsity
        assert result.collapse is False or scope == "global"
    else:
        assert result.effective_sparsity is None and result.probe_note == lab.probe_unavailable


# each structure and each scope; the path test once per structure (it is a whole forward and backward)
PRUNING_CASES = (
    ("unstructured", "global", True),
    ("unstructured", "local", False),
    ("filter", "global", False),
    ("filter", "local", True),
)


# The default suite checks every architecture code path once: the smallest member of each torchvision family
# (a block type, a BatchNorm or not, attention), and every model we ship. The other 56 run with
# `./dev test --wide` (all 85 took 4:24 on 2 cores, about three minutes more): same code, bigger tensors.
EVERY_FAMILY = {
    "alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s", "googlenet", "inception_v3",
    "maxvit_t", "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small", "regnet_x_400mf", "regnet_y_400mf", "resnet18",
    "resnet50", "resnext50_32x4d", "shufflenet_v2_x0_5", "squeezenet1_0", "squeezenet1_1", "swin_t", "swin_v2_t",
    "vgg11", "vgg11_bn", "vit_b_32", "efficientnet-lite0",
}  # fmt: skip


def _cases() -> list:
    """Giants share one xdist worker, one after another: two of them at once would not fit in 8 GB."""
    cases = []
    for name, row in ROWS.items():
        marks = [pytest.mark.xdist_group("zoo-giants")] if (row.params or 0) > HEAVY_PARAMS else []
        if name not in EVERY_FAMILY and row.family != "bundled":
            marks.append(pytest.mark.wide)
        cases.append(pytest.param(name, marks=marks))
    return cases


@pytest.fixture(autouse=True)
def _give_memory_back():
    """After each model: collect and hand freed heap pages back to the system, so that one xdist worker
    running 85 models one after another does not keep the high-water mark of all of them."""
    yield
    release_freed_memory()


@pytest.mark.parametrize("name", _cases())
def test_zoo_model(name):
    torch.manual_seed(0)
    loaded = zoo.load(name, warm=False)  # the profile's forward comes next: a warm-up would be a second one
    profile, counted = _profile_and_flop_counter_macs(loaded)
    assert profile.total_params == sum(p.numel() for p in loaded.model.parameters())
    assert profile.total_macs == counted
    prunable = {layer.name for layer in profile.prunable()}
    heavy = profile.total_params > HEAVY_PARAMS or profile.total_macs > HEAVY_MACS
    shape = loaded.input_spec.shape
    if heavy and not name.startswith(ATTENTION) and shape[-1] > GIANT_PROBE_SIDE:
        shape = (shape[0], GIANT_PROBE_SIDE, GIANT_PROBE_SIDE)
    giant = profile.total_params > HEAVY_PARAMS
    _dense_probe(loaded, prunable, shape, hand_over=giant)  # a giant is not used after its probe
    if heavy:
        return
    lab = Lab(loaded)
    for structure, scope, paths in PRUNING_CASES:
        _check_pruning(lab, structure, scope, paths)
