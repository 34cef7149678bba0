"""AppTest: the granularity ladder on the Prune page, each top-1 checked against an independent evaluation."""

import re

import pytest

from prunekit.core.lab import Lab
from prunekit.core.spec import PruneSpec
from prunekit.models import zoo
from prunekit.service.ladder import DENSE_KERNELS_NOTE, ladder_specs
from tests.apptest import open_page, rerun
from tests.helpers import page, wait_until

pytestmark = pytest.mark.xdist_group("app-ladder")
QUERY = {"model": "fmnist-cnn", "structure": "unstructured", "criterion": "magnitude", "sparsity": "0.6"}


def _rows(at) -> list[dict]:
    frame = at.dataframe[-1].value
    return frame.to_dict("records")


def test_the_ladder_shows_every_granularity_with_its_true_top1():
    at = open_page(page("prune"), QUERY)
    at.toggle(key="ladder_on").set_value(True).run()
    assert not at.exception, at.exception
    wait_until(
        lambda: all(r["top-1"].endswith("%") for r in _rows(at)), step=lambda: rerun(at), what="every rung's top-1"
    )
    rows = _rows(at)
    assert [r["granularity"] for r in rows] == ["weights", "vectors", "kernels", "2:4 pattern", "filters"]
    assert [r["criterion"] for r in rows] == ["magnitude"] * 5
    assert rows[3]["removed"] == "50% of the weights" and rows[1]["removed"] == "60% of the vectors"
    lab = Lab(zoo.load("fmnist-cnn"))
    base = PruneSpec("magnitude", "unstructured", sparsity=0.6)  # the link's global scope
    for row, (structure, spec) in zip(rows, ladder_specs(base).items(), strict=True):
        pruner = lab.pruner(spec)
        pruner.apply_(spec.config())
        want = pruner.evaluate()
        assert row["top-1"] == f"{want.top1:.2%}", structure
        result = lab.result(spec, paths=False)
        assert row["weight sparsity"] == f"{result.achieved_sparsity:.1%}", structure
        assert row["theoretical speedup"] == f"{result.theoretical_speedup:.2f}x", structure
    # Measured latency: each rung timed in a worker; vectors and kernels keep dense kernels, filters compact
    next(b for b in at.button if b.label == "Measure every rung's latency").click().run()
    assert not at.exception, at.exception
    column = "measured speedup (batch 64)"
    wait_until(
        lambda: all(r[column] != "measuring..." for r in _rows(at)), step=lambda: rerun(at), what="every latency"
    )
    shown = [r[column] for r in _rows(at)]
    assert all(re.fullmatch(r"\d+\.\d\dx \((masked|compact)\)", s) for s in shown), shown
    assert shown[1].endswith("(masked)") and shown[2].endswith("(masked)")  # dense kernels: nothing to compact
    assert any(DENSE_KERNELS_NOTE in c.value for c in at.caption)
    # Global filters at 60% empty a layer of fmnist-cnn: timed masked, and the page says why
    assert shown[-1].endswith("(masked)")
    assert any(
        c.value.startswith("Filters timed masked, not compacted: cannot compact: layer collapse") for c in at.caption
    )
