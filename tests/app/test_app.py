"""Streamlit AppTest for every page on the default model."""

from urllib.parse import parse_qs

import pytest
from streamlit.testing.v1 import AppTest

from prunekit.app.links import decode_overrides
from prunekit.core.spec import Allocation, PruneSpec
from prunekit.service.jobs import EvalJob
from tests.apptest import PAGES, component_data, curve, labelled, metric, open_page, rerun, settle
from tests.helpers import page, wait_until


@pytest.mark.parametrize("page", PAGES)
def test_every_page_loads_on_the_default_model(page):
    at = open_page(page)
    assert at.title and not at.error


def test_model_page_numbers_match_the_profile():
    from prunekit.core.evaluate import wilson
    from prunekit.core.profile import profile_model
    from prunekit.models import zoo
    from prunekit.units import short_number

    at = open_page(page("model"))
    loaded = zoo.load("fmnist-cnn")
    prof = profile_model(loaded.model, (1, 28, 28))
    shown = {m.label: m for m in at.metric}
    assert shown["Parameters"].value == short_number(prof.total_params) == "105.9 k"
    assert shown["Parameters"].proto.help == f"{prof.total_params:,}"
    assert shown["MACs / image"].value == short_number(prof.total_macs)
    assert shown["MACs / image"].proto.help == f"{prof.total_macs:,}"
    card = loaded.card
    lo, hi = wilson(round(card["test_accuracy"] * card["test_images"]), card["test_images"])
    assert f"95% interval {100 * lo:.1f}-{100 * hi:.1f}% on 10,000 images" in [c.value for c in at.caption]
    layers = [x for x in prof.layers if x.prunable]  # default view: conv + linear
    p_share = sum(x.params for x in layers[-3:]) / sum(x.params for x in layers)
    m_share = sum(x.macs for x in layers[-3:]) / sum(x.macs for x in layers)
    takeaway = next(i.value for i in at.info if "last 3 layers" in i.value)
    assert f"{p_share:.0%} of the parameters" in takeaway and f"{m_share:.0%} of the compute" in takeaway


def _layer_bars(at: AppTest):
    import json

    for chart in at.get("plotly_chart"):
        spec = json.loads(chart.proto.spec)
        if "Per-layer sparsity" in json.dumps(spec.get("layout", {}).get("title", "")):
            return {t["name"]: t["y"] for t in spec["data"] if t.get("type") == "bar"}
    raise AssertionError("no per-layer sparsity chart")


def test_slider_changes_layer_sparsities_and_accuracy():
    at = settle(open_page(page("prune")))
    before = _layer_bars(at)
    acc_before = metric(at, "Global at")
    settle(at.slider(key="w_sparsity").set_value(0.9).run())
    assert not at.exception
    after = _layer_bars(at)
    assert before["local"] != after["local"] and before["global"] != after["global"]
    assert all(abs(v - 90) < 1 for v in after["local"])
    assert metric(at, "Global at") != acc_before
    assert "90%" in next(label for label, _ in labelled(at) if label.startswith("Global at"))


def test_a_two_four_pattern_fixes_the_slider_and_says_why_there_is_no_speedup():
    at = settle(open_page(page("prune"), {"structure": "2:4", "sparsity": "0.8"}))
    slider = at.slider(key="w_sparsity")
    assert slider.value == pytest.approx(0.5) and slider.proto.disabled
    note = next(i.value for i in at.info if i.value.startswith("**2:4:**"))
    assert "2 best" in note and "#111339" in note and "50%" in note
    bars = _layer_bars(at)
    assert bars["global"] == bars["local"]  # the pattern, not the scope, decides
    assert set(bars["global"]) <= {0.0, 50.0} and 50.0 in bars["global"]  # features.0 (1 input channel) stays dense
    assert any("No curve: the pattern fixes the sparsity." in c.value for c in at.caption)
    assert any(c.value == "Dense here (the pattern does not fit them): `features.0`." for c in at.caption)
    assert metric(at, "Global at 50%") == metric(at, "Local at 50%")


