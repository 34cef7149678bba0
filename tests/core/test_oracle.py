"""The oracle: every channel's loss increase when removed alone, fast path against plain loops."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.core.lab import Lab
from prunekit.core.oracle import oracle, plain_oracle, rank_correlation
from prunekit.errors import StoppedError
from prunekit.models import zoo
from tests.helpers import TinyCNN, TinyResNet, seeded, state_of, tiny_loaded

BUNDLED = [n for n in zoo.BUNDLED if (zoo.MODELS_DIR / f"{n}.json").is_file()]


class TinyBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 5, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(5)
        self.conv2 = nn.Conv2d(5, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


# per model, one cluster (by root) and the tensors its channel j lives in: (parameter, dim) by hand
BY_HAND = {
    TinyCNN: ("conv1", [("conv1.weight", 0), ("conv1.bias", 0), ("conv2.weight", 1)]),
    TinyBN: ("conv1", [("conv1.weight", 0), ("bn1.weight", 0), ("bn1.bias", 0), ("conv2.weight", 1)]),
    TinyResNet: (
        None,  # the residual group: conv2 and the shortcut, their BatchNorms, the head's inputs
        [
            ("conv2.weight", 0),
            ("short.weight", 0),
            ("bn2.weight", 0),
            ("bn2.bias", 0),
            ("bn_s.weight", 0),
            ("bn_s.bias", 0),
            ("fc.weight", 1),
        ],
    ),
}


def _hand_increases(model: nn.Module, params: list[tuple[str, int]], size: int, x, y) -> list[float]:
    """Remove channel j by zeroing its slices by hand, evaluate, subtract: the plainest loop."""
    with torch.no_grad():
        base = float(F.cross_entropy(model(x), y))
        out = []
        for j in range(size):
            pruned = seeded(type(model))
            pruned.load_state_dict(model.state_dict())
            named = dict(pruned.named_parameters())
            for name, dim in params:
                named[name].select(dim, j).zero_()
            out.append(float(F.cross_entropy(pruned(x), y)) - base)
    return out


@pytest.mark.parametrize("cls", [TinyCNN, TinyBN, TinyResNet])
def test_the_oracle_equals_removing_each_channel_by_hand(cls):
    loaded = tiny_loaded(cls, n=96)
    lab, data = Lab(loaded), loaded.eval_data()
    root, params = BY_HAND[cls]
    cluster = next(c for c in lab.clusters if (c.root == root if root else "fc" in c.layers()))
    before = state_of(loaded.model)
    want = _hand_increases(loaded.model, params, cluster.size, data.images, data.labels)
    plain = plain_oracle(loaded.model, [cluster], data.images, data.labels)
    fast = oracle(loaded.model, [cluster], data.images, data.labels, forward_images=64)  # batches of 16, 4 removals
    assert plain.increases[0] == pytest.approx(want, abs=1e-6)
    assert fast.increases[0] == pytest.approx(plain.increases[0], abs=1e-6)
    assert fast.dense_loss == pytest.approx(plain.dense_loss, abs=1e-7)
    assert all(torch.equal(v, state_of(loaded.model)[k]) for k, v in before.items())
    assert not any(m._forward_hooks for m in loaded.model.modules())  # nothing left on the caller's model


def _first(cluster, k: int):
    """The cluster cut to its first ``k`` channels (each channel's indices unchanged)."""
    members = tuple(dataclasses.replace(m, index=m.index[:k]) for m in cluster.members)
    return dataclasses.replace(cluster, size=min(k, cluster.size), members=members)


@pytest.mark.parametrize("name", BUNDLED)
def test_the_fast_path_equals_the_plain_loop_on_every_bundled_model(name):
    lab = Lab(zoo.load(name))
    data = lab.loaded.eval_data()
    x, y = data.images[:48], data.labels[:48]
    clusters = [_first(c, 2) for c in lab.clusters]
    fast = oracle(lab.loaded.model, clusters, x, y, forward_images=64)
    plain = plain_oracle(lab.loaded.model, clusters, x, y)
    assert fast.groups == plain.groups == [c.root for c in lab.clusters]
    for got, want in zip(fast.increases, plain.increases, strict=True):
        assert got == pytest.approx(want, abs=1e-5)
    assert any(v != 0 for row in fast.increases for v in row)


def test_a_stopped_oracle_says_so():
    loaded = tiny_loaded(TinyCNN)
    data = loaded.eval_data()
    with pytest.raises(StoppedError, match="stopped after"):
        oracle(loaded.model, Lab(loaded).clusters, data.images, data.labels, progress=lambda done, total: done < 2)


def _spearman_by_hand(a: list[float], b: list[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((p - ma) * (q - mb) for p, q in zip(ra, rb, strict=True))
    return cov / (sum((p - ma) ** 2 for p in ra) * sum((q - mb) ** 2 for q in rb)) ** 0.5


@pytest.mark.parametrize("seed", range(5))
def test_rank_correlation_equals_an_independent_one_with_ties(seed):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 6, (40,), generator=gen).float().tolist()  # many ties
    b = (torch.tensor(a) + torch.randint(0, 4, (40,), generator=gen)).tolist()
    assert rank_correlation(a, b) == pytest.approx(_spearman_by_hand(a, b), abs=1e-12)
    assert rank_correlation([1.0, 1.0], [1.0, 2.0]) is None and rank_correlation([3.0], [1.0]) is None


def test_the_api_and_the_cli_compare_every_filter_criterion(capsys):
    import prunekit
    from prunekit.cli import main

    report = prunekit.load("fmnist-cnn").oracle(images=60, criteria=["l1", "taylor", "bn-scale"])
    assert [a.criterion for a in report.agreements] == ["l1", "taylor"] and "BatchNorm" in report.skipped["bn-scale"]
    assert report.truth.images == 60 and report.truth.channels == sum(
        c.size for c in prunekit.load("fmnist-cnn").clusters
    )
    for a in report.agreements:
        assert set(a.per_group) == set(report.truth.groups) and -1 <= a.overall <= 1
    assert main(["oracle", "fmnist-cnn", "--images", "60", "--criteria", "l1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["oracle"]["increases"] == report.truth.increases  # the same images, the same numbers
    assert out["criteria"][0]["overall"] == pytest.approx(report.agreements[0].overall)
    assert main(["oracle", "fmnist-cnn", "--criteria", "nope"]) == 2
