"""Where parameters and compute live: per-layer params and MACs from one forward pass with hooks.

Convention (stated wherever numbers are shown): MACs are the multiply-accumulates of Conv and Linear
weights for ONE input image; FLOPs = 2 x MACs; biases, BatchNorm, activations, pooling and residual
additions are not counted (the convention of ``torch.utils.flop_counter`` for conv + linear).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

MAC_CONVENTION = (
    "MACs = multiply-accumulates of Conv and Linear weights for one input image; FLOPs = 2 x MACs; "
    "biases, BatchNorm, activations, pooling and additions are not counted."
)
PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)


@dataclass
class LayerInfo:
    """One leaf module: shapes are per image (batch dimension dropped)."""

    name: str
    kind: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: int
    macs: int
    prunable: bool  # a Conv2d/Linear whose weight pruning acts on

    @property
    def is_conv(self) -> bool:
        return self.kind == "Conv2d"


@dataclass
class Profile:
    """Per-layer rows in forward order plus totals."""

    layers: list[LayerInfo]
    input_shape: tuple[int, ...]
    total_params: int  # every parameter of the model, including those of non-leaf modules
    convention: str = field(default=MAC_CONVENTION)

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def conv_macs(self) -> int:
        return sum(layer.macs for layer in self.layers if layer.is_conv)

    @property
    def conv_params(self) -> int:
        return sum(layer.params for layer in self.layers if layer.is_conv)

    def by_name(self) -> dict[str, LayerInfo]:
        return {layer.name: layer for layer in self.layers}

    def prunable(self) -> list[LayerInfo]:
        return [layer for layer in self.layers if layer.prunable]


def weight_macs(module: nn.Module, output: torch.Tensor) -> int:
    """MACs of one Conv2d/Linear call that produced ``output`` (batch included)."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def _leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules without children, plus Conv/Linear subclasses that wrap a helper (e.g. a padding module)."""
    return [(n, m) for n, m in model.named_modules() if n and (isinstance(m, PRUNABLE_TYPES) or not list(m.children()))]


def layer_kind(module: nn.Module) -> str:
    """'Conv2d' / 'Linear' for any subclass of those, else the class name."""
    for base in PRUNABLE_TYPES:
        if isinstance(module, base):
            return base.__name__
    return type(module).__name__


def profile_model(model: nn.Module, input_shape: tuple[int, ...]) -> Profile:
    """Profile ``model`` on one zero image of shape ``input_shape`` (C, H, W); the model is not changed."""
    device = next(model.parameters()).device
    rows: dict[str, LayerInfo] = {}
    order: list[str] = []

    def hook_for(name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            if not isinstance(output, torch.Tensor):
                return
            in_shape = tuple(inputs[0].shape[1:]) if inputs and isinstance(inputs[0], torch.Tensor) else ()
            macs = weight_macs(module, output)
            if name in rows:  # a module used twice: its compute counts twice
                rows[name].macs += macs
                return
            order.append(name)
            rows[name] = LayerInfo(
                name=name,
                kind=layer_kind(module),
                input_shape=in_shape,
                output_shape=tuple(output.shape[1:]),
                params=sum(p.numel() for p in module.parameters()),
                macs=macs,
                prunable=isinstance(module, PRUNABLE_TYPES),
            )

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in _leaf_modules(model)]
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return Profile(
        layers=[rows[n] for n in order],
        input_shape=tuple(input_shape),
        total_params=sum(p.numel() for p in model.parameters()),
    )
