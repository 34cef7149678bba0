"""End-to-end on the real bundled models: every criterion, both structures, both scopes."""

import pytest
import torch

from prunekit.core.importance import CRITERIA
from prunekit.core.lab import Lab
from prunekit.core.spec import PruneConfig, PruneSpec
from prunekit.errors import InvalidArgumentError
from prunekit.models import zoo

BUNDLED = [n for n in zoo.BUNDLED if (zoo.MODELS_DIR / f"{n}.json").is_file()]
CASES = [(m, c, s) for m in BUNDLED for c, crit in CRITERIA.items() for s in crit.structures]


@pytest.fixture(scope="module")
def labs():
    return {}


def _lab(labs, name):
    if name not in labs:
        labs[name] = Lab(zoo.load(name))
    return labs[name]


@pytest.mark.parametrize(("model", "criterion", "structure"), CASES, ids=["/".join(c) for c in CASES])
def test_every_criterion_runs_on_every_bundled_model(labs, model, criterion, structure):
    lab = _lab(labs, model)
    if criterion == "bn-scale" and not any(isinstance(m, torch.nn.BatchNorm2d) for m in lab.loaded.model.modules()):
        with pytest.raises(InvalidArgumentError, match="BatchNorm"):
            lab.pruner(PruneSpec(criterion, structure))
        return
    before = {k: v.clone() for k, v in lab.loaded.model.state_dict().items()}
    pruner = lab.pruner(PruneSpec(criterion, structure))
    for scope in ("global", "local"):
        result = pruner.prune(PruneConfig(0.5, scope))
        assert result.units_removed > 0 and result.nonzero_params < result.total_params
        assert result.effective_sparsity >= result.achieved_sparsity - 1e-9
    assert all(torch.equal(before[k], v) for k, v in lab.loaded.model.state_dict().items())


def test_pruning_hurts_more_at_higher_sparsity_and_magnitude_beats_random():
    lab = Lab(zoo.load("fmnist-vgg"))
    accs = {}
    for criterion in ("magnitude", "random"):
        pruner = lab.pruner(PruneSpec(criterion, "unstructured"))
        for s in (0.3, 0.8):
            pruner.apply_(PruneConfig(s, "global"))
            accs[criterion, s] = pruner.evaluate(limit=2000).top1
    assert accs["magnitude", 0.3] > accs["magnitude", 0.8] + 0.1
    assert accs["magnitude", 0.3] > accs["random", 0.3] + 0.5  # random cuts large weights too
