"""Coupled channel clusters for structured (filter) pruning, from Torch-Pruning's dependency graph.

A cluster is every tensor slice that must go together when one output channel is removed: the
producing convs' filters (several when a residual add couples them), the BatchNorm entries that follow,
the consuming layers' input kernels, and a depthwise conv's matching filter.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn

from prunekit.core.profile import PRUNABLE_TYPES
from prunekit.errors import InvalidArgumentError

OUT, IN = "out", "in"


@dataclass(frozen=True)
class Member:
    """One module's part in a cluster: channel j of the cluster is ``index[j]`` (rows ``index[j]``)."""

    layer: str  # dotted module name
    role: str  # OUT (filters / BN entries) or IN (input kernels of a consumer)
    index: tuple[tuple[int, ...], ...]  # per cluster channel: the module's indices along ``role``


@dataclass(frozen=True)
class Cluster:
    """A set of coupled channels; ``root`` is the layer whose filters define them."""

    root: str
    size: int  # number of channels
    members: tuple[Member, ...]

    def producers(self) -> list[Member]:
        return [m for m in self.members if m.role == OUT]

    def layers(self) -> set[str]:
        return {m.layer for m in self.members}


def _root_positions(idxs, n: int, layer: str, root: str) -> list[int]:
    """Map each position of a dependency's index list to its cluster channel."""
    if idxs and getattr(idxs[0], "root_idx", None) is not None:
        return [int(i.root_idx) for i in idxs]
    if len(idxs) % n:
        raise InvalidArgumentError(
            f"filter pruning is not supported for this model: {len(idxs)} channels of {layer!r} depend on the "
            f"{n} filters of {root!r} through a split, reshape or gather that removing filters cannot follow; "
            "unstructured pruning works"
        )
    per = len(idxs) // n  # a flatten expands each channel into H*W consecutive features
    return [p // per for p in range(len(idxs))]


def _role(handler_name: str, module: nn.Module) -> str:
    if "out_channels" in handler_name:
        return OUT
    if isinstance(module, nn.Conv2d) and module.groups == module.in_channels and module.groups > 1:
        return OUT  # a depthwise conv's input channel j is its filter j
    return IN


def _map_once(tp) -> None:
    """Let a graph we mark skip Torch-Pruning's index re-mapping before each group.

    ``get_pruning_group`` recomputes every concat's index mapping on every call, and that update is
    quadratic in a concat's inputs: 15 of DenseNet-201's 16 seconds of clusters. The mapping depends
    only on the traced graph, which reading groups never changes, and ``build_dependency`` already
    computed it; graphs not marked (anyone else's) take the library's own path. Installed once per process.
    """
    module = tp.dependency.index_mapping
    if getattr(module.update_index_mapping, "prunekit_once", False):
        return
    original = module.update_index_mapping

    def update_index_mapping(graph) -> None:
        if not getattr(graph, "_prunekit_mapped", False):
            original(graph)

    update_index_mapping.prunekit_once = True
    module.update_index_mapping = update_index_mapping


# The most parts a group may gather while we build clusters (None: no bound, anyone else's use of the library).
GROUP_PARTS = 5000  # real groups: ResNeSt's largest has 679 parts, DenseNet-201's 198
_GROUP_LIMIT: ContextVar[int | None] = ContextVar("prunekit_group_limit", default=None)


class _RunawayGroup(Exception):
    pass


def _bound_groups(tp) -> None:
    """Let a group traversal we bound stop when it runs away.

    ReXNet adds its shortcut into the first channels of a wider tensor; Torch-Pruning's traversal of such a
    graph keeps meeting new index sets of the same layers and never ends (over six minutes, no progress,
    no way out). A real group has at most several hundred parts (ResNeSt: 679, DenseNet-201: 198), so a group
    past ``GROUP_PARTS`` (or four per module of a larger model) is a cycle; reaching it takes seconds (the
    library's duplicate check is quadratic). Installed once per process; unbounded outside our calls.
    """
    group_cls = tp.dependency.group.Group
    if getattr(group_cls.add_dep, "prunekit_bounded", False):
        return
    original = group_cls.add_dep

    def add_dep(self, dep, idxs):
        limit = _GROUP_LIMIT.get()
        if limit is not None and len(self._group) >= limit:
            raise _RunawayGroup(len(self._group))
        return original(self, dep, idxs)

    add_dep.prunekit_bounded = True
    group_cls.add_dep = add_dep


def build_clusters(model: nn.Module, input_shape: tuple[int, ...], map_once: bool = True) -> list[Cluster]:
    """Clusters of ``model`` for an input (C, H, W). The model is not changed (a copy is traced).

    The last Linear layer (its outputs are the classes) is never pruned. ``map_once=False`` takes
    Torch-Pruning's own (slow) path of re-mapping indices before each group: the same clusters.
    """
    import torch_pruning as tp

    attention = sorted({type(m).__name__ for m in model.modules() if "Attention" in type(m).__name__})
    if attention:
        raise InvalidArgumentError(
            f"filter pruning is not supported for attention models (this one has {', '.join(attention)}): heads "
            "and token mixing couple channels that removing filters cannot follow; unstructured pruning works"
        )
    traced = copy.deepcopy(model).cpu().eval()
    for p in traced.parameters():  # the dependency graph only follows parameters that need grad
        p.requires_grad_(True)
    names = {m: n for n, m in traced.named_modules()}
    linears = [m for m in traced.modules() if isinstance(m, nn.Linear)]
    ignored = list({id(m): m for m in [*linears[-1:], *_last_run(traced, input_shape)]}.values())
    try:
        graph = tp.DependencyGraph().build_dependency(traced, example_inputs=torch.zeros(1, *input_shape))
    except Exception as exc:  # e.g. ShuffleNet's channel shuffle: Torch-Pruning cannot map its indices
        raise InvalidArgumentError(
            f"filter pruning is not supported for this model: Torch-Pruning's dependency graph could not trace "
            f"its channel coupling ({type(exc).__name__}: {exc}); unstructured pruning works"
        ) from None
    graph._prunekit_mapped = map_once  # build_dependency has just mapped every index (see _map_once)
    _map_once(tp)
    _bound_groups(tp)
    bound = _GROUP_LIMIT.set(max(GROUP_PARTS, 4 * len(names)))
    try:  # each group is read as it comes: a refusal stops the walk (the ResNeSt battery: 9 s instead of 23)
        groups = graph.get_all_groups(ignored_layers=ignored, root_module_types=list(PRUNABLE_TYPES))
        return [c for g in _walked(groups) if (c := _cluster_from_group(g, names)) is not None]
    finally:
        _GROUP_LIMIT.reset(bound)


def _walked(groups: Iterator) -> Iterator:
    """Torch-Pruning's groups, one at a time; its failures become refusals (our own code's are not caught)."""
    while True:
        try:
            group = next(groups)
        except StopIteration:
            return
        except _RunawayGroup as exc:
            raise InvalidArgumentError(
                f"filter pruning is not supported for this model: Torch-Pruning's channel coupling runs round a "
                f"cycle (a group grew past {exc.args[0]} parts; a shortcut added into part of a wider tensor, as in "
                "ReXNet, does this); unstructured pruning works"
            ) from None
        except Exception as exc:  # e.g. lambda layers: Torch-Pruning's index mapping divides by a zero-sized dim
            raise InvalidArgumentError(
                f"filter pruning is not supported for this model: Torch-Pruning could not group its coupled "
                f"channels ({type(exc).__name__}: {exc}); unstructured pruning works"
            ) from None
        yield group


def _last_run(model: nn.Module, input_shape: tuple[int, ...]) -> list[nn.Module]:
    """The prunable layer a forward runs last: the classifier, whose outputs are the classes (a 1x1
    convolution in some networks, as DLA's, rather than a Linear)."""
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in model.modules()
             if isinstance(m, PRUNABLE_TYPES)]  # fmt: skip
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    return order[-1:]


