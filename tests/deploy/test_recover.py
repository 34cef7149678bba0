"""Recovery: BN recalibration, masked fine-tuning and the pruning schedules."""

import copy

import pytest
import torch

from prunekit.core.data import EvalData
from prunekit.core.evaluate import accuracy_of, stratified_indices
from prunekit.core.lab import Lab
from prunekit.core.spec import PruneConfig, PruneSpec
from prunekit.deploy.engine import EngineKind
from prunekit.deploy.recover import CURVE_IMAGES, Recipe, recalibrate_bn_, recover
from prunekit.errors import DataNotFoundError, InvalidArgumentError, UnknownNameError
from prunekit.models import zoo
from tests.helpers import TinyResNet, seeded, spec_of, tiny_loaded


def _train(n: int = 96) -> EvalData:
    gen = torch.Generator().manual_seed(1)
    return EvalData(
        "tiny-train",
        torch.randn(n, 1, 8, 8, generator=gen),
        torch.randint(0, 3, (n,), generator=gen),
        ("a", "b", "c"),
        "",
    )


def test_schedules_end_at_the_final_sparsity_and_agp_prunes_early():
    assert Recipe().sparsities(0.6) == [0.6]
    assert Recipe(schedule="iterative", steps=3).sparsities(0.6) == pytest.approx([0.2, 0.4, 0.6])
    agp = Recipe(schedule="agp", steps=3).sparsities(0.6)
    assert agp == pytest.approx([0.6 * (1 - (2 / 3) ** 3), 0.6 * (1 - (1 / 3) ** 3), 0.6])
    assert agp[0] > 0.2  # cubic: most of the pruning happens early, while there is budget left to recover


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"schedule": "cyclic"}, "unknown schedule 'cyclic'"),
        ({"steps": 3}, "exactly 1 for one-shot"),
        ({"epochs": -1}, "must be >= 0"),
        ({"train_images": 0}, "train_images must be positive"),
    ],
)
def test_bad_recipes_are_refused_by_name(kwargs, match):
    with pytest.raises((InvalidArgumentError, UnknownNameError), match=match):
        Recipe(**kwargs)


def test_bn_recalibration_sets_running_stats_to_the_batch_statistics():
    model = seeded(TinyResNet)
    images = torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    twin, seen = copy.deepcopy(model), []
    twin.bn1.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    with torch.no_grad():  # one batch in train mode: earlier BNs normalise by batch statistics too
        twin.train()(images)
    x = seen[0]
    recalibrate_bn_(model, images, batch_size=64)
    assert not model.training
    assert torch.allclose(model.bn1.running_mean, x.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(model.bn1.running_var, x.var((0, 2, 3), unbiased=True), atol=1e-4)


def test_fine_tune_keeps_pruned_units_pruned_on_every_schedule():
    lab = Lab(tiny_loaded(TinyResNet))
    config = PruneConfig(0.5, "local")
    oneshot = lab.pruner(PruneSpec("l1", "filter")).prune(config)
    for schedule, steps in [("one-shot", 1), ("iterative", 3), ("agp", 2)]:
        recipe = Recipe(bn_images=32, epochs=2, schedule=schedule, steps=steps, batch_size=32)
        out = recover(lab, spec_of("l1", "filter", "none", config), recipe, train=_train())
        assert out.step == out.total_steps == 6 and not out.stopped
        zeros = sum(int((p == 0).sum()) for p in out.model.parameters())
        assert zeros == oneshot.total_params - oneshot.nonzero_params, schedule
        assert set(out.accuracy) == {"dense", "pruned", "recalibrated", "finetuned"}


def test_a_report_returning_false_stops_the_fine_tune_with_the_model_as_it_was():
    lab = Lab(tiny_loaded(TinyResNet))
    seen = []

    def report(r):
        seen.append(r.step)
        return r.step < 2

    recipe = Recipe(bn_images=0, epochs=10, batch_size=32)
    out = recover(lab, spec_of("magnitude", "unstructured", "none", PruneConfig(0.5)), recipe, report, train=_train())
    assert out.stopped and out.step == 2 < out.total_steps == 30
    assert out.accuracy["recalibrated"] is None and out.accuracy["finetuned"] is not None


def test_recovery_refuses_a_model_without_training_data():
    with pytest.raises(DataNotFoundError, match="recovery needs TinyResNet's training data"):
        recover(Lab(tiny_loaded(TinyResNet)), spec_of("l1", "filter", "none", PruneConfig(0.5)), Recipe())


def test_recovery_on_a_bundled_model_recalibrates_then_fine_tunes_upwards():
    lab = Lab(zoo.load("fmnist-resnet"))
    recipe = Recipe(bn_images=512, epochs=1, train_images=2048)
    # full passes on ONNX Runtime, as a worker runs them (the same figures as eager: the test below)
    out = recover(
        lab, spec_of("l1", "filter", "none", PruneConfig(0.5, "local")), recipe, engine=EngineKind.ONNXRUNTIME
    )
    acc = {k: v.top1 for k, v in out.accuracy.items()}
    assert acc["dense"] == pytest.approx(zoo.bundled_card("fmnist-resnet")["test_accuracy"], abs=1e-4)
    assert acc["pruned"] < acc["recalibrated"] < acc["finetuned"] < acc["dense"]
    assert out.accuracy["finetuned"].n == 10_000 and len(out.curve) >= 5
    # the live curve's last point is the final model on a fixed stratified subset of the test split
    test = lab.loaded.eval_data()
    idx = stratified_indices(test.labels, CURVE_IMAGES)
    last = accuracy_of(out.model, test.images[idx], test.labels[idx], len(idx))
    assert out.curve[-1].top1 == last.top1 and out.curve[-1].n == last.n == CURVE_IMAGES


def test_recovery_on_an_engine_reports_the_eager_figures():
    lab = Lab(zoo.load("fmnist-cnn"))
    spec = spec_of("l1", "filter", "none", PruneConfig(0.5, "local"))
    recipe = Recipe(bn_images=0, epochs=0.5, train_images=512, schedule="iterative", steps=2)
    runs = [recover(lab, spec, recipe, engine=kind) for kind in (EngineKind.EAGER, EngineKind.ONNXRUNTIME)]
    eager_run, onnx_run = ({k: (v.top1, v.n) for k, v in r.accuracy.items() if v} for r in runs)
    assert eager_run == onnx_run and set(eager_run) == {"dense", "pruned", "finetuned"}
    assert eager_run["dense"][0] == pytest.approx(zoo.bundled_card("fmnist-cnn")["test_accuracy"], abs=1e-4)


def test_the_training_split_size_is_read_from_its_header_and_equals_the_split():
    from prunekit.deploy.recover import training_images
    from prunekit.models import zoo
    from prunekit.models.datasets import fashion_mnist

    assert training_images(zoo.load("fmnist-cnn")) == len(fashion_mnist("train").labels)
