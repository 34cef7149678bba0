"""The engine's front door: a shared :class:`Lab` per model and :class:`Pruner` working copies.

``Lab`` holds what is expensive and never mutated (profile, clusters, sorted score tables) and serves
every session: ``Lab.result`` computes each configuration's :class:`PruneResult` once (however many
sessions ask at once) on a pruner borrowed from a small pool, so memory does not grow with sessions.
A ``Pruner`` owns one working copy and one path probe, and turns a :class:`PruneSpec` into a
:class:`PruneResult` whose every number is measured on the pruned tensors themselves.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property

import torch

from prunekit.core import own
from prunekit.core.allocate import Removal, ScoreTable, allocate, build_table
from prunekit.core.compact import CHECK_IMAGES, Compacted, check_groups, compact, removed_channels
from prunekit.core.connectivity import Connectivity, PathProbe, connectivity
from prunekit.core.evaluate import Accuracy, Progress, accuracy
from prunekit.core.importance import ScoreContext, get_criterion
from prunekit.core.loaded import Loaded
from prunekit.core.masks import WorkingCopy, apply_masks_, zero_count
from prunekit.core.profile import Profile, profile_model
from prunekit.core.result import LayerResult, PruneResult
from prunekit.core.shared import Pool, SingleFlight
from prunekit.core.spec import Normalisation, PruneConfig, PruneSpec, Structure
from prunekit.core.structure import Cluster, build_clusters
from prunekit.errors import InvalidArgumentError, ProbeUnsupportedError

INLINE_PATHS_MACS = 200_000_000  # up to this many MACs the path test runs inline (fmnist CNNs: ~1 ms)
CALIBRATION_IMAGES = 256  # data-driven criteria read the LAST images of the eval split (stated in the UI)
POOL_SIZE = 2  # working copies per (model, table): enough for two concurrent misses, bounded for big models


class Lab:
    """Shared per model: profile, clusters and sorted tables (built once, then read-only)."""

    def __init__(self, loaded: Loaded) -> None:
        self.loaded = loaded
        self._tables: SingleFlight[ScoreTable] = SingleFlight(maxsize=64)
        self._pools: dict[tuple, Pool[Pruner]] = {}
        self._lock = threading.Lock()
        self._results: SingleFlight[object] = SingleFlight()
        self._spare_probe: PathProbe | None = None

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        example_input: torch.Tensor,
        eval_data: own.EvalSource,
        classes: Sequence[str] | None = None,
        train_data: own.EvalSource | None = None,
        **options,
    ) -> Lab:
        """A lab on your own ``model`` (copied; yours is never changed).

        ``example_input``: one input ``(C, H, W)`` or ``(1, C, H, W)``. ``eval_data``: ``(images (N, C, H, W),
        labels (N,))``, a torch ``Dataset`` or ``DataLoader`` of such pairs, or an ImageFolder path
        (``DIR/<class>/<image>``, classes in sorted order). ``classes`` default to the dataset's ``classes`` or
        ``'0'..'K-1'``; ``train_data`` (same forms) is used by recovery. ``options``: ``name``, and
        ``normalisation=(mean, std)`` for ImageFolder reads (see :class:`prunekit.core.own.OwnModel`).
        """
        return cls(own.from_model(model, own.OwnModel(example_input, eval_data, classes, train_data, **options)))

    @cached_property
    def profile(self) -> Profile:
        return profile_model(self.loaded.model, self.loaded.input_spec.shape)

    @cached_property
    def clusters(self) -> tuple[Cluster, ...]:
        return tuple(build_clusters(self.loaded.model, self.loaded.input_spec.shape))

    @cached_property
    def probe_unavailable(self) -> str | None:
        """None when the path probe represents this model exactly, else the reason it cannot."""
        try:
            probe = PathProbe(self.loaded.model, self.loaded.input_spec.shape)
        except ProbeUnsupportedError as exc:
            return str(exc)
        self._spare_probe = probe  # validated: the first pruner takes it instead of building its own
        return None

    def new_probe(self) -> PathProbe | None:
        """A path probe of this model for one pruner (its own; probes are not shared), or None when the
        probe cannot represent the model."""
        if self.probe_unavailable is not None:
            return None
        with self._lock:
            probe, self._spare_probe = self._spare_probe, None
        return probe or PathProbe(self.loaded.model, self.loaded.input_spec.shape, validate=False)

    @cached_property
    def first_last(self) -> frozenset[str]:
        names = [layer.name for layer in self.profile.prunable()]
        return frozenset(names[:1] + names[-1:])

    def calibration(self, images: int | None = CALIBRATION_IMAGES) -> tuple[torch.Tensor, torch.Tensor]:
        """The last ``images`` images of the evaluation split and their labels (None: all of them)."""
        folder = self.loaded.eval_folder
        if folder is not None:  # read only the tail of an ImageFolder
            data = folder.read(0 if images is None else max(0, len(folder) - images), len(folder))
        else:
            data = self.loaded.eval_data()
        n = len(data) if images is None else min(images, len(data))
        device = self.loaded.device
        return data.images[-n:].to(device), data.labels[-n:].to(device)

    def table(
        self,
        criterion: str,
        structure: Structure | str = Structure.UNSTRUCTURED,
        normalise: Normalisation | str = "none",
    ) -> ScoreTable:
        """Score and sort once per (criterion, structure, normalisation); later calls are lookups."""
        key = (criterion, Structure.parse(structure), Normalisation.parse(normalise))
        return self._tables.get(key, lambda: self._build(*key))

    def _build(
        self, criterion: str, structure: Structure, normalise: Normalisation, images: int | None = CALIBRATION_IMAGES
    ) -> ScoreTable:
        crit = get_criterion(criterion)
        ctx = ScoreContext(
            model=self.loaded.model,
            input_shape=self.loaded.input_spec.shape,
            calib=self.calibration(images) if crit.needs_data else None,
            layers=frozenset(layer.name for layer in self.profile.prunable()),
        )
        scores = crit.score(ctx, structure)
        clusters = self.clusters if structure.is_filter else ()
        return build_table(scores, structure, criterion, normalise, clusters)

    def table_on(self, criterion: str, structure: Structure | str, images: int | None) -> ScoreTable:
        """A fresh table of ``criterion`` whose data-driven scores read the last ``images`` evaluation images
        (None: all) instead of the usual :data:`CALIBRATION_IMAGES`; raw scores, not cached."""
        return self._build(criterion, Structure.parse(structure), Normalisation.NONE, images)

    def pruner(self, spec: PruneSpec | None = None) -> Pruner:
        """A private pruner (its own working copy) on ``spec``'s score table: for scripts and sweeps that own it.
        Its ``prune`` takes the spec at any sparsity and scope (``spec.at(0.8)``)."""
        spec = PruneSpec() if spec is None else spec
        return Pruner(self, self.table(*spec.table_key))

    def prune(self, spec: PruneSpec, paths: bool = True) -> PruneResult:
        """``spec`` applied to a private working copy and measured (a fresh result; the lab is unchanged)."""
        return self.pruner(spec).prune(spec, paths)

    def result(self, spec: PruneSpec, paths: bool = True) -> PruneResult:
        """The shared :class:`PruneResult` of ``spec``, computed once. Read-only: never mutate it.

        ``paths=False`` skips the path test (effective sparsity and collapse are None): the part of a
        slider move that costs a whole forward and backward; the app measures it apart on big models."""
        return self._results.get(
            ("result", spec.key(), paths), lambda: self._on_pooled(spec, lambda p: p.prune(spec, paths))
        )

    def has_result(self, spec: PruneSpec, paths: bool = True) -> bool:
        """Whether :meth:`result` of ``spec`` is computed already (a lookup, never a computation)."""
        return self._results.peek(("result", spec.key(), paths)) is not None

    @cached_property
    def paths_inline(self) -> bool:
        """Whether the path test is cheap enough to run inside a slider move (see INLINE_PATHS_MACS)."""
        return self.profile.total_macs <= INLINE_PATHS_MACS

    @property
    def paths_in_move(self) -> bool:
        """Whether a slider move measures the path test itself: when it is cheap, or when the probe cannot
        represent the model (the result then carries the reason); else an evaluation worker measures it apart."""
        return self.paths_inline or self.probe_unavailable is not None

    def collapse_point(self, spec: PruneSpec) -> float | None:
        """Shared :meth:`Pruner.collapse_point` of ``spec``'s scope, computed once per configuration."""
        return self._results.get(
            ("collapse", spec.key()), lambda: self._on_pooled(spec, lambda p: p.collapse_point(spec))
        )

    def _on_pooled(self, spec: PruneSpec, work):
        with self.borrow(spec) as pruner:
            return work(pruner)

    @contextmanager
    def borrow(self, spec: PruneSpec) -> Iterator[Pruner]:
        """Lend a pooled pruner on ``spec``'s score table; give it back unchanged in kind."""
        table = self.table(*spec.table_key)
        with self._lock:
            key = spec.table_key
            if key not in self._pools:
                self._pools[key] = Pool(lambda: Pruner(self, table), POOL_SIZE)
            pool = self._pools[key]
        with pool.borrow() as pruner:
            yield pruner

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of the weights and the evaluation set: what a stored result of this model depends on."""
        h = hashlib.sha256(self.loaded.name.encode())
        for name, t in sorted(self.loaded.model.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        if self.loaded.eval_folder is not None:
            h.update(self.loaded.eval_folder.fingerprint().encode())
            return h.hexdigest()
        data = self.loaded.eval_data()
        for t in (data.images, data.labels):
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()

    def working_copies(self) -> int:
        """How many pooled working copies exist (bounded by tables x POOL_SIZE, whatever the sessions)."""
        with self._lock:
            return sum(p.made for p in self._pools.values())


class Pruner:
    """Per user: one working copy and one path probe, reused across sparsity changes."""

    def __init__(self, lab: Lab, table: ScoreTable) -> None:
        self.lab = lab
        self.table = table
        self.work = WorkingCopy(lab.loaded.model, table)
        self._probe: PathProbe | None = None
        weights = {id(modules.weight) for modules in self._prunable_modules()}
        self._other_params = [p for p in self.model.parameters() if id(p) not in weights]  # biases, norms

    def _prunable_modules(self) -> list[torch.nn.Module]:
        modules = dict(self.model.named_modules())
        return [modules[info.name] for info in self.lab.profile.prunable()]

    @property
    def model(self) -> torch.nn.Module:
        return self.work.model

    @property
    def probe(self) -> PathProbe | None:
        """This pruner's path probe, or None when the model has an operation the probe cannot represent."""
        if self._probe is None:
            self._probe = self.lab.new_probe()
        return self._probe

    def _config(self, config: PruneConfig | PruneSpec) -> PruneConfig:
        if isinstance(config, PruneConfig):
            return config
        table = (self.table.criterion, self.table.structure, self.table.normalise)
        if config.table_key != table:
            raise InvalidArgumentError(
                f"this pruner sorts {'/'.join(table)} scores; the spec asks for {'/'.join(config.table_key)}: "
                "get its own with lab.pruner(spec)"
            )
        return config.config()

    def allocation(self, config: PruneConfig | PruneSpec) -> Removal:
        """Units removed per set for ``config`` (no weights written)."""
        return allocate(self.table, self._config(config), self.lab.first_last)

    def apply_(self, config: PruneConfig | PruneSpec) -> Removal:
        """Allocate and write the masked weights (the fast path behind a slider); returns the allocation."""
        alloc = self.allocation(config)
        self.work.apply_(alloc)
        return alloc

    def prune(self, config: PruneConfig | PruneSpec, paths: bool = True) -> PruneResult:
        """Apply ``config`` and measure everything on the pruned tensors (``paths``: the path test too)."""
        config = self._config(config)
        alloc = self.apply_(config)
        return self._measure(config, alloc, paths)

    def paths(self, config: PruneConfig | PruneSpec) -> Connectivity | None:
        """Apply ``config`` and run the path test alone; None when the probe cannot represent the model."""
        self.apply_(config)
        return self._paths()

    def _paths(self) -> Connectivity | None:
        return connectivity(self.probe, self.model) if self.probe is not None else None

    def prune_from_masks(self, masks: dict[str, torch.Tensor], config: PruneConfig | PruneSpec) -> PruneResult:
        """Re-apply exported keep masks (parameter name -> bool) to the dense weights and measure them.

        ``config`` only supplies the labels and the unit counts; every number is measured on the tensors."""
        config = self._config(config)
        alloc = self.allocation(config)
        self.work.reset_()
        apply_masks_(self.model, masks)
        return self._measure(config, alloc)

    def compact(self, config: PruneConfig | PruneSpec) -> Compacted:
        """Apply a filter ``config`` and build the model without its removed channels (checked against
        the masked model on the first evaluation images). Raises ``CompactionError`` (``LayerCollapseError`` on
        collapse) when no compact model can be built."""
        alloc = self.apply_(config)
        removed = removed_channels(self.table, alloc)  # refuses unstructured tables and collapse first
        check_groups(self.model, self.table, alloc)
        check = self.lab.loaded.eval_data().images[:CHECK_IMAGES] if self.lab.loaded.pretrained else None
        return compact(self.model, removed, self.lab.loaded.input_spec.shape, check)

    def evaluate(self, limit: int | None = None, progress: Progress | None = None) -> Accuracy:
        return accuracy(self.model, self.lab.loaded.eval_data(), limit=limit, progress=progress)

    def _measure(self, config: PruneConfig, alloc: Removal, paths: bool = True) -> PruneResult:
        rows, zeros, prunable = self._layer_rows()
        nonzero = prunable - zeros + sum(int(torch.count_nonzero(p)) for p in self._other_params)
        result = PruneResult(
            model=self.lab.loaded.name,
            criterion=self.table.criterion,
            structure=self.table.structure,
            scope=config.scope,
            normalise=self.table.normalise,
            sparsity=config.sparsity,
            achieved_sparsity=zeros / prunable if prunable else 0.0,
            layers=rows,
            total_params=self.lab.profile.total_params,
            nonzero_params=nonzero,
            total_macs=self.lab.profile.total_macs,
            remaining_macs=sum(r.remaining_macs for r in rows),
            effective_sparsity=None,  # the path test's figures: filled in by with_paths
            collapse=None,
            collapsed_layers=[r.name for r in rows if r.sparsity >= 1.0],
            disconnected_layers=[],
            units_removed=alloc.removed,
            units_total=alloc.total,
            dense_layers=sorted(alloc.dense),
            unscored=list(self.table.unscored),
            pretrained=self.lab.loaded.pretrained,
            probe_note=self.lab.probe_unavailable,
            round_to=config.round_to,
        )
        conn = self._paths() if paths else None
        return result.with_paths(conn) if conn is not None else result

    def _layer_rows(self) -> tuple[list[LayerResult], int, int]:
        """Per prunable layer, measured on the working copy; also the zero and total weight counts."""
        modules = dict(self.model.named_modules())
        rows, zeros, prunable = [], 0, 0
        for info in self.lab.profile.prunable():
            w = modules[info.name].weight
            n_zero = zero_count(w, info.name in self.work.signed_zeros)
            sparsity = n_zero / w.numel()
            remaining = round(info.macs * (1.0 - sparsity))
            rows.append(LayerResult(info.name, info.kind, w.numel(), info.macs, sparsity, None, remaining))
            zeros += n_zero
            prunable += w.numel()
        return rows, zeros, prunable

    def collapse_point(self, config: PruneConfig | PruneSpec) -> float | None:
        """Smallest sparsity (in units of 1/pool) at which ``config``'s scope collapses the network, or None.

        Pruned sets grow monotonically with sparsity, so collapse is monotone: bisect on the unit count.
        The working copy is left at ``config``'s sparsity afterwards. None also when the path probe is
        not available for this model (``Lab.probe_unavailable`` says why).
        """
        config = self._config(config)
        if self.probe is None:
            return None
        total = sum(s.size for s in self.table.sets)

        def collapsed(k: int) -> bool:
            self.apply_(dataclasses.replace(config, sparsity=k / total))
            self.probe.load_(self.model)
            return self.probe.output_mass() == 0.0

        lo, hi = 0, total - 1
        if not collapsed(hi):
            self.apply_(config)
            return None
        while lo < hi:
            mid = (lo + hi) // 2
            if collapsed(mid):
                hi = mid
            else:
                lo = mid + 1
        self.apply_(config)
        return lo / total
