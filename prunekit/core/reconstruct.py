"""Recovery without training: after filter pruning, solve each next layer's weights by least squares so that its
output on calibration images matches the dense model's (He et al. 2017, channel pruning; Luo et al. 2017, ThiNet).

Layer by layer in module order, the pruned model's input to a layer (earlier layers already solved) and the dense
model's output of the same layer are recorded on the calibration images; the layer's kept weights are the least-
squares solution of ``X_kept W^T = Y - b`` over sampled rows (a convolution's rows are output positions, its
columns the unfolded input patches). The current weights are one candidate of that problem, so the solution
never raises the reconstruction error on the rows it was solved on. A layer whose removed inputs the masks do not
share across its kept outputs (not filter pruning) or a grouped convolution is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prunekit.core.profile import PRUNABLE_TYPES

Masks = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Solved:
    """One layer's reconstruction error (mean squared, on the sampled rows) before and after."""

    layer: str
    before: float
    after: float
    rows: int


def _record(model: nn.Module, layer: str, images: torch.Tensor, output: bool) -> torch.Tensor:
    """``layer``'s input (or output) on ``images`` (one forward, in eval mode)."""
    seen: list[torch.Tensor] = []
    module = model.get_submodule(layer)
    hook = module.register_forward_hook(lambda m, i, o: seen.append((o if output else i[0]).detach()))
    try:
        with torch.no_grad():
            model.eval()(images)
    finally:
        hook.remove()
    return seen[0]


def layer_rows(module: nn.Module, x: torch.Tensor, y: torch.Tensor, rows: int, gen: torch.Generator):
    """The least-squares rows of one layer: inputs (R, in*kh*kw) and targets minus bias (R, out)."""
    if isinstance(module, nn.Linear):
        inputs, targets = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    else:
        patches = nn.functional.unfold(
            x, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride
        )  # (N, in*kh*kw, L)
        inputs = patches.transpose(1, 2).reshape(-1, patches.shape[1])
        targets = y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1])
    if module.bias is not None:
        targets = targets - module.bias.detach()
    if inputs.shape[0] > rows:
        pick = torch.randperm(inputs.shape[0], generator=gen)[:rows]
        inputs, targets = inputs[pick], targets[pick]
    return inputs.double(), targets.double()


def _columns(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(kept output rows, kept input columns) when every kept output keeps the same inputs; else None."""
    flat = keep.reshape(keep.shape[0], -1)
    kept_rows = flat.any(1).nonzero().flatten()
    if kept_rows.numel() == 0:
        return None
    columns = flat[kept_rows[0]]
    if not bool((flat[kept_rows] == columns).all()):
        return None
    return kept_rows, columns.nonzero().flatten()


def solve_layer_(
    module: nn.Module, keep: torch.Tensor, x: torch.Tensor, y: torch.Tensor, rows: int, gen
) -> Solved | None:
    """Least-squares weights for ``module``'s kept entries, in place; None where it cannot be solved."""
    found = _columns(keep)
    if found is None or getattr(module, "groups", 1) != 1:
        return None
    kept_rows, kept_cols = found
    inputs, targets = layer_rows(module, x, y, rows, gen)
    a, b = inputs[:, kept_cols], targets[:, kept_rows]
    weight = module.weight.detach().reshape(module.weight.shape[0], -1)
    current = weight[kept_rows][:, kept_cols].double()
    before = float(((a @ current.T - b) ** 2).mean())
    solution = torch.linalg.lstsq(a, b).solution.T  # (kept out, kept in)
    after = float(((a @ solution.T - b) ** 2).mean())
    if after > before:  # a rank-deficient system solved less well than the weights already there: keep them
        return Solved("", before, before, a.shape[0])
    with torch.no_grad():
        new = weight.clone()
        new[kept_rows.unsqueeze(1), kept_cols.unsqueeze(0)] = solution.to(new.dtype)
        module.weight.copy_(new.reshape(module.weight.shape))
    return Solved("", before, after, a.shape[0])


def reconstruct_(
    pruned: nn.Module, dense: nn.Module, masks: Masks, images: torch.Tensor, rows: int = 20_000, seed: int = 0
) -> list[Solved]:
    """Solve, in module order, every prunable layer of ``pruned`` whose inputs ``masks`` removed (in place on
    ``pruned``; ``dense`` is only read). ``images`` (N, C, H, W) are the calibration images; at most ``rows``
    sampled rows per layer. Returns each solved layer's error before and after."""
    gen = torch.Generator().manual_seed(seed)
    solved = []
    for name, module in pruned.named_modules():
        keep = masks.get(f"{name}.weight")
        if not isinstance(module, PRUNABLE_TYPES) or keep is None:
            continue
        flat = keep.reshape(keep.shape[0], -1)
        if bool(flat[flat.any(1)].all()):  # no input of a kept output removed: nothing to solve
            continue
        x = _record(pruned, name, images, output=False)
        y = _record(dense, name, images, output=True)
        done = solve_layer_(module, keep, x, y, rows, gen)
        if done is not None:
            solved.append(Solved(name, done.before, done.after, done.rows))
    return solved
