"""The path probe's linearised twin on seeded tiny models, checked against the real network's behaviour."""

import pytest
import torch
from torch import nn

from prunekit.core.connectivity import PathProbe, connectivity
from prunekit.errors import ProbeUnsupportedError

SHAPE = (3, 12, 12)


class Gated(nn.Module):
    """Conv, BN, ReLU6, a squeeze-excitation gate (hard-sigmoid), max-pool, LayerNorm'd head. No biases
    and zero BN means and shifts, so a weight off every input path cannot change the output at all."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.se1 = nn.Conv2d(8, 2, 1, bias=False)
        self.se2 = nn.Conv2d(2, 8, 1, bias=False)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1, bias=False)
        self.norm = nn.LayerNorm(4 * 6 * 6, bias=False)
        self.fc = nn.Linear(4 * 6 * 6, 5, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu6(self.bn(self.conv1(x)))
        gate = nn.functional.hardsigmoid(self.se2(torch.relu(self.se1(x.mean((2, 3), keepdim=True)))))
        x = nn.functional.max_pool2d(x * gate, 2)
        x = nn.functional.gelu(self.conv2(x))
        return self.fc(self.norm(torch.flatten(x, 1)))


def _model(seed: int = 0, gain: float = 1.0) -> nn.Module:
    torch.manual_seed(seed)
    model = Gated().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(gain)
        model.bn.bias.zero_()
        model.bn.running_mean.zero_()  # a BN shift would be a constant: not a path, yet it moves outputs
        model.bn.running_var.uniform_(0.5, 2)
    return model


def _mask_(model: nn.Module, fraction: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_((torch.rand(m.weight.shape, generator=gen) > fraction).float())


def test_dense_saturating_model_is_fully_connected():
    """Large weights saturate ReLU6 and the hard-sigmoid (zero gradient): the twin must not care."""
    model = _model(gain=50.0)
    x = torch.ones(1, *SHAPE)
    with torch.no_grad():
        assert (nn.functional.relu6(model.bn(model.conv1(x))) == 6).sum() >= 100  # really saturated
    conn = connectivity(PathProbe(model, SHAPE), model)
    assert not conn.collapsed and conn.effective_sparsity == 0.0 and conn.disconnected_layers == []


@pytest.mark.parametrize("seed", range(6))
def test_disconnected_weights_cannot_change_the_output(seed):
    """Independent check: nudging a weight the probe calls disconnected leaves every output unchanged,
    while nudging the connected weights of the first layer changes it."""
    model = _model(seed)
    _mask_(model, 0.9, seed)
    probe = PathProbe(model, SHAPE)
    _, scores = probe.trace()
    xs = torch.randn(16, *SHAPE, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        reference = model(xs)
        found = 0
        for name, score in scores.items():
            weight = dict(model.named_modules())[name].weight
            for index in ((score == 0) & (weight != 0)).nonzero()[:5].tolist():
                found += 1
                old = float(weight[tuple(index)])
                weight[tuple(index)] = old + 3.0
                assert torch.equal(model(xs), reference), (name, index)
                weight[tuple(index)] = old
    assert found > 0  # this mask does disconnect some non-zero weights
    weights = [w for w in (dict(model.named_modules())[n].weight for n in scores)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert connectivity(probe, model).effective_sparsity > zeros


def test_a_fully_pruned_gate_is_not_collapse_but_a_fully_pruned_conv_is():
    model = _model()
    with torch.no_grad():
        model.se1.weight.zero_()  # the gate stays open at hardsigmoid(0) = 0.5: the main path still flows
    conn = connectivity(PathProbe(model, SHAPE), model)
    assert not conn.collapsed
    assert conn.effective_layer_sparsity["conv1"] == 0.0 and conn.effective_layer_sparsity["se2"] == 1.0
    with torch.no_grad():
        model.conv2.weight.zero_()
    conn = connectivity(PathProbe(model, SHAPE), model)
    assert conn.collapsed and conn.effective_sparsity == 1.0


class Sorted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.fc(x.flatten(1)), dim=1)


def test_an_operation_the_twin_cannot_represent_is_declared():
    with pytest.raises(ProbeUnsupportedError, match="collapse detection is not available for this model") as info:
        PathProbe(Sorted().eval(), (1, 2, 2))
    assert info.value.operation.endswith("softmax")


def test_the_input_model_is_not_changed():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    connectivity(PathProbe(model, SHAPE), model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --- float32 with an underflow guard: float64's answers at half the memory ---------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.9, 0.97])
def test_the_float32_twin_gives_the_float64_answer(seed, fraction):
    model = _model(seed)
    _mask_(model, fraction, seed)
    fast = PathProbe(model, SHAPE, validate=False)
    exact = PathProbe(model, SHAPE, validate=False, dtype=torch.float64)
    assert connectivity(fast, model) == connectivity(exact, model)
    assert fast.fallbacks == 0 and next(fast.net.parameters()).dtype == torch.float32
    _, s32 = fast.trace()
    _, s64 = exact.trace()
    assert list(s32) == list(s64) and all(torch.equal(s32[n] > 0, s64[n] > 0) for n in s64)


class Chain(nn.Module):
    """Two paths; the second runs through two weights of 1e-30: its mass, 1e-60, is below float32's range."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 2, bias=False)
        self.b = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.a.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1e-30]]))
            self.b.weight.copy_(torch.tensor([[1.0, 1e-30]]))

    def forward(self, x):
        return self.b(self.a(x.flatten(1)))


def test_values_near_float32_underflow_are_traced_again_in_float64(monkeypatch):
    model = Chain().eval()
    guarded = PathProbe(model, (2,))
    conn = connectivity(guarded, model)
    assert guarded.fallbacks >= 1
    assert conn == connectivity(PathProbe(model, (2,), dtype=torch.float64), model)
    assert conn.effective_layer_sparsity == {"a": 0.5, "b": 0.0}  # only a's two exact zeros
    # without the guard, float32 would call the live 1e-30 weight of 'b' cut: the guard is what saves it
    bare = PathProbe(model, (2,), validate=False)
    monkeypatch.setattr(bare, "_guard", lambda: None)
    assert connectivity(bare, model).effective_layer_sparsity["b"] == 0.5
