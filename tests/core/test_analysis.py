"""Filter views and agreement against direct recomputation."""

import pytest
import torch

from prunekit.core import analysis
from prunekit.core.lab import Lab
from prunekit.core.spec import PruneConfig
from tests.helpers import TinyResNet, tiny_loaded


@pytest.fixture(scope="module")
def lab():
    return Lab(tiny_loaded(TinyResNet))


def test_filter_view_scores_are_in_channel_order(lab):
    view = analysis.filter_view(lab.table("l2", "filter"), PruneConfig(0.5, "local"), lab.first_last)
    model = lab.loaded.model
    i = next(k for k, c in enumerate(lab.clusters) if "conv1" in {m.layer for m in c.producers()})
    assert view.layers[i] == lab.clusters[i].root
    # conv1's cluster holds conv1 (+bn1, dw, bn_dw): l2 scores only conv-like producers, conv1 and dw
    direct = model.conv1.weight.flatten(1).norm(dim=1) + model.dw.weight.flatten(1).norm(dim=1)
    assert torch.allclose(torch.tensor(view.scores[i]), direct, rtol=1e-5)
    gone = torch.tensor(view.removed[i])
    assert int(gone.sum()) == 4 and direct[gone].max() <= direct[~gone].min()


def test_spearman_and_jaccard_reference_values():
    assert analysis.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert analysis.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert analysis.spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert analysis.jaccard({1, 2}, {2, 3}) == pytest.approx(1 / 3)


def test_l1_and_l2_agree_more_than_random(lab):
    tables = {n: lab.table(n, "filter") for n in ("l1", "l2", "random")}
    overlap, corr = analysis.agreement(tables, PruneConfig(0.5, "local"), lab.first_last)
    assert corr[0][0] == pytest.approx(1.0) and overlap[0][0] == 1.0
    assert corr[0][1] > 0.6 and corr[0][1] > corr[0][2]
