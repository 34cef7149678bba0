"""prunekit: an honest, fast engine for exploring neural-network pruning, on the zoo's models or your own.

    import prunekit
    lab = prunekit.Lab.from_model(model, example_input, eval_data=(images, labels))
    pruner = lab.pruner("magnitude", "unstructured")         # criterion, structure[, normalise]
    result = pruner.prune(prunekit.PruneConfig(0.7, "global"))  # per-layer sparsity, collapse, MACs...
    lamp = prunekit.ALLOCATIONS["lamp"]                        # or global-mean, local, erk: (scope, normalise)
    lab.pruner("magnitude", "unstructured", lamp.normalise).prune(prunekit.PruneConfig(0.7, lamp.scope))
    accuracy = pruner.evaluate()                               # .top1 on eval_data
    app = prunekit.launch(model, example_input, eval_data=(images, labels))  # the browser lab on it
    app.wait_ready(); print(app.url); app.stop()

Layers, each importing only those before it: ``core`` (the engine), ``models`` (zoo, data, training),
``deploy`` (latency, export, recovery), ``service`` (evaluation workers, store, Ray), ``app`` (the
Streamlit lab, the only part that imports streamlit) and ``cli``.
"""

__version__ = "0.1.0"

from prunekit.app.launch import App, launch
from prunekit.core.allocate import PruneConfig
from prunekit.core.allocations import ALLOCATIONS
from prunekit.core.evaluate import Accuracy
from prunekit.core.importance import CRITERIA, STRUCTURES
from prunekit.core.lab import Lab, LayerResult, Pruner, PruneResult
from prunekit.core.loaded import InputSpec, Loaded
from prunekit.errors import InvalidArgumentError, PrunekitError

__all__ = [
    "ALLOCATIONS",
    "App",
    "CRITERIA",
    "STRUCTURES",
    "Accuracy",
    "InputSpec",
    "InvalidArgumentError",
    "Lab",
    "LayerResult",
    "Loaded",
    "PruneConfig",
    "PruneResult",
    "Pruner",
    "PrunekitError",
    "__version__",
    "launch",
]
