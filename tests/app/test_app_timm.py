"""A timm model in every page: structure only when its weights are not cached, and trained with the weights of a
Hugging Face cache the test writes (tests/conftest.py points HF_HUB_CACHE at a throw-away folder, offline)."""

import pytest
import torch

from tests.apptest import PAGES, open_page
from tests.helpers import write_hf_weights

WEIGHTED = "timm/lcnet_050.ra2_in1k"
BARE = "timm/mobilenetv3_small_075.lamb_in1k"


@pytest.fixture(scope="module")
def weighted():
    import timm

    torch.manual_seed(5)
    write_hf_weights(WEIGHTED, timm.create_model(WEIGHTED.removeprefix("timm/"), pretrained=False).state_dict())
    return WEIGHTED


@pytest.mark.parametrize("path", PAGES)
def test_every_page_opens_on_a_timm_model_with_cached_weights(weighted, path):
    at = open_page(path, {"model": weighted, "sparsity": "0.3"})
    assert at.title and not [e for e in at.error if "Untrained" in e.value]
    assert at.sidebar.selectbox(key="w_model").value == weighted


@pytest.mark.parametrize("path", PAGES)
def test_every_page_opens_on_a_timm_model_structure_only(path):
    at = open_page(path, {"model": BARE, "sparsity": "0.3"})
    assert at.title
    if path.endswith("model") or path.endswith("prune"):
        assert any("Untrained" in e.value and "Hugging Face cache" in e.value for e in at.error)
