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


@pytest.mark.parametrize("name", ["ft", "kd", "lth", "lth-reinit", "lrr", "snip", "grasp", "synflow", "set", "rigl"])
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
    total = sum(k.numel() for n, k in result.masks.items())
    assert sum(int((~k).sum()) for k in result.masks.values()) == round(0.8 * total)
    assert result.weight_sparsity >= 0.8 - 1e-3
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
