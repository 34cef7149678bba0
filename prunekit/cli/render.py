"""What the command line prints: a command's result as text lines (its JSON is the data itself), and progress
on stderr."""

from __future__ import annotations

from prunekit.core.evaluate import Accuracy, interval_label
from prunekit.core.result import PruneResult
from prunekit.core.spec import allocation_of


def result_json(result: PruneResult) -> dict:
    out = result.to_json()
    method = allocation_of(result.scope, result.normalise)
    out["allocation"] = method.name if method else None
    out["layers"] = [
        {k: row[k] for k in ("name", "type", "params", "macs", "sparsity", "effective_sparsity")}
        for row in out["layers"]
    ]
    return out


def accuracy_fields(dense: Accuracy, pruned: Accuracy) -> dict:
    return {
        "dense": dense.top1,
        "pruned": pruned.top1,
        "images": pruned.n,
        "estimate": pruned.is_estimate,
        "dense_interval": dense.interval(),
        "pruned_interval": pruned.interval(),
    }


def effective(d: dict) -> str:
    return f"{d['effective_sparsity']:.3f}" if d["effective_sparsity"] is not None else f"n/a ({d['probe_note']})"


def summary(d: dict) -> str:
    acc = d.get("accuracy")
    acc_text = ""
    if acc:
        acc_text = (
            f"  accuracy {acc['dense']:.2%} -> {acc['pruned']:.2%}, {interval_label(acc['pruned'], acc['images'])}"
        )
        acc_text += (
            f" (estimate from {acc['images']:,} images)" if acc["estimate"] else ""
        )  # the interval names the count
    return (
        f"sparsity {d['sparsity']:.3f} ({d['scope']}, {d['criterion']}, {d['structure']}): "
        f"achieved {d['achieved_sparsity']:.3f}, "
        f"effective {effective(d)}, compression {d['compression_ratio']:.2f}x, "
        f"speedup {d['theoretical_speedup'] or float('inf'):.2f}x, collapse {d['collapse']}{acc_text}"
    )


def plan_lines(d: dict) -> list[str]:
    acc, scan = d["accuracy"], d["scan"]
    lines = [f"{name:40} sparsity {s:.2f}" for name, s in d["plan"].items()]
    lines.append(
        f"target {d['target']} {'met' if d['met'] else 'NOT met'}: MACs left {d['macs_ratio']:.1%}, "
        f"parameters left {d['params_ratio']:.1%}"
    )
    lines.append(
        f"accuracy: dense {acc['dense']:.2%}, predicted {acc['predicted']:.2%} (dense less the scan's drops, added up; "
        f"scan on {scan['images']:,} images), measured {acc['measured']:.2%} ({interval_label(acc['measured'], acc['images'])})"
    )
    return lines


def forget_lines(report) -> list[str]:
    lines = [
        f"{report.classes[k]:24} {report.dense_per_class[k]:7.2%} -> {report.pruned_per_class[k]:7.2%} "
        f"({100 * report.change[k]:+.2f} points)"
        for k in report.worst_first()
    ]
    t = report.test
    lines.append(f"flipped: {t.b} lost (dense right, pruned wrong), {t.c} gained; McNemar's exact test p = {t.p:.3g}")
    return lines


def oracle_lines(report) -> list[str]:
    """Each criterion's rank correlation with the oracle, best first, and the most important channels."""
    truth = report.truth
    lines = [
        f"oracle: {truth.channels:,} channels in {len(truth.groups)} groups, loss increase when each is removed alone, "
        f"on {truth.images:,} images (dense loss {truth.dense_loss:.4f}); {truth.seconds:.1f} s",
        f"{'criterion':14} {'Spearman, all channels':>24} {'median per layer':>18}",
    ]
    ranked = sorted(report.agreements, key=lambda a: -(a.overall if a.overall is not None else -2.0))
    for a in ranked:
        lines.append(f"{a.criterion:14} {_rho(a.overall):>24} {_rho(a.median_group):>18}")
    lines += [f"{name:14} not compared: {why}" for name, why in report.skipped.items()]
    top = sorted(truth.flat(), key=lambda t: -t[2])[:5]
    lines.append("most important: " + ", ".join(f"{g}[{j}] +{v:.4f}" for g, j, v in top))
    return lines


def _rho(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def method_lines(r) -> list[str]:
    """A method's result: its top-1 with the interval, the weights it removed, its cost and its budget."""
    b = r.budget
    return [
        f"{r.method} at {r.sparsity:.0%}: {interval_label(r.accuracy.top1, r.accuracy.n)} "
        f"(top-1 {r.accuracy.top1:.2%}), weight sparsity {r.weight_sparsity:.1%}",
        f"cost: {r.steps:,} steps, {r.images:,} training images seen, {r.seconds:.0f} s; budget {b.epochs:g} epochs "
        f"on {r.train_images:,} training images (batch {b.batch_size}, {b.rounds} rounds, rewind step {b.rewind_step})",
    ]
