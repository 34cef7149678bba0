"""The methods end to end on a bundled model with a few hundred training images and a few steps: rewinding,
masks held through every step, exact layer sparsities for SET and RigL, and accuracies an independent evaluation
of the returned weights reproduces."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from prunekit.core.at_init import masks_from_scores, snip_scores
from prunekit.core.evaluate import accuracy, stratified_indices
from prunekit.core.lab import Lab
from prunekit.core.spec import ALLOCATIONS
from prunekit.deploy import methods
from prunekit.deploy.methods import METHODS, Budget, train_sparse
from prunekit.errors import InvalidArgumentError, UnknownNameError
from prunekit.models import train as recipes
from prunekit.models import zoo
from prunekit.models.datasets import fashion_mnist

TRAIN = 256
BUDGET = Budget(epochs=1.0, train_images=TRAIN, batch_size=64, rounds=2, rewind_step=3)  # 4 steps a training


@pytest.fixture(scope="module")
def lab() -> Lab:
    return Lab(zoo.load("fmnist-cnn"))


@pytest.fixture(scope="module")
def train():
    data = fashion_mnist("train")
    return dataclasses.replace(data, images=data.images[:TRAIN], labels=data.labels[:TRAIN])


@pytest.fixture(scope="module")
def test_set():
    data = fashion_mnist("test")
    idx = stratified_indices(data.labels, 500)
    return dataclasses.replace(data, images=data.images[idx], labels=data.labels[idx])


def _same(a, b) -> bool:
    return (a.top1, a.n) == (b.top1, b.n)


def _zeros_held(result) -> bool:
    params = dict(result.model.named_parameters())
    return all(bool((params[n][~keep] == 0).all()) for n, keep in result.masks.items())


@pytest.mark.parametrize(
    "name", ["ft", "kd", "lth", "lth-reinit", "lrr", "snip", "grasp", "synflow", "set", "rigl", "submodels"]
)
def test_every_method_holds_its_masks_and_reports_a_true_accuracy(lab, train, test_set, name):
    seen, counts = [], []

    def report(r) -> bool:
        if r.model is not None:
            seen.append(_zeros_held(r))  # after every step: no pruned weight revived
            counts.append({n: int(k.sum()) for n, k in r.masks.items()})
        return True

    result = train_sparse(lab, name, 0.8, BUDGET, report, train=train, test=test_set)
    assert seen and all(seen)
    if name in ("set", "rigl"):  # connections move, every layer's count of active weights does not
        assert all(c == counts[0] for c in counts)
    assert _same(result.accuracy, accuracy(result.model, test_set))
    assert result.accuracy.n == len(test_set) and not result.stopped
    if name != "submodels":  # weights: exactly the fraction asked (sub-models remove channels)
        total = sum(k.numel() for n, k in result.masks.items())
        assert sum(int((~k).sum()) for k in result.masks.values()) == round(0.8 * total)
        assert result.weight_sparsity >= 0.8 - 1e-3
    else:
        assert len(result.candidates) == methods.SUBMODELS and result.weight_sparsity > 0.5
        named = {a.name for a in ALLOCATIONS.values() if not a.unstructured_only}  # ERK is for weights only
        assert set(result.heuristics) == named and all(0 <= v <= 1 for v in result.heuristics.values())
    assert result.steps >= BUDGET.steps(TRAIN) and result.images == result.steps * 64
    assert result.curve and result.to_json()["paper"] == METHODS[name].paper


def test_the_lottery_ticket_rewinds_its_survivors_to_theta_k_exactly(lab, train, test_set, monkeypatch):
    starts = []
    real = methods.train_masked_

    def spy(run, model, masks, phase):
        starts.append(({k: v.detach().clone() for k, v in model.state_dict().items()}, dict(masks)))
        return real(run, model, masks, phase)

    monkeypatch.setattr(methods, "train_masked_", spy)
    result = train_sparse(lab, "lth", 0.8, BUDGET, train=train, test=test_set)
    theta_k = recipes.replay("fmnist-cnn", 3, train).state_dict()
    final_start, final_masks = starts[-1]
    assert len(starts) == BUDGET.rounds + 1  # two search rounds, then the final training
    for name, value in theta_k.items():
        keep = final_masks.get(name)
        kept = value if keep is None else value[keep]
        start = final_start[name] if keep is None else final_start[name][keep]
        assert torch.equal(start, kept), name  # the survivors start at theta_k, bit for bit
    assert all(torch.equal(final_masks[n], result.masks[n]) for n in final_masks)
    assert result.steps == 3 + 3 * BUDGET.steps(TRAIN)  # the replay to k counts in the cost


def test_the_replay_to_theta_k_is_the_recipes_own_run(train):
    model = recipes.initial("fmnist-cnn").to(memory_format=torch.channels_last)
    for step, _ in recipes.steps(model, recipes.RECIPES["fmnist-cnn"], train):
        if step == 5:
            break
    replayed = recipes.replay("fmnist-cnn", 5, train).state_dict()
    assert all(torch.equal(v, replayed[k]) for k, v in model.state_dict().items())
    assert not torch.equal(
        replayed["features.0.weight"], recipes.initial("fmnist-cnn").state_dict()["features.0.weight"]
    )


def test_the_random_reinitialisation_control_trains_the_lottery_mask(lab, train, test_set):
    ticket = train_sparse(lab, "lth", 0.8, BUDGET, train=train, test=test_set)
    control = train_sparse(lab, "lth-reinit", 0.8, BUDGET, train=train, test=test_set)
    assert all(torch.equal(ticket.masks[n], control.masks[n]) for n in ticket.masks)


def test_snip_prunes_by_its_scores_at_theta_0(lab, train, test_set):
    result = train_sparse(lab, "snip", 0.8, BUDGET, train=train, test=test_set)
    theta_0 = recipes.initial("fmnist-cnn").eval()
    want = masks_from_scores(snip_scores(theta_0, train.images[:64], train.labels[:64]), 0.8)
    assert all(torch.equal(want[n], result.masks[n]) for n in want)


def test_slimming_needs_batchnorm_and_prunes_channels_where_there_is_some(lab, train, test_set):
    with pytest.raises(InvalidArgumentError, match="needs BatchNorm layers, and fmnist-cnn has none"):
        train_sparse(lab, "slimming", 0.5, BUDGET, train=train, test=test_set)
    vgg = Lab(zoo.load("fmnist-vgg"))
    budget = Budget(epochs=1.0, train_images=128, batch_size=64)
    result = train_sparse(vgg, "slimming", 0.3, budget, train=train, test=test_set)
    assert _zeros_held(result) and _same(result.accuracy, accuracy(result.model, test_set))
    assert result.steps == 4  # two penalised steps, then two of fine-tuning


def test_a_stop_keeps_the_cost_so_far(lab, train, test_set):
    result = train_sparse(lab, "ft", 0.5, BUDGET, lambda r: r.steps < 2, train=train, test=test_set)
    assert result.stopped and result.steps == 2 and result.accuracy is None and _zeros_held(result)


def test_bad_names_and_budgets_are_refused(lab):
    with pytest.raises(UnknownNameError, match="nosuch"):
        train_sparse(lab, "nosuch", 0.5)
    with pytest.raises(InvalidArgumentError, match="epochs > 0"):
        Budget(epochs=0)


def test_cli_train_sparse_writes_the_weights_masks_and_a_result_whose_accuracy_holds(tmp_path, capsys):
    import json

    from safetensors.torch import load_file

    from prunekit.cli import main

    out = tmp_path / "snip"
    argv = ["train-sparse", "fmnist-cnn", "--method", "snip", "--sparsity", "0.9", "--epochs", "1"]
    code = main([*argv, "--train-images", "256", "--batch-size", "64", "--out", str(out), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and sorted(p.name for p in out.iterdir()) == ["masks.pt", "model.safetensors", "result.json"]
    assert data["method"] == "snip" and data["budget"]["train_images"] == 256 and abs(data["train_images"] - 256) <= 10
    assert data["steps"] == -(-data["train_images"] // 64)  # one epoch of the (stratified) training images
    model = zoo.load("fmnist-cnn").model
    model.load_state_dict(load_file(out / "model.safetensors"))
    masks = torch.load(out / "masks.pt", weights_only=True)
    params = dict(model.named_parameters())
    assert all(bool((params[n][~k] == 0).all()) for n, k in masks.items())
    again = accuracy(model, zoo.load("fmnist-cnn").eval_data())  # the whole test split, independently
    assert data["accuracy"] == again.top1 and data["test_images"] == again.n == 10_000
    assert json.loads((out / "result.json").read_text())["accuracy"] == data["accuracy"]


@pytest.mark.parametrize("name", ["bn-recal", "lsq"])
def test_recoveries_without_training_take_no_step(name, train, test_set):
    vgg = Lab(zoo.load("fmnist-vgg"))
    result = train_sparse(vgg, name, 0.3, BUDGET, train=train, test=test_set)
    assert result.steps == 0 and _zeros_held(result) and _same(result.accuracy, accuracy(result.model, test_set))
    assert result.weight_sparsity >= 0.3  # the weight share asked for, reached by removing channels
    channels = [k for n, k in result.masks.items() if n.endswith("bias") and k.dim() == 1]
    assert channels and sum(int((~k).sum()) for k in channels) > 0  # whole channels went


def test_a_random_allocation_removes_exactly_the_target_within_the_caps():
    sizes = {"a": 16, "b": 32, "c": 64, "d": 8}
    gen = torch.Generator().manual_seed(3)
    draws = [methods.random_allocation(sizes, 0.5, gen) for _ in range(20)]
    for alloc in draws:
        assert sum(round(alloc[n] * sizes[n]) for n in sizes) == 60
        assert all(alloc[n] <= methods.SUBMODEL_MAX for n in sizes)
    assert len({tuple(sorted(a.items())) for a in draws}) == 20  # they differ
    with pytest.raises(InvalidArgumentError, match="at most 90% per layer"):
        methods.random_allocation(sizes, 0.95, gen)


@pytest.mark.parametrize("target", [0.5, 0.9])
def test_channel_methods_remove_the_same_weight_share_as_the_others(lab, target):
    spec = methods.matched_channels(lab, methods.FILTER_SPEC, target)

    def removed(sparsity: float) -> float:  # counted here on the masks the filter spec leaves
        pruner = lab.pruner(spec)
        masks = pruner.work.keep_masks(pruner.apply_(spec.at(sparsity)))
        return sum(int((~k).sum()) for k in masks.values()) / sum(k.numel() for k in masks.values())

    assert removed(spec.sparsity) >= target > removed(spec.sparsity - 0.002)  # the smallest channel share that does
    assert spec.sparsity < target  # a channel takes the next layer's inputs with it
