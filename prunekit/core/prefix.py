"""Run only the part of a network that pruning changed: the dense activations at the cut are kept and reused.

A sensitivity scan prunes one layer (or one channel cluster) at a time; everything computed before that layer is
the dense model's. :func:`cut` splits a traced network (``torch.fx``) where a set of changed modules begins: the
*frontier* is every value computed outside the changed part that the changed part reads (in a residual network,
the skip connections crossing the cut as well as the layer's own input). :class:`PrefixCache` keeps the dense
frontier per batch of a fixed image set, so each further point runs the suffix only. The batches are the same
as a plain pass's, in the same memory layout, so each point's logits are the plain pass's, bit for bit.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import fx, nn

MAX_BYTES = 256 * 2**20  # dense activations a worker keeps, all cuts together (least recently used out first)


@dataclass(frozen=True)
class Cut:
    """A network split where its changed part begins: ``prefix(images) -> frontier``, ``suffix(*frontier) -> logits``."""

    frontier: tuple[str, ...]  # node names, in graph order
    prefix: fx.GraphModule
    suffix: fx.GraphModule
    changed_share: float  # the fraction of the graph's call nodes that run per point (1.0: no gain)
    modules: tuple[str | None, ...] = ()  # per frontier value, the module whose output it is (None: another op)


def trace(model: nn.Module) -> fx.GraphModule | None:
    """``model`` traced symbolically, or None when it cannot be (data-dependent control flow, say)."""
    try:
        return fx.symbolic_trace(model)
    except Exception:  # any tracing failure: the caller runs the plain pass
        return None


def changed_modules(dense: nn.Module, pruned: nn.Module) -> set[str] | None:
    """Names of the modules whose own parameters or buffers differ between the two models (same architecture);
    None when the shapes differ (a compacted model)."""
    changed = set()
    theirs = dict(pruned.named_modules())
    for name, mine in dense.named_modules():
        other = theirs.get(name)
        if other is None:
            return None
        a, b = _own_tensors(mine), _own_tensors(other)
        if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
            return None  # not the same architecture (compacted, or masks kept as extra buffers)
        if any(not torch.equal(a[k], b[k]) for k in a):
            changed.add(name)
    return changed


def _own_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_parameters(recurse=False)), **dict(module.named_buffers(recurse=False))}


def cut(graph_module: fx.GraphModule, changed: Iterable[str], root: nn.Module, after: bool = False) -> Cut | None:
    """The split of ``graph_module`` (traced from a model with ``root``'s architecture) at the modules
    ``changed``; the suffix runs ``root``'s modules (the pruned ones). None when nothing would be saved.

    ``after``: split after the changed modules instead, where their outputs are first read (a changed module
    whose input is another's output still runs in the prefix): for changes the caller makes to those outputs
    itself (the oracle zeroes channels there); :attr:`Cut.modules` names them in the frontier."""
    changed = set(changed)
    nodes = list(graph_module.graph.nodes)
    down: set[fx.Node] = set()
    kept: set[fx.Node] = set()  # after=True: changed modules that still run in the prefix
    for node in nodes:
        own = (node.op == "call_module" and node.target in changed) or (
            node.op == "get_attr" and str(node.target).rpartition(".")[0] in changed
        )
        from_down = any(arg in down for arg in node.all_input_nodes)
        if after and own and not from_down:
            kept.add(node)
        elif (own and not after) or from_down or (after and any(arg in kept for arg in node.all_input_nodes)):
            down.add(node)
    body = [n for n in nodes if n.op not in ("placeholder", "output", "get_attr")]
    if not down or all(n in down for n in body):
        return None
    frontier = [
        n for n in nodes if n not in down and n.op not in ("output", "get_attr") and any(u in down for u in n.users)
    ]
    if all(n.op == "placeholder" for n in frontier):
        return None
    output = next(n for n in nodes if n.op == "output")
    return Cut(
        tuple(n.name for n in frontier),
        _prefix(graph_module, nodes, down, frontier),
        _suffix(graph_module, nodes, down, frontier, output, root),
        sum(1 for n in body if n in down) / len(body),
        tuple(str(n.target) if n.op == "call_module" else None for n in frontier),
    )


def _prefix(gm: fx.GraphModule, nodes: list[fx.Node], down: set[fx.Node], frontier: list[fx.Node]) -> fx.GraphModule:
    graph, env = fx.Graph(), {}
    for node in nodes:
        if node in down or node.op == "output":
            continue
        env[node] = graph.node_copy(node, env.__getitem__)
    graph.output(tuple(env[n] for n in frontier))
    return fx.GraphModule(gm, graph)


def _suffix(
    gm: fx.GraphModule,
    nodes: list[fx.Node],
    down: set[fx.Node],
    frontier: list[fx.Node],
    output: fx.Node,
    root: nn.Module,
) -> fx.GraphModule:
    graph, env = fx.Graph(), {}
    for node in frontier:
        env[node] = graph.placeholder(node.name)
    for node in nodes:
        if node in down:
            env[node] = graph.node_copy(node, env.__getitem__)
        elif node.op == "get_attr" and any(u in down for u in node.users):
            env[node] = graph.node_copy(node, env.__getitem__)  # a constant the suffix reads
    graph.output(fx.node.map_arg(output.args[0], env.__getitem__))
    return fx.GraphModule(root, graph)


class PrefixCache:
    """Dense frontiers of cuts on fixed images, per batch, within ``max_bytes`` (least recently used out)."""

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._kept: OrderedDict[tuple, list[tuple[torch.Tensor, ...]]] = OrderedDict()
        self._bytes: dict[tuple, int] = {}

    @torch.inference_mode()
    def logits(self, key: tuple, split: Cut, images: torch.Tensor, batch: int) -> torch.Tensor:
        """Logits (N, classes) of the pruned model on ``images`` (N, C, H, W), batch by batch: the suffix on the
        kept dense frontier of ``(key, split.frontier)``, computed first if it is not kept."""
        name = (*key, split.frontier)
        kept = self._kept.get(name)
        if kept is not None:
            self._kept.move_to_end(name)
            return torch.cat([split.suffix(*_fresh(f)).float() for f in kept])
        out, frontiers, size = [], [], 0
        for start in range(0, len(images), batch):  # batch by batch: a frontier too big to keep is never held whole
            f = split.prefix(images[start : start + batch])
            out.append(split.suffix(*_fresh(f)).float())
            if frontiers is not None:
                size += sum(t.numel() * t.element_size() for t in f if isinstance(t, torch.Tensor))
                if size <= self.max_bytes:
                    frontiers.append(f)
                else:
                    frontiers = None  # too big to keep: the next point computes it again
        if frontiers is not None:
            self._keep(name, frontiers, size)
        return torch.cat(out)

    def _keep(self, name: tuple, frontiers: list[tuple[torch.Tensor, ...]], size: int) -> None:
        self._kept[name], self._bytes[name] = frontiers, size
        while sum(self._bytes.values()) > self.max_bytes:
            old, _ = self._kept.popitem(last=False)
            del self._bytes[old]

    def forget(self, model: str) -> None:
        for name in [n for n in self._kept if n[0] == model]:
            del self._kept[name], self._bytes[name]

    @property
    def bytes(self) -> int:
        return sum(self._bytes.values())


def _fresh(frontier: tuple) -> tuple:
    """Copies of a kept frontier's tensors: an in-place operation in the suffix (``out += identity``, an in-place
    ReLU) must not change what the next point starts from."""
    return tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in frontier)
