"""Inference engines: ONNX Runtime counts what the eager model counts on every bundled model, and an engine that
cannot be built or disagrees falls back to eager with its reason, in the engine and in a worker's pass."""

import dataclasses

import pytest
import torch
from torch import nn

from prunekit.core.evaluate import count_correct
from prunekit.core.lab import Lab
from prunekit.core.loaded import ModelSpec
from prunekit.core.spec import PruneSpec
from prunekit.deploy import engine as engine_module
from prunekit.deploy.engine import (
    Engine,
    EngineKind,
    checked,
    eager,
    fastest,
    onnxruntime,
    refereed_counts,
    refereed_logits,
)
from prunekit.errors import ExportError
from prunekit.models import zoo
from prunekit.service.jobs import EvalJob
from prunekit.service.runner import JobRunner

BUNDLED = ["fmnist-cnn", "fmnist-resnet", "fmnist-mobilenet", "fmnist-vgg"]
CONFIGS = {
    "dense": None,
    "50% unstructured": PruneSpec("magnitude", "unstructured", sparsity=0.5),
    "50% filters": PruneSpec("l1", "filter", sparsity=0.5),
}
IMAGES = 2000


@pytest.mark.parametrize("name", BUNDLED)
def test_onnxruntime_counts_what_the_eager_model_counts(name):
    lab = Lab(zoo.load(name))
    data = lab.loaded.eval_data()
    images, labels = data.images[:IMAGES], data.labels[:IMAGES]
    for label, spec in CONFIGS.items():
        if spec is None:
            model = lab.loaded.model
        else:
            pruner = lab.pruner(spec)
            pruner.apply_(spec)
            model = pruner.model
        engine = checked(onnxruntime(model, tuple(images.shape[1:])), model, images, labels)
        assert engine.kind is EngineKind.ONNXRUNTIME, (label, engine.note)
        want = count_correct(model, images, labels, 64)
        got = count_correct(engine, images, labels, 64)
        assert (got.correct, got.n) == (want.correct, want.n), label
        if spec is not None:  # the pruned weights, not the dense ones, were exported
            dense = eager(lab.loaded.model)(images[:64])
            assert not torch.allclose(engine(images[:64]), dense, rtol=1e-3, atol=1e-3), label


