"""AppTest: the oracle on the Filter importance page, measured by the workers, and while it is on its way."""

import pytest

from prunekit.core.spec import Structure
from tests.apptest import open_page, rerun
from tests.helpers import page, wait_until

CNN = {"model": "fmnist-cnn", "structure": "filter", "criterion": "l1", "sparsity": "0.5"}
pytestmark = pytest.mark.xdist_group("app-oracle")


def _table(at):
    return next((d.value for d in at.dataframe if "median per layer" in d.value.columns), None)


def test_the_oracle_is_measured_by_the_workers_and_every_criterion_set_against_it(monkeypatch):
    from prunekit.app import oracles
    from prunekit.app.server_state import service
    from prunekit.core.evaluate import stratified_indices
    from prunekit.core.lab import Lab
    from prunekit.core.oracle import agreement
    from prunekit.models import zoo
    from prunekit.service.readings import read_oracle

    monkeypatch.setattr(oracles, "ORACLE_IMAGES", (256, 500))  # small image counts: the calibration part's too
    at = open_page(page("importance"), CNN)
    at.select_slider(key="oracle_images").set_value(256).run()
    next(b for b in at.button if b.label == "Measure the oracle").click().run()
    wait_until(lambda: _table(at) is not None, step=lambda: rerun(at), what="the criteria against the oracle")
    rows = _table(at)
    lab = Lab(zoo.load("fmnist-cnn"))
    truth = read_oracle(service(), lab, "fmnist-cnn", 256, "t", start=False).truth  # what the workers stored
    labels = lab.loaded.eval_data().labels
    assert truth is not None and truth.images == len(stratified_indices(labels, 256))  # about 256, every class alike
    taylor = agreement(truth, lab.table("taylor", Structure.FILTER))
    shown = dict(zip(rows["criterion"], rows["all channels"], strict=True))
    assert shown["taylor"] == pytest.approx(taylor.overall, abs=1e-3)
    assert list(rows["all channels"]) == sorted(rows["all channels"], reverse=True)  # best first
    verdict = [w.value for w in at.warning if "Does not hold" in w.value] + [
        s.value for s in at.success if "Holds" in s.value
    ]
    assert len(verdict) == 1 and (("Holds" in verdict[0]) == (taylor.overall > oracles.MOLCHANOV))
    assert f"{taylor.overall:.3f}" in verdict[0]
    assert any(
        "bn-scale" not in str(c.proto.spec) and "loss increase" in str(c.proto.spec) for c in at.get("plotly_chart")
    )
    # the calibration part: at the usual 256 calibration images, Taylor's Spearman is the table's
    at.toggle(key="oracle_calibration").set_value(True).run()
    chart = lambda: next(c for c in at.get("plotly_chart") if "calibration images" in str(c.proto.spec))  # noqa: E731
    wait_until(lambda: "on their way" not in " ".join(c.value for c in at.caption), step=lambda: rerun(at))
    import json

    lines = {t["name"]: t for t in json.loads(chart().proto.spec)["data"]}
    assert set(lines) == {"First-order Taylor", "captum Gradient x Activation", "Second order (OBD)"}
    assert lines["First-order Taylor"]["x"] == ["256", "500"]
    assert lines["First-order Taylor"]["y"][0] == pytest.approx(taylor.overall, abs=1e-9)


@pytest.mark.polls  # its oracle is a stand-in that never asks the service: the part has no job to listen for
def test_an_oracle_on_its_way_shows_its_progress_and_can_be_stopped(monkeypatch):
    from prunekit.app import oracles
    from prunekit.service.readings import OracleView

    stopped = []
    monkeypatch.setattr(oracles, "oracle_view", lambda lab, images, start: OracleView(None, 40, 112))
    monkeypatch.setattr(oracles, "stop_oracle", lambda lab, images: stopped.append(images))
    at = open_page(page("importance"), CNN)
    next(b for b in at.button if b.label == "Measure the oracle").click().run()
    (bar,) = at.get("progress")
    assert "40 of 112 channels" in bar.proto.text
    next(b for b in at.button if b.label == "Stop the oracle").click().run()
    assert stopped == [1000] and any(b.label == "Measure the oracle" for b in at.button)
