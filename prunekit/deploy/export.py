"""Export what was pruned: masks, Torch-Pruning ratios, a torch.nn.utils.prune snippet, and the
compacted model (filter structure; the masked model otherwise) as safetensors and ONNX.

Everything is built as bytes (the page's download buttons) and written by :func:`write_bundle` (the CLI).
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from prunekit.core.compact import Compacted
from prunekit.core.lab import Pruner
from prunekit.core.result import PruneResult
from prunekit.core.spec import PruneConfig, PruneSpec
from prunekit.deploy.latency import UNSTRUCTURED_NOTE, LatencyConfig, measure
from prunekit.errors import CompactionError, ExportError

FILES = {  # name -> what it holds
    "masks.pt": "keep masks by parameter name (torch.load(..., weights_only=True))",
    "ratios.json": "per-layer ratios in Torch-Pruning's pruning_ratio_dict form",
    "prune_snippet.py": "torch.nn.utils.prune code that reproduces the masks",
    "model.safetensors": "the model's weights (compacted for filters)",
    "model.onnx": "the same model for ONNX Runtime (dynamic batch)",
}


@dataclass
class Bundle:
    """The export files of one configuration (name -> bytes) and what they were built from."""

    files: dict[str, bytes]
    result: PruneResult
    compacted: Compacted | None  # None for unstructured masks (nothing whole to remove)
    model: nn.Module  # what model.safetensors and model.onnx hold
    note: str | None = None  # why the model is the masked one, when it is


def build_bundle(pruner: Pruner, config: PruneConfig | PruneSpec) -> Bundle:
    """Every export file for ``config`` on ``pruner``'s model (its working copy ends at ``config``)."""
    compacted, note = _compacted(pruner, config)
    result = pruner.prune(config)
    alloc = pruner.allocation(config)
    model = compacted.model if compacted else pruner.model
    name = pruner.lab.loaded.name
    files = {
        "masks.pt": masks_bytes(pruner.work.keep_masks(alloc)),
        "ratios.json": json.dumps(ratio_dict(pruner, alloc, result), indent=2).encode(),
        "prune_snippet.py": snippet(name, in_zoo=pruner.lab.loaded.family not in ("custom", "user")).encode(),
        "model.safetensors": safetensors_bytes(model, {"prunekit_model": name, "compacted": str(bool(compacted))}),
        "model.onnx": onnx_bytes(model, pruner.lab.loaded.input_spec.shape),
    }
    return Bundle(files, result, compacted, model, note)


def _compacted(pruner: Pruner, config: PruneConfig | PruneSpec) -> tuple[Compacted | None, str | None]:
    """The compacted model of a filter ``config``, or None and the reason (unstructured, or refused)."""
    if not pruner.table.structure.is_filter:
        return (
            None,
            "Unstructured masks: the exported model keeps its shapes with zeros inside (nothing whole to remove).",
        )
    try:
        return pruner.compact(config), None
    except CompactionError as exc:
        return None, f"{exc}; the files hold the masked model"


