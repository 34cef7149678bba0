"""A session's choices, as one typed value that a share link carries (``links`` encodes it to and from the URL)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from prunekit.core.spec import Allocation, Normalisation, PruneSpec, Scope, Structure

_PARSE = {"structure": Structure.parse, "normalise": Normalisation.parse, "overrides": dict, "round_to": int}


@dataclass
class Settings:
    """What the sidebar and the Prune page set; every page reads it. Owned by one session, so it changes in place."""

    model: str = "fmnist-cnn"
    criterion: str = "magnitude"
    structure: Structure = Structure.UNSTRUCTURED
    sparsity: float = 0.5
    keep: bool = False  # keep the first and last layers dense
    normalise: Normalisation = Normalisation.NONE
    overrides: dict[str, float] = field(default_factory=dict)  # per-layer sparsities from a plan's link
    round_to: int = 1  # filters: channels kept in multiples of this (inert for other structures)

    def __setattr__(self, name: str, value: object) -> None:
        parse = _PARSE.get(name)
        super().__setattr__(name, parse(value) if parse else value)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def copy(self, **changes) -> Settings:
        return Settings(**({name: getattr(self, name) for name in self.names()} | changes))

    def spec(self, scope: Scope | str = Scope.GLOBAL, sparsity: float | None = None) -> PruneSpec:
        """The pruning spec these settings give for ``scope`` (at the slider's sparsity unless told)."""
        return PruneSpec(
            self.criterion,
            self.structure,
            Allocation(scope, self.normalise),
            self.sparsity if sparsity is None else sparsity,
            self.keep,
            self.overrides,
            self.round_to if self.structure.is_filter else 1,
        )

    def key(self) -> tuple:
        """A hashable identity of every setting."""
        return tuple((name, getattr(self, name)) for name in self.names() if name != "overrides") + tuple(
            sorted(self.overrides.items())
        )