def test_the_five_allocations_overlay_on_fmnist_vgg_at_70_percent():
    from prunekit.core.lab import Lab
    from prunekit.core.spec import ALLOCATIONS, PruneConfig
    from prunekit.models import zoo

    at = open_page(page("prune"), {"model": "fmnist-vgg", "sparsity": "0.7"})
    picker = at.multiselect(key="overlay:unstructured")
    assert picker.value == ["global", "local"]  # the page's own pair unless asked for more
    picker.set_value(list(ALLOCATIONS)).run()
    assert not at.exception, at.exception
    bars = _layer_bars(at)
    assert list(bars) == list(ALLOCATIONS)
    lab = Lab(zoo.load("fmnist-vgg"))
    for name, method in ALLOCATIONS.items():
        result = lab.pruner(
            PruneSpec("magnitude", "unstructured", allocation=Allocation(normalise=method.normalise))
        ).prune(PruneConfig(0.7, method.scope))
        assert bars[name] == pytest.approx([100 * row.sparsity for row in result.layers]), name
    assert bars["lamp"] != bars["global"] and bars["erk"] != bars["local"]
    at.multiselect(key="overlay:unstructured").set_value(["global", "local"]).run()
    from prunekit.app.server_state import service

    waiting = [e for e in service()._sched.queue if e.job.model == "fmnist-vgg" and e.job.spec.normalise == "lamp"]
    assert all(e.background for e in waiting)  # off the chart: their live requests stepped back
    at.slider(key="w_sparsity").set_value(0.0).run()  # and the pair's, for the tests after this one
    assert not at.exception, at.exception


def test_an_overlaid_allocations_accuracy_is_its_pruned_models():
    from prunekit.core.lab import Lab
    from prunekit.core.spec import PruneConfig
    from prunekit.models import zoo

    at = open_page(page("prune"), {"sparsity": "0.9"})
    at.multiselect(key="overlay:unstructured").set_value(["global", "local", "lamp"]).run()
    settle(at)
    pruner = Lab(zoo.load("fmnist-cnn")).pruner(
        PruneSpec("magnitude", "unstructured", allocation=Allocation(normalise="lamp"))
    )
    pruner.apply_(PruneConfig(0.9, "global"))
    assert metric(at, "LAMP at 90%") == f"{pruner.evaluate().top1:.2%}"


def test_the_forgetting_page_shows_which_classes_lost_most_and_the_flipped_images():
    import json

    import torch

    from prunekit.core.lab import Lab
    from prunekit.core.spec import PruneConfig
    from prunekit.models import zoo

    at = open_page(page("forget"), {"sparsity": "0.9"})
    wait_until(lambda: any("exact test" in m.value for m in at.run().markdown), what="the forgetting panel")
    assert not at.exception, at.exception
    lab = Lab(zoo.load("fmnist-cnn"))
    data = lab.loaded.eval_data()
    pruner = lab.pruner(PruneSpec("magnitude", "unstructured"))
    pruner.apply_(PruneConfig(0.9, "global"))
    with torch.no_grad():
        dense, pruned = lab.loaded.model(data.images).argmax(1), pruner.model(data.images).argmax(1)
    y = data.labels
    change = {
        data.classes[k]: 100
        * (int((pruned[y == k] == k).sum()) - int((dense[y == k] == k).sum()))
        / int((y == k).sum())
        for k in range(len(data.classes))
    }
    chart = next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if "Per-class" in c.proto.spec)
    bars = next(t for t in chart["data"] if t["name"] == "global")
    assert bars["x"][0] == min(change, key=change.get) == "Sneaker"  # worst class first
    assert bars["y"] == pytest.approx([change[name] for name in bars["x"]])
    lost = int(((dense == y) & (pruned != y)).sum())
    gained = int(((dense != y) & (pruned == y)).sum())
    text = next(m.value for m in at.markdown if "exact test" in m.value)
    assert f"**{lost:,}** images lost, **{gained:,}** gained" in text
    assert len(at.get("image")[0].proto.imgs) == min(24, lost)


def test_tradeoffs_says_whether_one_recipe_really_beats_the_other():
    import torch

    from prunekit.core.lab import Lab
    from prunekit.core.spec import PruneConfig
    from prunekit.models import zoo

    at = open_page(page("tradeoffs"))
    wait_until(lambda: any("exact test at 70%" in m.value for m in at.run().markdown), what="the paired test")
    lab = Lab(zoo.load("fmnist-cnn"))
    data = lab.loaded.eval_data()
    predictions = {}
    for scope in ("global", "local"):
        pruner = lab.pruner(PruneSpec("magnitude", "unstructured"))
        pruner.apply_(PruneConfig(0.7, scope))
        with torch.no_grad():
            predictions[scope] = pruner.model(data.images).argmax(1) == data.labels
    only_a = int((predictions["global"] & ~predictions["local"]).sum())
    only_b = int((~predictions["global"] & predictions["local"]).sum())
    text = next(m.value for m in at.markdown if "exact test at 70%" in m.value)
    assert f"**{only_a:,}** images only A gets right, **{only_b:,}** only B" in text


