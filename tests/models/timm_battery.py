"""The checks a timm architecture goes through (tests/models/test_timm_families.py), against independent methods:
MACs against torch's FlopCounterMode, global magnitude masks against a global cut computed here (torch.kthvalue),
the masked model's output against torch.nn.utils.prune's, the dense path probe against the model's own zeros,
and filter compaction against the masked model (or a refusal that names its reason)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import prune
from torch.utils.flop_counter import FlopCounterMode

from prunekit.core.lab import Lab
from prunekit.core.spec import Allocation, PruneSpec, Structure
from prunekit.errors import PrunekitError

WEIGHT_OPS = ("aten.convolution", "aten.addmm", "aten.mm")
NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def build(arch: str, side: int, seed: int = 0) -> nn.Module:
    """timm's ``arch`` with random weights and trained-looking norm layers (no zero-initialised scales, running
    statistics that are not the identity), in eval mode."""

    torch.manual_seed(seed)
    model = _create(arch, side).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, NORMS) and getattr(m, "weight", None) is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) * 0.2 - 0.1)
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.running_mean is not None:
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
        for name, p in model.named_parameters():  # layer scales and gains that timm starts at zero or 1e-5
            if p.ndim <= 1 and not name.endswith("bias") and float(p.abs().max()) < 1e-3:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
    return model


def _create(arch: str, side: int) -> nn.Module:
    """timm's ``arch`` for 10 classes; attention with a fixed grid (lambda layers) is built for the test's input
    size. One build: asking first whether ``img_size`` is accepted built every model twice."""
    import timm

    try:
        return timm.create_model(arch, pretrained=False, num_classes=10, img_size=side)
    except TypeError:
        return timm.create_model(arch, pretrained=False, num_classes=10)


@dataclass
class Report:
    arch: str
    macs: int = 0
    params: int = 0
    refusals: dict[str, str] = field(default_factory=dict)  # check -> the sentence prunekit said
    notes: list[str] = field(default_factory=list)


def flop_counter_macs(model: nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    counts = counter.get_flop_counts()["Global"]
    return sum(v for op, v in counts.items() if str(op) in WEIGHT_OPS) // 2


def global_threshold(model: nn.Module, names: list[str], sparsity: float) -> tuple[float, int]:
    """An independent global magnitude cut over ``names``' weights: (the k-th smallest |weight|, k), with
    k = round(sparsity * total) as torch.nn.utils.prune counts it. A mask that removes exactly k weights is
    that cut when it removes every weight below the threshold and keeps every one above it (equal magnitudes
    at the threshold may go either way). torch.kthvalue: torch.nn.utils.prune's global topk over the millions
    of weights took a third of each architecture's time; its masks are the reference on the bundled models."""
    flat = torch.cat([model.get_submodule(n).weight.detach().abs().reshape(-1) for n in names])
    k = round(sparsity * flat.numel())
    return float(torch.kthvalue(flat, k).values), k


def torch_pruned(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    ref = copy.deepcopy(model)
    for name, mask in masks.items():
        prune.custom_from_mask(ref.get_submodule(name), "weight", mask)
    return ref


def run(arch: str, side: int = 128) -> Report:
    """Every check on ``arch`` at ``side`` pixels (an input where every kernel tap sees the image, so that the
    dense probe's only ineffective weights are the model's own zeros). Raises AssertionError on a wrong number;
    a prunekit refusal is recorded with its sentence."""
    model = build(arch, side)
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    images, labels = torch.randn(16, 3, side, side), torch.arange(16) % 10
    lab = Lab.from_model(model, x[0], eval_data=(images, labels), name=arch)
    report = Report(arch)
    profile = lab.profile
    report.macs, report.params = profile.total_macs, profile.total_params
    counted = flop_counter_macs(lab.loaded.model, x[:1])
    assert profile.total_macs == counted, f"{arch}: profile MACs {profile.total_macs:,} != FlopCounterMode {counted:,}"
    assert profile.total_params == sum(p.numel() for p in model.parameters())
    report.notes += [*lab.loaded.notes, *filter(None, [profile.note()])]
    _check_masks(lab, model, x, report)
    _check_dense_probe(lab, report)
    _check_compaction(lab, report)
    return report


def _check_masks(lab: Lab, model: nn.Module, x: torch.Tensor, report: Report) -> None:
    pruner = lab.pruner(PruneSpec("magnitude", Structure.UNSTRUCTURED))
    result = pruner.prune(PruneSpec("magnitude", sparsity=0.5), paths=False)
    names = [layer.name for layer in result.layers]
    threshold, k = global_threshold(lab.loaded.model, names, 0.5)
    ours = {name: pruner.model.get_submodule(name).weight != 0 for name in names}
    assert sum(int((~m).sum()) for m in ours.values()) == k, f"{report.arch}: not {k:,} weights removed"
    # Millions of random float32 weights hold equal magnitudes: at the threshold, which of a tie goes is
    # the library's choice. Every other weight must be decided by its magnitude.
    for name in names:
        w = lab.loaded.model.get_submodule(name).weight.abs()
        decided = bool(ours[name][w > threshold].all()) and not bool(ours[name][w < threshold].any())
        assert decided, f"{report.arch}: {name}'s mask differs from the global cut off the threshold"
    # The same masks through torch.nn.utils.prune (ours: a tie may have gone the other way), in float64: deep
    # random networks amplify float32 rounding past any fixed tolerance.
    with torch.no_grad():
        want = torch_pruned(lab.loaded.model, ours).double()(x.double())
        got = copy.deepcopy(pruner.model).double()(x.double())
    scale = float(want.abs().max())
    assert float((got - want).abs().max()) <= 1e-9 * max(scale, 1e-6), f"{report.arch}: masked outputs differ"
    report.notes += [result.probe_note] if result.probe_note else []


def _check_dense_probe(lab: Lab, report: Report) -> None:
    if lab.probe_unavailable is not None:
        report.refusals["probe"] = lab.probe_unavailable
        return
    result = lab.pruner(PruneSpec("magnitude")).prune(PruneSpec("magnitude", sparsity=0.0))
    layers = {layer.name for layer in result.layers}
    weights = [m.weight for n, m in lab.loaded.model.named_modules() if n in layers]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros <= result.effective_sparsity <= zeros + 1e-3, (
        f"{report.arch}: dense effective sparsity {result.effective_sparsity} but {zeros} of the weights are zero"
    )


def _check_compaction(lab: Lab, report: Report) -> None:
    try:
        # local: every layer keeps 70% (random weights give layers scores of different scales, and a global
        # threshold would empty some layers, which compaction rightly refuses)
        spec = PruneSpec("l1", Structure.FILTER, Allocation.named("local"), sparsity=0.3)
        compacted = lab.pruner(spec).compact(spec)
    except PrunekitError as exc:
        reason = str(exc)
        assert reason.strip() and len(reason) > 20, f"{report.arch}: a refusal without its reason: {reason!r}"
        report.refusals["compaction"] = reason
        return
    if compacted.channels_removed == 0:  # e.g. NFNet: every convolution standardised, the classifier kept
        report.notes.append("filters: no channel is prunable")
        assert compacted.params_compact == compacted.params_dense
    else:
        assert compacted.params_compact < compacted.params_dense
