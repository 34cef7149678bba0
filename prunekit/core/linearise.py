"""The linearised twin's arithmetic: a torch function mode that makes a forward pass path-exact.

Inside :class:`Linearised`, with non-negative weights and a non-negative input, every value is a sum
of products of weights along input-output paths, so it is zero exactly when every path to it is cut:
- activations that map 0 to 0 (ReLU, ReLU6, SiLU, GELU, hard-swish, ...) become the identity: they
  clip or bend a value but cut no path, and a saturating one would otherwise zero a path's gradient;
- gates that never close (sigmoid, hard-sigmoid) become ``1 + x``: the gated branch always passes,
  and the gate's own weights still lie on paths;
- max-pooling becomes average pooling (a max passes its gradient to one input only);
- normalisations become positive scales: BatchNorm (eval) |gamma| / sqrt(var + eps) per channel;
  LayerNorm and GroupNorm |gamma| * (x + mean(x)), since their centring feeds every feature of the
  group into each output; additive constants (biases, shifts, scalars) are dropped and
  multiplicative scalars taken by absolute value, as the twin's weights are.
Any other operation that is not plain tensor plumbing raises :class:`ProbeUnsupportedError`: a probe
that cannot represent an operation exactly says so instead of guessing.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from prunekit.errors import ProbeUnsupportedError

Tensor = torch.Tensor


def _identity(x: Tensor, *args, **kwargs) -> Tensor:
    return x


def _gate(x: Tensor, *args, **kwargs) -> Tensor:
    return 1.0 + x


def _hardtanh(x: Tensor, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False) -> Tensor:
    if min_val > 0:  # would lift a cut (zero) value above zero
        raise ProbeUnsupportedError(f"hardtanh with min_val={min_val} > 0")
    return x


def _batch_norm(x: Tensor, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    if training or running_var is None:
        raise ProbeUnsupportedError("BatchNorm in training mode or without running statistics")
    scale = 1.0 / torch.sqrt(running_var.abs() + eps)
    if weight is not None:
        scale = scale * weight.abs()
    return x * scale.reshape(1, -1, *([1] * (x.dim() - 2)))


def _layer_norm(x: Tensor, normalized_shape, weight=None, bias=None, eps=1e-5) -> Tensor:
    # Centring mixes every normalised feature into each output (a feature cut to 0 becomes -mean/std,
    # still input-dependent), so each output is its own value plus the mean of all: both branches count.
    dims = tuple(range(-len(normalized_shape), 0))
    out = x + x.mean(dim=dims, keepdim=True)
    return out if weight is None else out * weight.abs()


def _group_norm(x: Tensor, num_groups, weight=None, bias=None, eps=1e-5) -> Tensor:
    groups = x.reshape(x.shape[0], num_groups, -1)
    out = (groups + groups.mean(-1, keepdim=True)).reshape(x.shape)
    return out if weight is None else out * weight.abs().reshape(1, -1, *([1] * (x.dim() - 2)))


def _max_pool2d(x: Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    if return_indices or dilation not in (1, (1, 1)):
        raise ProbeUnsupportedError("max-pooling with indices or dilation")
    return F.avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad=True)


def _adaptive_max_pool2d(x: Tensor, output_size, return_indices=False) -> Tensor:
    if return_indices:
        raise ProbeUnsupportedError("adaptive max-pooling with indices")
    return F.adaptive_avg_pool2d(x, output_size)


def _divide(x: Tensor, divisor, *args, **kwargs) -> Tensor:
    if not isinstance(divisor, numbers.Number) or divisor == 0:
        raise ProbeUnsupportedError("division by a tensor")
    return x / abs(divisor)


def _pad(x: Tensor, pad, mode: str = "constant", value: float | None = None) -> Tensor:
    return F.pad(x, pad, mode)  # a constant pad value is an offset: dropped, so padding adds zeros


def _dropout(x: Tensor, p=0.5, training=False, inplace=False) -> Tensor:
    if training:
        raise ProbeUnsupportedError("dropout in training mode")
    return x


class UnderflowGuard:
    """Watches a float32 twin for values small enough that a product could underflow to zero.

    On non-negative values a sum is zero only when every term is, so the twin's only way to report a
    live path as cut is underflow. Every value the twin computes (forward) and every gradient reaching
    a conv or linear output (backward) must stay at or above ``floor`` when positive, and the model's
    coefficients (weights, norm scales) at or above ``coefficient_floor``: a product of the two and a
    division by a fan-in then stays far above float32's smallest subnormal (1.4e-45). When any value
    falls below, ``tight`` is set and the caller redoes the trace in float64.
    """

    def __init__(self, floor: float = 1e-20, coefficient_floor: float = 1e-15) -> None:
        self.floor, self.coefficient_floor = floor, coefficient_floor
        self.tight = False

    def check(self, t) -> None:
        if self.tight or not isinstance(t, Tensor) or not t.is_floating_point() or t.numel() == 0:
            return
        t = t.detach()
        if float(torch.where(t > 0, t, torch.inf).amin()) < self.floor:  # the smallest positive value
            self.tight = True

    def check_coefficients(self, smallest: float) -> None:
        if smallest < self.coefficient_floor:
            self.tight = True

    def watch_gradient(self, out: Tensor) -> None:
        if out.requires_grad:
            out.register_hook(self._on_gradient)

    def _on_gradient(self, grad: Tensor) -> None:
        self.check(grad)


class Linearised(TorchFunctionMode):
    """Run a forward pass under this mode to get the path-exact twin's arithmetic (see module docstring).

    ``constants`` are the twin's own parameters and buffers: added to a value they are dropped (a
    learned offset is no path from the input); multiplied, they act as (non-negative) weights.
    ``guard`` (float32 twins) sees every value computed and every gradient at a weighted output.
    """

    def __init__(self, constants: list[Tensor], rescale: bool = True, guard: UnderflowGuard | None = None) -> None:
        super().__init__()
        self._constants = {id(t) for t in constants}
        self.rescale = rescale
        self.guard = guard

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _is_plumbing(func):  # moves values, computes none: nothing to check
            return func(*args, **kwargs)
        out = self._arithmetic(func, args, kwargs)
        if self.guard is not None and not _keeps_smallest(func):
            self.guard.check(out)
        return out

    def _arithmetic(self, func, args, kwargs):
        if func in WEIGHTED:
            return self._weighted(func, *args, **kwargs)
        if func in REPLACED:
            return REPLACED[func](*args, **kwargs)
        if func in ADDITIVE:
            return self._add(func, *args, **kwargs)
        if func in MULTIPLICATIVE:
            return func(*(_abs_scalar(a) for a in args), **kwargs)
        if func in EXACT:
            return func(*args, **kwargs)
        raise ProbeUnsupportedError(_name(func))

    def _weighted(self, func, x: Tensor, weight: Tensor, bias: Tensor | None = None, *args, **kwargs) -> Tensor:
        """A conv or linear without its bias; with ``rescale``, divided by its (detached) largest output.

        A positive constant per call changes no path's zero-ness, and keeps float64 from overflowing
        (to inf, then NaN) in deep all-positive networks; path *masses* are then relative, not absolute.
        """
        out = func(x, weight, None, *args, **kwargs)
        if self.rescale:
            top = out.detach().amax()
            out = out / top if top > 0 else out
        if self.guard is not None:
            self.guard.watch_gradient(out)
        return out

    def _add(self, func, a, b, *rest, alpha=1, **kwargs):
        if self._is_constant(b) or alpha == 0:
            return a
        if self._is_constant(a):
            return b
        if not isinstance(alpha, numbers.Number) or alpha < 0:
            raise ProbeUnsupportedError(f"{_name(func)} with alpha={alpha}")
        return func(a, b, *rest, alpha=alpha, **kwargs)

    def _is_constant(self, t) -> bool:
        return not isinstance(t, Tensor) or id(t) in self._constants


def _abs_scalar(a):
    return abs(a) if isinstance(a, numbers.Number) and not isinstance(a, bool) else a


def _name(func) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)


REPLACED: dict[Callable, Callable] = {
    **dict.fromkeys(
        (F.relu, F.relu_, torch.relu, torch.relu_, Tensor.relu, Tensor.relu_, F.relu6, F.silu, F.gelu, F.hardswish),
        _identity,
    ),
    **dict.fromkeys((F.elu, F.leaky_relu, F.mish, torch.tanh, Tensor.tanh, F.tanh), _identity),
    **dict.fromkeys((torch.sigmoid, Tensor.sigmoid, F.sigmoid, F.hardsigmoid), _gate),
    F.hardtanh: _hardtanh,
    F.hardtanh_: _hardtanh,
    F.pad: _pad,
    F.batch_norm: _batch_norm,
    F.layer_norm: _layer_norm,
    F.group_norm: _group_norm,
    F.max_pool2d: _max_pool2d,
    F.adaptive_max_pool2d: _adaptive_max_pool2d,
    F.dropout: _dropout,
    **dict.fromkeys((torch.div, Tensor.div, Tensor.__truediv__), _divide),
}
WEIGHTED = {F.conv2d, torch.conv2d, F.linear}
ADDITIVE = {torch.add, Tensor.add, Tensor.__add__, Tensor.__radd__, Tensor.add_, Tensor.__iadd__}
MULTIPLICATIVE = {torch.mul, Tensor.mul, Tensor.mul_, Tensor.__mul__, Tensor.__rmul__, Tensor.__imul__}
# Exact as they are on non-negative values: sums, averages, products and concatenations of paths.
EXACT = {
    F.adaptive_avg_pool2d,
    F.avg_pool2d,
    torch.cat,
    torch.matmul,
    Tensor.matmul,
    Tensor.mean,
    torch.mean,
    Tensor.sum,
    torch.sum,
    torch.flatten,
    Tensor.flatten,
    torch.zeros,
    torch._assert,
}
_NOT_SHRINKING = {torch.cat, torch.flatten, Tensor.flatten, torch.zeros, torch._assert}
_PLUMBING = {
    "view", "reshape", "permute", "transpose", "contiguous", "size", "dim", "chunk", "split", "unsqueeze",
    "squeeze", "expand", "numel", "__getitem__", "__get__", "swapaxes", "narrow", "unbind", "__len__",
    "channel_shuffle", "native_channel_shuffle", "shape", "dtype", "device", "requires_grad_",
}  # fmt: skip


def _keeps_smallest(func) -> bool:
    """Operations whose positive outputs are never smaller than their smallest positive input (on
    non-negative values: identities, sums, 1 + x gates, concatenation): the guard need not look."""
    return func in ADDITIVE or func in _NOT_SHRINKING or REPLACED.get(func) in (_identity, _gate, _dropout, _pad)


def _is_plumbing(func) -> bool:
    """Functions that move or describe values without arithmetic (reshapes, views, attribute reads)."""
    return getattr(func, "__name__", None) in _PLUMBING