def test_choosing_a_layer_shows_what_is_pruned_with_it():
    from prunekit.core.lab import Lab
    from prunekit.models import zoo

    lab = Lab(zoo.load("fmnist-resnet"))
    tied = next(c for c in lab.clusters if len(c.producers()) > 1)
    at = open_page(page("model"), {"model": "fmnist-resnet"})
    at.toggle(key="model_show_coupled").set_value(True).run()
    at.selectbox(key="model_coupled").set_value(tied.root).run()
    assert not at.exception, at.exception
    assert {row["layer"] for row in at.dataframe[-1].value.to_dict("records")} == tied.layers()
    assert any("go together" in m.value for m in at.markdown)
    at = open_page(page("prune"), {"model": "fmnist-resnet", "structure": "filter", "criterion": "l1"})
    at.selectbox(key="prune_coupled").set_value(tied.root).run()
    import json

    chart = next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if "Per-layer sparsity" in c.proto.spec)
    bars = chart["data"][0]
    outlined = {x for x, w in zip(bars["x"], bars["marker"]["line"]["width"], strict=True) if w}
    assert outlined == {layer for layer in tied.layers() if layer in bars["x"]} and len(outlined) > 1


def test_collapse_preset_shows_the_warning():
    at = open_page(page("prune"))
    at.button[0].click().run()
    assert not at.exception
    warnings = [w.value for w in at.warning]
    assert any("Global: layer collapse" in w for w in warnings), warnings
    assert not any("Local: layer collapse" in w for w in warnings)


def test_bad_query_string_falls_back_with_a_notice():
    at = open_page(
        page("model"), {"model": "nosuchnet", "sparsity": "7", "criterion": "l1", "structure": "unstructured"}
    )
    notes = " ".join(w.value for w in at.warning)
    assert "nosuchnet" in notes and "'7'" in notes
    assert at.query_params["model"] == ["fmnist-cnn"] or at.query_params["model"] == "fmnist-cnn"


def test_query_string_reopens_the_same_view():
    at = open_page(page("prune"), {"model": "fmnist-cnn", "sparsity": "0.8", "structure": "filter", "criterion": "l2"})
    assert at.slider(key="w_sparsity").value == pytest.approx(0.8)
    assert at.selectbox(key="w_criterion").value == "l2"
    assert not at.warning or all("collapse" in w.value for w in at.warning)


def test_model_page_lists_bundled_models_with_accuracies():
    from prunekit.models import zoo

    at = open_page(page("model"))
    table = at.dataframe[0].value
    assert list(table["model"]) == list(zoo.BUNDLED)
    for name, acc in zip(table["model"], table["test top-1 (10k)"], strict=True):
        assert acc == f"{zoo.bundled_card(name)['test_accuracy']:.2%}"