def _cluster_from_group(group, names: dict[nn.Module, str]) -> Cluster | None:
    items = [(dep, idxs) for dep, idxs in group.items if dep.target.module in names and names[dep.target.module]]
    if not items:
        return None
    root_dep, root_idxs = items[0]
    n = len(root_idxs)
    if n == 0:  # a group with no channels of its own (e.g. lambda layers' position tables): nothing to remove
        return None
    members: dict[tuple[str, str], list[list[int]]] = {}
    for dep, idxs in items:
        module = dep.target.module
        if not isinstance(module, (*PRUNABLE_TYPES, nn.BatchNorm2d, nn.BatchNorm1d)):
            continue
        key = (names[module], _role(dep.handler.__name__, module))
        slots = members.setdefault(key, [[] for _ in range(n)])
        positions = _root_positions(idxs, n, names[module], names[root_dep.target.module])
        bound = _channels(module, key[1])
        for pos, idx in zip(positions, idxs, strict=True):
            value = int(getattr(idx, "idx", idx))
            if not 0 <= value < bound:
                raise InvalidArgumentError(
                    f"filter pruning is not supported for this model: Torch-Pruning couples channel {value} of "
                    f"{names[module]!r}, which has {bound} (a split of a concatenation it cannot follow); "
                    "unstructured pruning works"
                )
            if value not in slots[pos]:
                slots[pos].append(value)
    return Cluster(
        root=names[root_dep.target.module],
        size=n,
        members=tuple(Member(layer, role, tuple(tuple(s) for s in slots)) for (layer, role), slots in members.items()),
    )


def _channels(module: nn.Module, role: str) -> int:
    """How many channels ``module`` has along ``role`` (its filters, or its inputs)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.num_features
    if isinstance(module, nn.Linear):
        return module.out_features if role == OUT else module.in_features
    return module.out_channels if role == OUT else module.in_channels  # a depthwise conv's out >= in


ROLE_WORDS = {OUT: "filters", IN: "input kernels"}


@dataclass(frozen=True)
class Coupling:
    """What goes with one layer's filters: the cluster they belong to, each member with its part in it."""

    layer: str
    cluster: Cluster

    def rows(self, modules: dict[str, nn.Module]) -> list[dict[str, str]]:
        """One row per member: its layer, type and part (filters, BatchNorm entries or input kernels)."""
        return [
            {
                "layer": m.layer,
                "type": type(modules[m.layer]).__name__,
                "part": "BatchNorm entries"
                if isinstance(modules[m.layer], nn.modules.batchnorm._BatchNorm)
                else ROLE_WORDS[m.role],
            }
            for m in self.cluster.members
        ]

    def producers(self) -> list[str]:
        """Layers whose filters go together (more than one: a residual add or a depthwise conv couples them)."""
        return [m.layer for m in self.cluster.producers()]


def coupling(clusters: list[Cluster] | tuple[Cluster, ...], layer: str) -> Coupling | None:
    """The cluster ``layer``'s filters are pruned in (None: its outputs are never pruned, e.g. the classifier)."""
    for cluster in clusters:
        if any(m.layer == layer and m.role == OUT for m in cluster.members):
            return Coupling(layer, cluster)
    return None
