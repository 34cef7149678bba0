"""AppTest: measured speed, export downloads and recovery on the Prune page."""

import re

import pytest

from tests.apptest import metric, open_page, rerun
from tests.helpers import page, wait_until

FILTERS = {"model": "fmnist-vgg", "structure": "filter", "criterion": "l1", "sparsity": "0.5", "normalise": "mean"}
pytestmark = pytest.mark.xdist_group("app-recover")


def _rerun_until(at, done):
    wait_until(lambda: done(at), step=lambda: rerun(at), what=str(done))
    return at


def test_measured_speed_sits_beside_the_theoretical_one():
    at = open_page(page("prune"), FILTERS)
    assert metric(at, "Theoretical speedup").endswith("x")
    next(b for b in at.button if b.label == "Measure latency").click().run()
    at = _rerun_until(at, lambda a: any(m.label.startswith("Measured speedup (compact") for m in a.metric))
    rows = at.dataframe[-1].value
    assert list(rows["model"]) == ["dense", "masked", "compact"]
    # the metric is the table's dense / compact at batch 64 (how fast is the machine's business, not the test's)
    dense, compact = rows["batch 64 (ms)"][0], rows["batch 64 (ms)"][2]
    shown = float(metric(at, "Measured speedup (compact").rstrip("x"))
    assert shown > 0 and shown == pytest.approx(dense / compact, rel=0.01, abs=0.01)


def test_unstructured_speed_says_why_it_is_about_one():
    at = open_page(page("prune"), {"model": "fmnist-cnn", "sparsity": "0.7"})
    next(b for b in at.button if b.label == "Measure latency").click().run()
    at = _rerun_until(at, lambda a: any(m.label.startswith("Measured speedup (masked") for m in a.metric))
    assert any("the measured speedup is about 1x" in i.value for i in at.info)


def test_export_offers_the_five_files_and_states_the_compaction_check():
    at = open_page(page("prune"), FILTERS)
    next(b for b in at.button if b.label == "Prepare the files").click().run()
    assert not at.exception, at.exception
    names = [b.proto.label for b in at.get("download_button")]
    assert names == ["masks.pt", "ratios.json", "prune_snippet.py", "model.safetensors", "model.onnx"]
    assert any("the masked model has exactly that many non-zero" in c.value for c in at.caption)


def test_recovery_runs_in_the_workers_and_shows_every_stage():
    at = open_page(page("prune"), FILTERS | {"model": "fmnist-resnet"})
    at.number_input[1].set_value(0.5).run()  # half an epoch of 10,000 images: ~40 steps
    next(b for b in at.button if b.label == "Start recovery").click().run()
    at = _rerun_until(at, lambda a: any(m.label == "Fine-tuned" and m.value != "..." for m in a.metric))
    values = {
        label: float(metric(at, label).rstrip("%")) for label in ("Dense", "Pruned", "BN-recalibrated", "Fine-tuned")
    }
    assert values["Pruned"] < values["BN-recalibrated"] < values["Fine-tuned"] <= values["Dense"] + 0.5


def test_tradeoffs_compares_one_shot_iterative_and_agp_at_one_budget():
    query = {"model": "fmnist-cnn", "structure": "filter", "criterion": "l1", "sparsity": "0.5", "normalise": "mean"}
    at = open_page(page("tradeoffs"), query)
    at.multiselect[0].set_value([]).run()  # no recipe curves: the one worker runs the schedules alone
    at.number_input[0].set_value(0.5).run()
    next(b for b in at.button if b.label == "Compare the schedules").click().run()
    at = _rerun_until(at, lambda a: list(a.dataframe[-1].value["status"]) == ["done"] * 3)
    rows = at.dataframe[-1].value
    assert list(rows["schedule"]) == ["one-shot (1 step)", "iterative (3 steps)", "agp (3 steps)"]
    assert all(re.fullmatch(r"\d+\.\d\d% \(95% interval .+ on 10,000 images\)", v) for v in rows["fine-tuned top-1"])
    assert len(at.get("plotly_chart")) == 3  # two trade-off charts and the schedules' curves


def _latency(dense: dict[int, float], compact: dict[int, float]):
    from prunekit.deploy.latency import Latency

    return Latency({"dense": dense, "masked": dense, "compact": compact}, {1: 21, 64: 21}, 1, "a test machine")


@pytest.mark.parametrize("slow", [True, False])
def test_a_compacted_model_no_faster_than_dense_is_flagged(monkeypatch, slow):
    """An injected latency table: the compacted model is slower than dense at batch 1 (or faster at both)."""
    from prunekit.app import computed

    compact = {1: 0.25, 64: 3.0} if slow else {1: 0.15, 64: 3.0}
    monkeypatch.setattr(computed, "speed", lambda *a, **k: _latency({1: 0.2, 64: 5.0}, compact))
    at = open_page(page("prune"), FILTERS)
    warned = [w.value for w in at.warning if "Not faster" in w.value]
    if not slow:
        assert warned == []
        return
    (text,) = warned
    assert "batch 1: 0.25 ms against the dense model's 0.2 ms" in text and "batch 64" not in text
    fewer = int(re.search(r"needs (\d+)% fewer multiply-adds", text).group(1))
    theoretical = float(metric(at, "Theoretical speedup").rstrip("x"))  # dense MACs / remaining MACs
    assert abs(fewer - 100 * (1 - 1 / theoretical)) <= 1


@pytest.mark.parametrize("round_to", ["1", "8"])
def test_the_staircase_marks_the_kept_width_and_says_when_a_wider_one_costs_nothing(monkeypatch, round_to):
    """An injected staircase whose every block of 8 widths costs the same: the note names the width this
    configuration keeps (checked against the compacted model's) and the extra channels free of time."""
    from prunekit.app import computed
    from prunekit.core.lab import Lab
    from prunekit.core.spec import Allocation, PruneSpec
    from prunekit.deploy.staircase import Staircase, widths
    from prunekit.models import zoo

    lab = Lab(zoo.load("fmnist-vgg"))
    layer = computed.staircase_layers(lab)[0]
    spec = PruneSpec("l1", "filter", Allocation("global", "mean"), 0.5, round_to=int(round_to))
    conv = dict(lab.pruner(spec).compact(spec).model.named_modules())[layer]
    dense = lab.loaded.model.get_submodule(layer).out_channels
    kept = conv.out_channels
    counts = widths(dense)
    steps = Staircase(layer, counts, [1.0 + -(-c // 8) for c in counts], dense, 64, 9, 1, "a test machine")
    monkeypatch.setattr(computed, "staircase", lambda *a, **k: steps)
    at = open_page(page("prune"), FILTERS | {"round_to": round_to})
    (note,) = [i.value for i in at.info if "This configuration keeps" in i.value]
    assert f"keeps {kept} of {dense} channels here" in note
    free = min(dense, -(-kept // 8) * 8) - kept
    assert (f"could keep {free} more" in note) == (free > 0)
    if round_to == "8":
        assert free == 0
    assert any(
        layer in str(chart.proto.spec) and "output channels kept" in str(chart.proto.spec)
        for chart in at.get("plotly_chart")
    )