def write_bundle(bundle: Bundle, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, data in bundle.files.items():
        paths[name] = out_dir / name
        paths[name].write_bytes(data)
    return paths


def masks_bytes(masks: dict[str, torch.Tensor]) -> bytes:
    """``torch.save`` of {parameter name: bool keep mask}; loads with ``torch.load(weights_only=True)``."""
    buf = io.BytesIO()
    torch.save({k: v.cpu().contiguous() for k, v in masks.items()}, buf)
    return buf.getvalue()


def ratio_dict(pruner: Pruner, alloc, result: PruneResult) -> dict:
    """Per-layer ratios in Torch-Pruning's ``pruning_ratio_dict`` form (keys: dotted module names).

    Filter structure: the fraction of each cluster root's output channels removed (Torch-Pruning prunes a
    root's whole group by that ratio). Unstructured: the fraction of each layer's weights removed."""
    if pruner.table.structure.is_filter:
        ratios = {s.name: alloc.counts[s.name] / s.size for s in pruner.table.sets}
    else:
        ratios = {layer.name: layer.sparsity for layer in result.layers}
    return {
        "model": result.model,
        "structure": result.structure,
        "criterion": result.criterion,
        "scope": result.scope,
        "sparsity": result.sparsity,
        "round_to": result.round_to,
        "usage": "{model.get_submodule(name): ratio for name, ratio in pruning_ratio_dict.items()}",
        "pruning_ratio_dict": ratios,
    }


def snippet(model_name: str, in_zoo: bool = True) -> str:
    """A standalone script that applies ``masks.pt`` with ``torch.nn.utils.prune.custom_from_mask``; run
    alone it prunes the zoo's model, while your own model is yours to pass to ``apply_masks``."""
    main = _ZOO_MAIN if in_zoo else _OWN_MAIN
    return _SNIPPET.replace("__MAIN__", main).replace("__MODEL__", json.dumps(model_name))


_SNIPPET = '''"""Reproduce prunekit's masks with torch.nn.utils.prune (written by prunekit's export).

    python prune_snippet.py            # loads the model through prunekit, prints per-layer sparsity as JSON

Or, in your own code: apply_masks(your_model) with the same architecture and weights.
"""

import json
import sys
from pathlib import Path

import torch
from torch.nn.utils import prune

MASKS = Path(__file__).with_name("masks.pt")


def apply_masks(model, masks_path=MASKS):
    """Register each saved mask as a torch.nn.utils.prune mask (weight_mask, bias_mask, ...)."""
    masks = torch.load(masks_path, weights_only=True)
    for name, keep in masks.items():
        module_name, param = name.rsplit(".", 1)
        prune.custom_from_mask(model.get_submodule(module_name), param, keep)
    return model


def layer_sparsity(model):
    """Fraction of zero weights of every pruned layer."""
    return {
        name: int((module.weight == 0).sum()) / module.weight.numel()
        for name, module in model.named_modules()
        if hasattr(module, "weight_mask")
    }


__MAIN__'''

_ZOO_MAIN = """if __name__ == "__main__":
    from prunekit.models import zoo

    model = apply_masks(zoo.load(__MODEL__).model)
    json.dump(layer_sparsity(model), sys.stdout, indent=1)
"""

_OWN_MAIN = """if __name__ == "__main__":
    sys.exit(__MODEL__ + " is your own model: import this file and call apply_masks(your_model) on it")
"""


def safetensors_bytes(model: nn.Module, metadata: dict[str, str]) -> bytes:
    """The model's state_dict as safetensors (shapes carry the compacted channel counts)."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return save(state, metadata=metadata)


def onnx_bytes(model: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """ONNX (opset 17, dynamic batch), input ``images`` (batch, *input_shape), output ``logits``."""
    import copy
    import tempfile

    cpu = copy.deepcopy(model).cpu().eval().to(memory_format=torch.contiguous_format)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # The TorchScript-based exporter writes one self-contained file and needs no onnxscript.
        warnings.simplefilter("ignore", DeprecationWarning)
        path = Path(tmp) / "model.onnx"
        try:
            torch.onnx.export(
                cpu,
                (torch.zeros(1, *input_shape),),
                str(path),
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        except Exception as exc:  # the exporter's own failures (an unknown op, a traced branch): say which
            raise ExportError(f"the model cannot be exported to ONNX ({type(exc).__name__}: {exc})") from exc
        return path.read_bytes()


def export_report(lab, pruner: Pruner, bundle: Bundle, config: LatencyConfig | None = None) -> dict:
    """What ``prunekit export`` prints: sizes, the compaction check, latencies and speedups.

    ``pruner``'s working copy must be at the bundle's configuration (as :func:`build_bundle` leaves it)."""
    models = {"dense": lab.loaded.model, "masked": pruner.model}
    if bundle.compacted is not None:
        models["compact"] = bundle.compacted.model
    latency = measure(models, lab.loaded.input_spec.shape, config)
    fastest = "compact" if "compact" in latency.ms else "masked"
    result, compacted = bundle.result, bundle.compacted
    return {
        "model": result.model,
        "structure": result.structure,
        "sparsity": result.sparsity,
        "params_dense": result.total_params,
        "params_masked_nonzero": result.nonzero_params,
        "params_compact": compacted.params_compact if compacted else None,
        "max_abs_diff": compacted.max_abs_diff if compacted else None,
        "latency_ms": {v: {str(b): t for b, t in per.items()} for v, per in latency.ms.items()},
        "latency_runs": {str(b): n for b, n in latency.runs.items()},
        "threads": latency.threads,
        "machine": latency.machine,
        "theoretical_speedup": result.theoretical_speedup if result.remaining_macs else None,
        "measured_speedup": {str(b): latency.speedup(fastest, b) for b in latency.runs},
        "measured_of": fastest,
        "note": UNSTRUCTURED_NOTE if not result.structure.is_filter else bundle.note,
    }


def report_lines(report: dict) -> list[str]:
    lines = [
        f"params: dense {report['params_dense']:,}, non-zero after masking {report['params_masked_nonzero']:,}"
        + (f", compact {report['params_compact']:,}" if report["params_compact"] is not None else ""),
    ]
    if report["max_abs_diff"] is not None:
        lines.append(f"compact vs masked outputs: max abs diff {report['max_abs_diff']:.2e}")
    for batch, runs in report["latency_runs"].items():
        times = ", ".join(f"{v} {per[batch]:.2f} ms" for v, per in report["latency_ms"].items())
        lines.append(f"batch {batch}: {times} (median of {runs} runs, {report['threads']} threads)")
    measured = ", ".join(f"{x:.2f}x at batch {b}" for b, x in report["measured_speedup"].items())
    lines.append(
        f"speedup: theoretical {report['theoretical_speedup']:.2f}x, measured ({report['measured_of']}) {measured}"
    )
    lines.append(f"machine: {report['machine']}")
    return lines + ([report["note"]] if report["note"] else [])
