"""The methods' arithmetic against computations written here: SNIP, GraSP (Hg by double backward), iterative
SynFlow, SET and RigL updates, the slimming penalty and the distillation loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from prunekit.core.at_init import grasp_scores, masks_from_scores, snip_scores, synflow_masks
from prunekit.core.importance import ScoreContext, get_criterion
from prunekit.core.penalties import distillation_loss, slimming_penalty
from prunekit.core.sparse_training import cosine_fraction, erk_random_masks, rigl_update_, set_update_
from tests.helpers import TinyCNN, TinyResNet, seeded


def _batch(n: int = 16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def _weight_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@pytest.mark.parametrize("cls", [TinyCNN, TinyResNet])
def test_snip_is_the_gradient_times_the_weight(cls):
    model = seeded(cls, 1).eval()
    x, y = _batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = snip_scores(model, x, y)
    model.zero_grad()
    for p in model.parameters():
        p.requires_grad_(True)
    nn.functional.cross_entropy(model(x), y).backward()
    for name in _weight_names(model):
        w = model.get_submodule(name).weight
        torch.testing.assert_close(got[name], (w.grad * w).abs().detach())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the input is untouched


@pytest.mark.parametrize("cls", [TinyCNN, TinyResNet])
def test_grasp_is_the_weight_times_the_hessian_gradient_product(cls):
    model = seeded(cls, 2).eval()
    x, y = _batch()
    got = grasp_scores(model, x, y)
    names = [f"{n}.weight" for n in _weight_names(model)]
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(*weights):
        return nn.functional.cross_entropy(
            functional_call(model, params | dict(zip(names, weights, strict=True)), (x,)), y
        )

    weights = tuple(params[n] for n in names)
    g = torch.autograd.functional.jacobian(loss, weights)
    _, hg = torch.autograd.functional.hvp(loss, weights, g)  # H g by double backward
    raw = {n[: -len(".weight")]: w * h for n, w, h in zip(names, weights, hg, strict=True)}
    low = min(float(s.min()) for s in raw.values())
    for name, s in raw.items():
        torch.testing.assert_close(got[name], s - low, rtol=1e-4, atol=1e-6)
    assert min(float(s.min()) for s in got.values()) == 0.0


def test_masks_from_scores_remove_exactly_the_lowest():
    scores = {"a": torch.tensor([5.0, 1.0, 3.0]), "b": torch.tensor([[2.0, 4.0], [0.5, 6.0]])}
    masks = masks_from_scores(scores, 3 / 7)
    assert masks["a.weight"].tolist() == [True, False, True]
    assert masks["b.weight"].tolist() == [[False, True], [False, True]]


def test_iterative_synflow_reaches_the_sparsity_and_one_round_is_the_criterion():
    model = seeded(TinyCNN, 3).eval()
    masks = synflow_masks(model, (1, 8, 8), 0.8, rounds=10)
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.8 * total)
    one = synflow_masks(model, (1, 8, 8), 0.8, rounds=1)
    scores = get_criterion("synflow").score(ScoreContext(model, (1, 8, 8), None), "unstructured")
    want = masks_from_scores(scores, 0.8)
    assert all(torch.equal(one[k], want[k]) for k in want)


def test_erk_random_masks_remove_the_exact_count():
    shapes = {"conv": (8, 4, 3, 3), "fc": (10, 32)}
    masks = erk_random_masks(shapes, 0.9, torch.Generator().manual_seed(0))
    total = sum(math.prod(s) for s in shapes.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.9 * total)
    assert {k: tuple(m.shape) for k, m in masks.items()} == shapes


def _layer(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(6, 4, 3, 3, generator=gen)
    keep = torch.rand(weight.shape, generator=gen) > 0.7
    weight[~keep] = 0.0
    return weight, keep, gen


def test_set_keeps_the_count_drops_the_smallest_and_regrows_at_zero():
    weight, keep, gen = _layer()
    before, active = weight.clone(), int(keep.sum())
    new = set_update_(weight, keep, 0.3, gen)
    k = round(0.3 * active)
    assert int(new.sum()) == active
    dropped = keep & ~new
    assert int(dropped.sum()) == k
    survivors = before[keep & new].abs()
    assert float(before[dropped].abs().max()) <= float(survivors.min())  # the smallest magnitudes went
    assert bool((weight[~new] == 0).all()) and bool((weight[new & ~keep] == 0).all())  # regrown at zero
    assert torch.equal(weight[keep & new], before[keep & new])


def test_rigl_regrows_the_largest_gradients_among_the_pruned():
    weight, keep, _ = _layer(1)
    grad = torch.randn(weight.shape, generator=torch.Generator().manual_seed(9))
    active = int(keep.sum())
    new = rigl_update_(weight, keep, grad, 0.25)
    k = round(0.25 * active)
    grown = new & ~keep
    assert int(new.sum()) == active and int(grown.sum()) == k
    pruned_grads = grad[~keep].abs()
    assert float(grad[grown].abs().min()) >= float(pruned_grads.sort(descending=True).values[k - 1])
    assert bool((weight[grown] == 0).all())


def test_rigl_fraction_decays_by_the_cosine():
    assert cosine_fraction(0, 100, 0.3) == pytest.approx(0.3)
    assert cosine_fraction(50, 100, 0.3) == pytest.approx(0.15)
    assert cosine_fraction(100, 100, 0.3) == 0.0


def test_the_slimming_penalty_is_lambda_times_the_summed_scales():
    model = seeded(TinyResNet, 4)
    by_hand = sum(m.weight.detach().abs().sum() for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert float(slimming_penalty(model, 1e-4).detach()) == pytest.approx(1e-4 * float(by_hand), rel=1e-6)
    assert float(slimming_penalty(seeded(TinyCNN, 0), 1e-4)) == 0.0  # no BatchNorm: nothing to penalise


def test_the_distillation_loss_is_its_formula():
    gen = torch.Generator().manual_seed(5)
    student, teacher = torch.randn(8, 3, generator=gen), torch.randn(8, 3, generator=gen)
    labels = torch.randint(0, 3, (8,), generator=gen)
    t, alpha = 4.0, 0.7
    p = torch.softmax(teacher / t, 1)
    kl = (p * (torch.log(p) - torch.log_softmax(student / t, 1))).sum(1).mean()
    ce = -torch.log_softmax(student, 1)[torch.arange(8), labels].mean()
    want = alpha * t * t * kl + (1 - alpha) * ce
    assert float(distillation_loss(student, teacher, labels, t, alpha)) == pytest.approx(float(want), rel=1e-5)
