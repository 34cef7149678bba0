"""Where parameters and compute live: per-layer params and MACs from one forward pass with hooks.

Convention (stated wherever numbers are shown): MACs are the multiply-accumulates of Conv and Linear
weights for ONE input image; FLOPs = 2 x MACs; biases, BatchNorm, activations, pooling and residual
additions are not counted (the convention of ``torch.utils.flop_counter`` for conv + linear).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

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
    standardised: bool = False  # its weight is transformed before use (NFNet's ScaledStdConv2d): zeros do not stay

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

    def note(self) -> str | None:
        """A sentence on the layers left unpruned because their weight is standardised before use, or None."""
        names = [layer.name for layer in self.layers if layer.standardised]
        if not names:
            return None
        return (
            f"{len(names)} layers (e.g. {names[0]!r}) standardise their weight before using it, as NFNet's "
            "weight-standardised convolutions do: a zero there is renormalised into a weight again, so pruning "
            "cannot remove it and these layers are left out of pruning (their MACs are counted)"
        )


def _leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules without children, plus Conv/Linear subclasses that wrap a helper (e.g. a padding module)."""
    return [(n, m) for n, m in model.named_modules() if n and (isinstance(m, PRUNABLE_TYPES) or not list(m.children()))]


def layer_kind(module: nn.Module) -> str:
    """'Conv2d' / 'Linear' for any subclass of those, else the class name."""
    for base in PRUNABLE_TYPES:
        if isinstance(module, base):
            return base.__name__
    return type(module).__name__


_WEIGHT_CALLS = {F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d, F.linear}
# What a weight-standardised layer does to its weight before the convolution (timm's StdConv2d and
# ScaledStdConv2d: reshape, batch_norm over each filter, a gain; or by hand: subtract a mean, divide by a std).
_WEIGHT_TRANSFORMS = {
    torch.Tensor.reshape, torch.Tensor.view, torch.Tensor.reshape_as, torch.Tensor.view_as, torch.Tensor.flatten,
    F.batch_norm, torch.batch_norm, torch.Tensor.__sub__, torch.Tensor.__truediv__, torch.Tensor.__mul__,
    torch.Tensor.sub, torch.Tensor.div, torch.Tensor.mul, torch.sub, torch.div, torch.mul,
}  # fmt: skip
_MHA_ARGS = inspect.signature(F.multi_head_attention_forward)


class _Recorder(TorchFunctionMode):
    """Rows in forward order. MACs come from the conv/linear calls themselves, charged to the module
    that owns the weight: a weight used functionally (Swin's attention, a MultiheadAttention's
    projections) counts as much as one used through its module's ``forward``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.modules = dict(model.named_modules())
        self.owner = {id(p): n for n, m in self.modules.items() for p in m.parameters(recurse=False)}
        self.weights = {id(m.weight): n for n, m in self.modules.items() if isinstance(m, PRUNABLE_TYPES)}
        self.derived: dict[int, str] = {}  # id of a tensor computed from a layer's weight -> the layer
        self._alive: list[torch.Tensor] = []  # the derived tensors, held so that no other tensor reuses an id
        self.rows: dict[str, LayerInfo] = {}
        self.leaves = {m: n for n, m in _leaf_modules(model)}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _WEIGHT_CALLS:
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            self._charge(weight, args[0], out)
        elif func in _WEIGHT_TRANSFORMS and args and isinstance(out, torch.Tensor):
            self._derive(args[0], out)
        elif func is F.multi_head_attention_forward:
            self._attention(_MHA_ARGS.bind(*args, **kwargs).arguments, out[0])
        return out

    def _derive(self, source, out: torch.Tensor) -> None:
        name = self.weights.get(id(source)) or self.derived.get(id(source))
        if name is not None and out.numel() == source.numel():
            self.derived[id(out)] = name
            self._alive.append(out)

    def _charge(self, weight: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> None:
        name = self.owner.get(id(weight))
        if name is None and (name := self.derived.get(id(weight))) is not None:
            row = self.row(name, x, out)
            row.standardised, row.prunable = True, False
        if name is not None:  # a tensor the model does not own is an activation, not a weight
            self.row(name, x, out).macs += out.numel() * weight[0].numel()

    def _attention(self, a: dict, out: torch.Tensor) -> None:
        """The projections inside ``F.multi_head_attention_forward`` (the attention matmuls are not weights)."""
        inputs = (a["query"], a["key"], a["value"])
        if a.get("use_separate_proj_weight"):
            weights = (a["q_proj_weight"], a["k_proj_weight"], a["v_proj_weight"])
        else:
            weights = a["in_proj_weight"].chunk(3)
        projections = zip(inputs, weights, strict=True)
        for x, w in projections:
            name = self.owner.get(id(w), self.owner.get(id(a["in_proj_weight"])))
            self.row(name, a["query"], out).macs += (x.numel() // x.shape[-1]) * w.numel()
        self._charge(a["out_proj_weight"], out, out)

    def row(self, name: str, x, out) -> LayerInfo:
        if name not in self.rows:
            module = self.modules[name]
            self.rows[name] = LayerInfo(
                name=name,
                kind=layer_kind(module),
                input_shape=tuple(x.shape[1:]) if isinstance(x, torch.Tensor) else (),
                output_shape=tuple(out.shape[1:]),
                params=sum(p.numel() for p in module.parameters(recurse=False)),
                macs=0,
                prunable=isinstance(module, PRUNABLE_TYPES),
            )
        return self.rows[name]

    def hook(self, module: nn.Module, inputs, output) -> None:
        """Forward hook of every leaf: rows for layers without weights (BN, pooling...), in order."""
        if isinstance(output, torch.Tensor):
            self.row(self.leaves[module], inputs[0] if inputs else None, output)


def profile_model(model: nn.Module, input_shape: tuple[int, ...]) -> Profile:
    """Profile ``model`` on one zero image of shape ``input_shape`` (C, H, W); the model is not changed.

    MultiheadAttention's fused inference path is switched off for the pass, so its projections run
    (and are counted) as the ordinary linears they are.
    """
    device = next(model.parameters()).device
    recorder = _Recorder(model)
    handles = [m.register_forward_hook(recorder.hook) for m in recorder.leaves]
    was_training, fastpath = model.training, torch.backends.mha.get_fastpath_enabled()
    try:
        model.eval()
        torch.backends.mha.set_fastpath_enabled(False)
        with torch.inference_mode(), recorder:
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return Profile(
        layers=list(recorder.rows.values()),
        input_shape=tuple(input_shape),
        total_params=sum(p.numel() for p in model.parameters()),
    )
