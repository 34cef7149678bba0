"""prunekit: an honest, fast engine for exploring neural-network pruning, on the zoo's models or your own.

    import prunekit
    lab = prunekit.load("fmnist-cnn")                  # or prunekit.Lab.from_model(model, example_input, eval_data=...)
    spec = prunekit.PruneSpec("magnitude", allocation="lamp", sparsity=0.7)   # unstructured by default
    result = lab.prune(spec)                           # per-layer sparsity, collapse, MACs... measured
    rows = lab.sensitivity(sparsities=(0.5, 0.9), images=1000)   # each layer alone, accuracy beside dense
    plan = lab.plan("macs=0.6")                        # per-layer sparsities for a budget, measured
    files = lab.export(prunekit.PruneSpec("l1", prunekit.Structure.FILTER, sparsity=0.3), out="export/")
    app = prunekit.launch(model, example_input, eval_data=(images, labels))  # the browser lab on your own model
    lab = prunekit.load("timm/resnet50.a1_in1k", eval_folder=prunekit.imagenette_folder())  # after download_imagenette()

``lab.recover(spec, prunekit.Recipe(epochs=1))`` fine-tunes, ``lab.train_sparse("lth", 0.9, prunekit.Budget(epochs=1))``
reaches a sparsity by a training method (``prunekit.METHODS``), ``lab.forget(spec)`` shows what pruning forgets,
``lab.sweep(spec)`` traces accuracy against sparsity, ``lab.oracle(images=1000)`` measures every filter's true importance
and each criterion's rank correlation with it; ``prunekit.RunOptions`` sends their evaluations to worker
processes or Ray. Layers, each importing only those before it: ``core`` (the engine), ``models`` (zoo, data,
training), ``deploy`` (latency, export, recovery), ``service`` (evaluation workers, store, Ray), ``tasks``
(the use cases above), ``app`` (the Streamlit lab, the only part that imports streamlit) and ``cli``.
"""

__version__ = "0.1.0"

from prunekit.app.launch import App, launch
from prunekit.core.budget import Target
from prunekit.core.evaluate import Accuracy
from prunekit.core.importance import CRITERIA
from prunekit.core.lab import Pruner
from prunekit.core.loaded import InputSpec, Loaded
from prunekit.core.result import LayerResult, PruneResult
from prunekit.core.spec import (
    ALLOCATIONS,
    STRUCTURES,
    Allocation,
    Normalisation,
    PruneConfig,
    PruneSpec,
    Scope,
    Structure,
)
from prunekit.deploy.methods import METHODS, Budget, MethodResult
from prunekit.deploy.recover import Recipe
from prunekit.errors import (
    CheckpointError,
    ClusterUnavailableError,
    CompactionError,
    DataNotFoundError,
    ExportError,
    InvalidArgumentError,
    LayerCollapseError,
    MemoryBudgetError,
    ProbeUnsupportedError,
    PrunekitError,
    StoppedError,
    UnknownNameError,
    UntrainedModelError,
)
from prunekit.models.imagenette import download as download_imagenette
from prunekit.models.imagenette import require as imagenette_folder
from prunekit.service.fanout import Backend
from prunekit.tasks import Lab, OracleReport, RunOptions, list_models, load

__all__ = [
    "ALLOCATIONS",
    "CRITERIA",
    "METHODS",
    "STRUCTURES",
    "Accuracy",
    "Allocation",
    "App",
    "Backend",
    "Budget",
    "CheckpointError",
    "ClusterUnavailableError",
    "CompactionError",
    "DataNotFoundError",
    "ExportError",
    "InputSpec",
    "InvalidArgumentError",
    "Lab",
    "LayerCollapseError",
    "LayerResult",
    "Loaded",
    "MemoryBudgetError",
    "MethodResult",
    "Normalisation",
    "OracleReport",
    "ProbeUnsupportedError",
    "PruneConfig",
    "PruneResult",
    "PruneSpec",
    "PrunekitError",
    "Pruner",
    "Recipe",
    "RunOptions",
    "Scope",
    "StoppedError",
    "Structure",
    "Target",
    "UnknownNameError",
    "UntrainedModelError",
    "download_imagenette",
    "imagenette_folder",
    "launch",
    "list_models",
    "load",
    "__version__",
]
