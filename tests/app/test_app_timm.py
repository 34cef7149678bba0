"""A timm model in every page: structure only when its weights are not cached, and trained with the weights of a
Hugging Face cache the test writes (tests/conftest.py points HF_HUB_CACHE at a throw-away folder, offline)."""

import pytest
import torch

from tests.apptest import PAGES, open_page
from tests.helpers import page, write_hf_weights

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


def test_the_picker_lists_timm_on_request_and_while_a_timm_model_is_open():
    from prunekit.models import timm_zoo, zoo

    timm_names = [n for n in zoo.model_names() if timm_zoo.is_timm(n)]
    at = open_page(page("prune"), {"model": "fmnist-cnn"})
    picker, toggle = at.sidebar.selectbox(key="w_model"), at.sidebar.toggle(key="w_timm")
    assert toggle.label == f"List timm's {len(timm_names):,} models" and not toggle.value
    architectures = at.sidebar.selectbox(key="upload_arch")  # the upload's picker too: the list is sent every rerun
    assert not [o for o in picker.options + architectures.options if o.startswith("timm/")]
    at.sidebar.toggle(key="w_timm").set_value(True).run()
    listed = [o for o in at.sidebar.selectbox(key="w_model").options if o.startswith("timm/")]
    assert len(listed) == len(timm_names)
    assert at.sidebar.selectbox(key="upload_arch").options == zoo.model_names()
    at.sidebar.selectbox(key="w_model").set_value(BARE).run()
    assert at.sidebar.toggle(key="w_timm").value and at.sidebar.toggle(key="w_timm").proto.disabled
    at.sidebar.selectbox(key="w_model").set_value("fmnist-cnn").run()  # leaving timm keeps the list until turned off
    assert at.sidebar.toggle(key="w_timm").value and not at.sidebar.toggle(key="w_timm").proto.disabled
    at.sidebar.toggle(key="w_timm").set_value(False).run()
    assert not [o for o in at.sidebar.selectbox(key="w_model").options if o.startswith("timm/")]
