"""AppTest: the Methods page runs the chosen methods in the workers and shows what an independent evaluation of
the weights they wrote reproduces."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from prunekit.core.evaluate import accuracy, predict_logits
from prunekit.models import zoo
from prunekit.service.store import default_path
from tests.apptest import metric, open_page, rerun, settle
from tests.helpers import page, wait_until

pytestmark = pytest.mark.xdist_group("app-methods")


def _table(at) -> list[dict]:
    return at.dataframe[-1].value.to_dict("records")


def test_the_methods_page_runs_methods_and_every_accuracy_holds():
    at = open_page(page("methods"), {"model": "fmnist-cnn"})
    at.multiselect(key="methods_chosen").set_value(["snip", "lsq"]).run()
    at.number_input(key="methods_epochs").set_value(0.5).run()
    assert [r["top-1"] for r in _table(at)] == ["not run", "not run"]
    next(b for b in at.button if b.label == "Run the chosen methods").click().run()
    assert not at.exception, at.exception
    wait_until(lambda: all(r["top-1"].endswith("%") for r in _table(at)), step=lambda: rerun(at), what="both methods")
    rows = _table(at)
    assert [r["paper"] for r in rows] == ["Lee et al. 2019", "He et al. 2017; Luo et al. 2017"]
    assert rows[1]["steps"] == "0" and int(rows[0]["steps"].replace(",", "")) == 40  # 0.5 epoch of 10,000 images
    assert len(at.get("plotly_chart")) >= 2  # the final accuracies, the training curve
    test = zoo.load("fmnist-cnn").eval_data()
    written = {}  # what the workers wrote: method -> folder, for this budget
    for path in (default_path().parent / "methods").glob("*/result.json"):
        data = json.loads(path.read_text())
        if data["budget"]["epochs"] == 0.5 and data["model"] == "fmnist-cnn":
            written[data["method"]] = path.parent
    for name, row in zip(["snip", "lsq"], rows, strict=True):
        model = zoo.load("fmnist-cnn").model
        model.load_state_dict(load_file(written[name] / "model.safetensors"))
        again = accuracy(model, test)  # the saved weights, scored here on the whole test split
        assert row["top-1"] == f"{again.top1:.2%}" and row["95% interval"] == again.interval_label()
    # McNemar between the two, against the saved weights' own predictions on every test image
    predictions = {}
    for name in ("snip", "lsq"):
        model = zoo.load("fmnist-cnn").model
        model.load_state_dict(load_file(written[name] / "model.safetensors"))
        with torch.no_grad():  # the engine's batching and layout: argmax ties fall as the workers' do
            predictions[name] = predict_logits(model.eval(), test.images, 64).argmax(1)
    right = {k: v == test.labels for k, v in predictions.items()}
    only_a, only_b = int((right["snip"] & ~right["lsq"]).sum()), int((~right["snip"] & right["lsq"]).sum())
    wait_until(
        lambda: any("McNemar's exact test:" in m.value for m in at.markdown), step=lambda: rerun(at), what="McNemar"
    )
    said = next(m.value for m in at.markdown if "McNemar's exact test:" in m.value)
    shown = [int(n.replace(",", "")) for n in re.findall(r"\*\*([\d,]+)\*\*", said)[:2]]
    # The workers score in their own batch layout: a few near-tie images may fall the other way (the least-squares
    # model disagreed with itself on 10 of 10,000 between layouts); more than 0.2% would be a different model.
    assert abs(shown[0] - only_a) + abs(shown[1] - only_b) <= 0.002 * len(test.labels), (said, only_a, only_b)
    at.selectbox(key="methods_open").set_value("SNIP at initialisation at 90%").run()
    next(b for b in at.button if b.label == "Open").click().run()
    assert not at.exception, at.exception
    assert any("fmnist-cnn after snip at 90%" in s.value for s in at.success)
    at.switch_page(page("prune")).run()
    assert not at.exception, at.exception
    wait_until(lambda: metric(at, "Dense") not in ("computing...",), step=lambda: rerun(at), what="the dense top-1")
    settle(at)
    assert metric(at, "Dense") == rows[0]["top-1"]  # the opened model, unpruned, is the method's result