def test_untrained_model_shows_banner_and_no_accuracy(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    at = open_page(page("prune"), {"model": "resnet18", "sparsity": "0.3"})
    assert any("Untrained" in e.value for e in at.error)
    assert not [label for label, _ in labelled(at) if label.startswith("Dense")]


def test_attention_model_says_collapse_detection_is_not_available(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    at = open_page(page("prune"), {"model": "swin_t", "sparsity": "0.5"})
    assert any("collapse detection is not available for this model" in i.value for i in at.info)
    effective = [m for m in at.metric if m.label == "Effective sparsity"]
    assert len(effective) == 2 and all(m.value == "n/a" for m in effective)


@pytest.mark.parametrize("trusted", [False, True])
def test_upload_panel_says_which_mode_the_server_is_in(monkeypatch, trusted):
    if trusted:
        monkeypatch.setenv("PRUNEKIT_TRUSTED_UPLOADS", "1")
    else:
        monkeypatch.delenv("PRUNEKIT_TRUSTED_UPLOADS", raising=False)
    at = open_page(page("model"))
    texts = [w.value for w in at.sidebar.warning] + [c.value for c in at.sidebar.caption]
    assert any(t.startswith("**Trusted mode**" if trusted else "Safe mode") for t in texts), texts
    from prunekit.models import timm_zoo, zoo

    plain = [n for n in zoo.model_names() if not timm_zoo.is_timm(n)]  # timm's are listed on request (test_app_timm)
    assert at.sidebar.selectbox(key="upload_arch").options == plain


def _in_process_top1(sparsity: float, scope: str) -> float:
    from prunekit.core.lab import Lab
    from prunekit.core.spec import PruneConfig
    from prunekit.models import zoo

    pruner = Lab(zoo.load("fmnist-cnn")).pruner(PruneSpec("magnitude", "unstructured"))
    pruner.apply_(PruneConfig(sparsity, scope))
    return pruner.evaluate().top1


def test_two_sessions_at_different_positions_each_see_their_own_numbers():
    a = open_page(page("prune"), {"sparsity": "0.6"})
    b = open_page(page("prune"), {"sparsity": "0.85"})
    settle(a), settle(b)
    for at, s in ((a, 0.6), (b, 0.85)):
        for scope in ("global", "local"):
            label = f"{scope.title()} at {s:.0%}"
            assert metric(at, label) == f"{_in_process_top1(s, scope):.2%}", (label, labelled(at))
        bars = _layer_bars(at)
        assert all(abs(v - 100 * s) < 1 for v in bars["local"])


def test_accuracy_curve_fills_in_with_true_numbers(monkeypatch):
    monkeypatch.setenv("PRUNEKIT_CURVE_FILL", "1")
    at = settle(open_page(page("prune"), {"sparsity": "0.5"}))
    coarse = lambda: all({0.0, 0.3, 0.9} <= set(c) for c in curve(at).values())  # noqa: E731 - 0.1 grid first
    wait_until(coarse, step=lambda: rerun(at), what="the coarse curve")
    curves = curve(at)
    for scope in ("global", "local"):
        assert {0.0, 0.3, 0.9} <= set(curves[scope]), curves
        assert curves[scope][0.9] == pytest.approx(100 * _in_process_top1(0.9, scope), abs=1e-6)
    _stop_curve_fill(EvalJob("fmnist-cnn", PruneSpec("magnitude")))


def test_the_curve_listens_for_its_pending_points_and_a_browser_without_the_channel_gets_a_refreshing_chart():
    """Curve filling off: the slider's own point is the one the curve waits for, in both scopes, offered to this
    session under one group key; a session whose browser cannot use the channel gets the Plotly chart."""
    from prunekit.app.channel import CHANNEL, key_of
    from prunekit.app.readouts import FALLBACK_KEY, TOKEN_KEY

    at = open_page(page("prune"), {"sparsity": "0.43"})
    (data,) = component_data(at, "prunekit_curve")
    jobs = {scope: EvalJob("fmnist-cnn", PruneSpec("magnitude", allocation=Allocation(scope), sparsity=0.43))
            for scope in ("global", "local")}  # fmt: skip
    drawn = curve(at)
    for scope, job in jobs.items():  # drawn if it landed before the run ended, else listened for: never both
        assert (0.43 in drawn[scope]) != (data["pending"].get(key_of(job)) == [scope, 0.43]), (drawn, data)
    at_slider = {k: scope for k, (scope, s) in data["pending"].items() if s == 0.43}
    assert len(at_slider) + sum(0.43 in drawn[s] for s in jobs) == 2
    dense = EvalJob("fmnist-cnn").canonical()  # the curve's point at 0 (its dense line): drawn, or listened for
    assert all(s in (0.43, 0.0) for _, s in data["pending"].values())
    assert (0.0 in drawn["global"]) != (key_of(dense) in data["pending"]), (drawn, data)
    assert data["token"] == at.session_state[TOKEN_KEY]
    if data["pending"]:
        offered = CHANNEL.jobs(data["token"], [data["group"]])
        assert {k: offered[k] for k in at_slider} == {k: jobs[scope].canonical() for k, scope in at_slider.items()}
        assert key_of(dense) not in data["pending"] or offered[key_of(dense)] == dense
    assert data["at"] == 0.43 and all(m["top1"] > 0 for m in data["marks"])
    at.session_state[FALLBACK_KEY] = True
    rerun(at)
    assert component_data(at, "prunekit_curve") == [] and set(curve(at)) == {"global", "local"}


def _stop_curve_fill(template: EvalJob) -> None:
    """Drop the rest of the fill (the 0.01 grid, both scopes: about 200 passes): the app's service outlives
    the test, and its worker would go on filling this curve under the tests that follow."""
    from prunekit.app import server_state
    from prunekit.service.queue import curve_grid

    svc = server_state.service()
    for _, s in curve_grid():
        for scope in ("global", "local"):
            svc.stop(template.with_scope(scope).at(s))


def test_sensitivity_scan_runs_as_service_jobs_and_shows_what_they_measured():
    from prunekit.core.lab import Lab
    from prunekit.core.loaded import ModelSpec
    from prunekit.models.zoo import load
    from prunekit.service.fanout import Backend, run_jobs, sensitivity_jobs, sensitivity_rows
    from prunekit.service.jobs import EvalJob

    at = open_page(page("sensitivity"))
    at.multiselect[0].set_value([0.5, 0.9]).run()
    at.button[0].click().run()
    wait_until(lambda: any("Most sensitive" in m.value for m in at.markdown), step=lambda: rerun(at), what="the scan")
    lab = Lab(load("fmnist-cnn"))
    jobs = sensitivity_jobs(lab, EvalJob("fmnist-cnn", PruneSpec("magnitude"), subset=1000), [0.5, 0.9])
    got = run_jobs(jobs, ModelSpec("prunekit.models.zoo:load", ("fmnist-cnn",)), lab.fingerprint, Backend())
    rows = [r for r in sensitivity_rows(jobs, [got[j] for j in jobs]) if r.sparsity == 0.9]
    worst, best = max(rows, key=lambda r: r.drop), min(rows, key=lambda r: r.drop)
    text = next(m.value for m in at.markdown if "Most sensitive" in m.value)
    assert f"**`{worst.layer}`** (drop {100 * worst.drop:.1f} points)" in text
    assert f"Least sensitive: **`{best.layer}`** (drop {100 * best.drop:.1f} points)" in text
    assert any("stratified subset of" in c.value for c in at.caption)
    # The budget plan under the scan: solved from the same rows, measured by the workers on the full split.
    from prunekit.core.budget import Costs, Target, plan
    from prunekit.service.fanout import plan_job

    wait_until(lambda: metric(at.run(), "Measured top-1") != "computing...", what="the plan's measured accuracy")
    expected = plan(
        Costs.of(lab.profile, lab.loaded.model), sensitivity_rows(jobs, [got[j] for j in jobs]), Target("macs", 0.5)
    )
    shown = {row["layer"]: row["sparsity"] for row in at.dataframe[0].value.to_dict("records")}
    assert shown == expected.sparsities
    job = plan_job(EvalJob("fmnist-cnn", PruneSpec("magnitude")), expected.sparsities)
    measured = run_jobs([job], ModelSpec("prunekit.models.zoo:load", ("fmnist-cnn",)), lab.fingerprint, Backend())[job]
    assert metric(at, "Measured top-1") == f"{measured.top1:.2%}"
    assert float(metric(at, "MACs left").rstrip("%")) <= 50.0
    link = next(m.value for m in at.markdown if "Open this plan on the Prune page" in m.value)
    query = parse_qs(link[link.index("prune?") + len("prune?") : link.rindex(")")])
    assert query["sparsity"] == ["0.0"] and query["structure"] == ["unstructured"]
    assert decode_overrides(query["overrides"][0]) == {k: v for k, v in expected.sparsities.items() if v > 0}


def test_a_plans_share_link_opens_the_prune_page_with_its_per_layer_sparsities():
    query = {"sparsity": "0.0", "overrides": "features.3:0.6,classifier.1:0.9,no.such.layer:0.5,bad"}
    at = open_page(page("prune"), query)
    assert any("`no.such.layer`: not layers of this model" in w.value for w in at.warning)
    bars = _layer_bars(at)
    expected = [0.0, 60.0, 90.0, 0.0]  # features.0, features.3, classifier.1, classifier.3
    assert bars["global"] == pytest.approx(expected, abs=0.01) and bars["local"] == pytest.approx(expected, abs=0.01)
    note = next(i.value for i in at.info if "Per-layer sparsities from the link" in i.value)
    assert "`features.3` 60%" in note and "`classifier.1` 90%" in note
    assert any(label.startswith("Global at 0% + the link's layers") for label, _ in labelled(at))  # not "0%" alone
    next(b for b in at.button if b.label == "Clear the per-layer sparsities").click().run()
    assert all(v == 0.0 for v in _layer_bars(at)["global"])


def test_effective_sparsity_measured_apart_arrives_on_the_page(monkeypatch):
    """As on a big model: the slider move leaves the path test to an evaluation worker, the page says it
    is measuring and then shows the engine's figure."""
    from prunekit.app.server_state import DEFAULTS
    from prunekit.core.lab import Lab
    from prunekit.models import zoo

    monkeypatch.setattr(Lab, "paths_inline", property(lambda self: False))
    at = open_page(page("prune"), {"sparsity": "0.83"})
    assert [m.value for m in at.metric if m.label == "Effective sparsity"] == ["measuring..."] * 2  # a new position
    wait_until(lambda: all(m.value != "measuring..." for m in at.metric), at.run, "the path test lands")
    assert not at.exception, at.exception
    shown = [m.value for m in at.metric if m.label == "Effective sparsity"]
    lab = Lab(zoo.load(DEFAULTS.model))
    want = [f"{lab.result(DEFAULTS.spec(s, 0.83)).effective_sparsity:.1%}" for s in ("global", "local")]
    assert shown == want
