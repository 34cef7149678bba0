"""Typed exceptions raised at prunekit's boundaries; each message names the bad value."""

import re

# An absolute POSIX path of two or more parts, not inside a URL or a fraction ("https://a/b", "1/2").
_ABSOLUTE_PATH = re.compile(r"(['\"]?)(?<![\w:/.~-])~?/(?:[\w.+@-]+/)+([\w.+@-]+)/?\1")


def without_server_paths(text: str) -> str:
    """``text`` fit for a page: each absolute server path replaced by its last part in quotes
    (``/srv/data/val`` -> ``'val'``), so a visitor never reads the server's disk layout."""
    return _ABSOLUTE_PATH.sub(lambda m: f"'{m.group(2)}'", text)


class PrunekitError(Exception):
    """Base class for every error prunekit raises on bad input."""


class UnknownNameError(PrunekitError, KeyError):
    """A registry lookup (model, criterion, scope...) got a name it does not know."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        self.kind, self.name, self.known = kind, name, list(known)
        super().__init__(f"unknown {kind} {name!r}; known: {', '.join(self.known)}")

    def __str__(self) -> str:  # KeyError would quote the whole message
        return self.args[0]


class InvalidArgumentError(PrunekitError, ValueError):
    """A value is out of range or of the wrong form."""


class DataNotFoundError(PrunekitError, FileNotFoundError):
    """A data set is not where prunekit looked for it."""


class CheckpointError(PrunekitError, ValueError):
    """An uploaded or on-disk checkpoint cannot be loaded safely."""


class UntrainedModelError(PrunekitError, RuntimeError):
    """A result that needs trained weights was asked of a model that has none."""


class ProbeUnsupportedError(PrunekitError, NotImplementedError):
    """The path probe meets an operation it cannot represent exactly: collapse detection is unavailable."""

    def __init__(self, operation: str) -> None:
        self.operation = operation
        super().__init__(
            f"collapse detection is not available for this model: the path probe cannot represent {operation} exactly"
        )


class StoppedError(PrunekitError, RuntimeError):
    """A long computation was stopped by its caller (its progress callback said so)."""


class ExportError(PrunekitError, RuntimeError):
    """The model cannot be written in a format asked for (an operation the ONNX exporter does not know)."""


class CompactionError(PrunekitError, ValueError):
    """No compact model can be built for this allocation (the sentence says why); the masked one stands."""


class LayerCollapseError(CompactionError):
    """An allocation removes every channel of a cluster (layer collapse): no compact model exists."""

    def __init__(self, layer: str, channels: int) -> None:
        self.layer, self.channels = layer, channels
        super().__init__(
            f"cannot compact: layer collapse at {layer!r} (all {channels} of its coupled channels are pruned, and a "
            "layer with no channels cannot be built); lower the sparsity, use local scope or keep that layer"
        )


class ClusterUnavailableError(PrunekitError, ConnectionError):
    """The Ray cluster cannot be reached, at start or later; the message names the address."""


class MemoryBudgetError(PrunekitError, MemoryError):
    """A model does not fit the server's memory budget (alone, or beside the models in use); the message
    names its estimated size and the budget."""