class Unexportable(nn.Module):
    """A small CNN with an operation ONNX does not have (cumulative max)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cummax(self.conv(x), 1).values.mean((2, 3)))


def test_a_model_that_cannot_be_exported_runs_eager_and_says_why():
    model, images = Unexportable().eval(), torch.randn(32, 1, 28, 28)
    with pytest.raises(ExportError, match="cummax"):
        onnxruntime(model, (1, 28, 28))
    choice = fastest(model, images, batch=16)
    assert choice.kind is EngineKind.EAGER
    assert "cummax" in choice.note and list(choice.seconds) == [EngineKind.EAGER]


def test_an_engine_that_disagrees_is_replaced_by_eager_with_the_reason():
    model = Unexportable().eval()
    images, labels = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    right = eager(model)
    off = Engine(EngineKind.ONNXRUNTIME, lambda x: right(x) * (1 + 1e-3), build_s=0.25)  # same argmax, logits off
    fell = checked(off, model, images, labels)
    assert fell.kind is EngineKind.EAGER and fell.build_s == 0.25
    assert "logits differ by 1.0e-03" in fell.note
    wrong = Engine(EngineKind.ONNXRUNTIME, lambda x: -right(x))  # other predictions
    assert "checked images right" in checked(wrong, model, images, labels).note
    fine = Engine(EngineKind.ONNXRUNTIME, right.forward)
    assert checked(fine, model, images, labels) is fine


@pytest.fixture(scope="module")
def workers():
    """Two workers on fmnist-cnn: one choosing its engine by measurement, one always eager (the reference)."""
    spec = ModelSpec("prunekit.models.zoo:load", ("fmnist-cnn",))
    fast, plain = JobRunner(), JobRunner(engines=False)
    fast.load("fmnist-cnn", spec)
    plain.load("fmnist-cnn", spec)
    # The measured choice is ONNX Runtime on a quiet machine (1.7x, see deploy/engine.py) but may be eager on a
    # busy one; these tests check what a worker does with an ONNX choice, so it is set, not timed.
    fast.choices["fmnist-cnn"] = dataclasses.replace(fast.choices["fmnist-cnn"], kind=EngineKind.ONNXRUNTIME)
    return fast, plain


def _figure(acc) -> tuple:
    return acc.top1, acc.n, acc.total


def test_a_worker_runs_full_passes_on_its_measured_engine_with_the_same_figures(workers):
    fast, plain = workers
    assert set(fast.choices["fmnist-cnn"].seconds) == {EngineKind.EAGER, EngineKind.ONNXRUNTIME}  # both timed
    assert "fmnist-cnn" not in plain.choices
    job = EvalJob("fmnist-cnn", PruneSpec("magnitude", sparsity=0.7))
    got, want = fast.run(job), plain.run(job)
    assert _figure(got) == _figure(want)
    key = ("fmnist-cnn", *job.spec.key())
    assert isinstance(fast._engines[key], Engine) and fast._engines[key].build_s > 0


@pytest.mark.parametrize("failure", ["export", "disagreement"])
def test_a_configuration_whose_engine_fails_is_measured_eager_with_the_reason(workers, monkeypatch, failure):
    fast, plain = workers

    def broken(model, input_shape, threads=1):
        if failure == "export":
            raise ExportError("the model cannot be exported to ONNX (a test)")
        right = eager(model)
        return Engine(EngineKind.ONNXRUNTIME, lambda x: right(x).roll(1, dims=1))

    monkeypatch.setattr(engine_module, "onnxruntime", broken)  # what the worker builds its engines with
    job = EvalJob("fmnist-cnn", PruneSpec("magnitude", sparsity=0.55 if failure == "export" else 0.45))
    got, want = fast.run(job), plain.run(job)
    assert _figure(got) == _figure(want)
    (reason,) = [v for k, v in fast._engines.items() if k[1:] == job.spec.key()]
    assert isinstance(reason, str)
    assert ("a test" in reason) if failure == "export" else ("checked images right" in reason)


def test_configurations_that_differ_only_in_structure_get_their_own_engines(workers):
    """The granularity ladder's rungs share criterion, scope and sparsity: each must be scored on its own model
    (a cache keyed without the structure once scored a collapsed filter rung as 81.79% instead of 10%)."""
    fast, plain = workers
    from prunekit.service.ladder import ladder_specs

    for structure, spec in ladder_specs(PruneSpec("magnitude", "unstructured", sparsity=0.6)).items():
        job = EvalJob("fmnist-cnn", spec)
        assert _figure(fast.run(job)) == _figure(plain.run(job)), structure


def test_near_ties_are_scored_by_the_model_itself():
    model = Unexportable().eval()
    images = torch.randn(8, 1, 28, 28)
    mine = eager(model)(images).float()
    theirs = torch.zeros(8, 10)
    theirs[:, 3] = 10.0  # a clear prediction for every image...
    theirs[[0, 5], 7] = (
        10.0 - 1e-3
    )  # ...but two, in two batches: classes within 1e-3 of 10 (TIE_RTOL: 1e-3 of the largest)
    got = refereed_logits(_serving(theirs, 4), model, images, 4)
    # the model's own logits for the near ties (scored apart, so equal to the last bits only within rounding)
    near = [0, 5]
    assert torch.allclose(got[near], mine[near], rtol=1e-5, atol=1e-6)
    rest = [i for i in range(8) if i not in near]
    assert torch.equal(got[rest], theirs[rest])
    assert refereed_logits(eager(model), model, images, 4).equal(mine)
    labels = mine.argmax(1)
    assert refereed_counts(_serving(theirs, 4), model, images, labels, 4).correct == int(
        (got.argmax(1) == labels).sum()
    )


def _serving(logits: torch.Tensor, batch: int) -> Engine:
    """A fake engine answering ``logits`` (N, classes) batch by batch, in order."""
    answers = iter(logits.split(batch))
    return Engine(EngineKind.ONNXRUNTIME, lambda x: next(answers).clone())


@pytest.mark.parametrize("onnx_s", [0.5, 2.0])
def test_the_engine_that_timed_faster_is_chosen(monkeypatch, onnx_s):
    """A clock injected through the timing function: the choice follows the timings, whatever the machine's load."""
    from prunekit.deploy import engine as engine_module

    monkeypatch.setattr(
        engine_module, "_time", lambda engine, images, batch: {"eager": 1.0}.get(engine.kind.value, onnx_s)
    )
    model = Lab(zoo.load("fmnist-cnn")).loaded.model
    choice = fastest(model, torch.randn(64, 1, 28, 28), batch=32)
    assert choice.seconds == {EngineKind.EAGER: 1.0, EngineKind.ONNXRUNTIME: onnx_s}
    assert choice.kind is (EngineKind.ONNXRUNTIME if onnx_s < 1.0 else EngineKind.EAGER)


def test_a_model_whose_whole_pass_is_less_work_than_the_timing_sample_runs_eager_untimed():
    from prunekit.service.runner import CHOICE_MACS
    from tests.helpers import TINY_SPEC

    runner = JobRunner()
    runner.load("tiny", TINY_SPEC)
    lab = runner.labs["tiny"]
    assert lab.profile.total_macs * len(lab.loaded.eval_data()) <= CHOICE_MACS
    choice = runner.choices["tiny"]
    assert choice.kind is EngineKind.EAGER and choice.seconds == {} and "too little to time" in choice.note
