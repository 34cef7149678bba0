"""The CLI as a user runs it: JSON fields, one-line errors, exit codes."""

import json
import subprocess
import sys

import pytest
import torch

from prunekit.cli import main


def run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_prune_json_fields(capsys):
    code, out, _ = run(
        ["prune", "fmnist-cnn", "--sparsity", "0.5", "--scope", "local", "--eval", "--eval-limit", "500", "--json"],
        capsys,
    )
    assert code == 0
    d = json.loads(out)
    for key in (
        "layers",
        "total_params",
        "total_macs",
        "nonzero_params",
        "compression_ratio",
        "theoretical_speedup",
        "collapsed_layers",
        "collapse",
        "effective_sparsity",
        "accuracy",
    ):
        assert key in d
    assert {"name", "type", "params", "macs", "sparsity"} <= set(d["layers"][0])
    assert all(abs(row["sparsity"] - 0.5) < 0.01 for row in d["layers"])
    assert 0 <= d["accuracy"]["pruned"] <= d["accuracy"]["dense"] <= 1


def test_sparsity_zero_is_dense(capsys):
    code, out, _ = run(["prune", "fmnist-cnn", "--sparsity", "0", "--json"], capsys)
    d = json.loads(out)
    assert code == 0 and d["nonzero_params"] == d["total_params"] and d["compression_ratio"] == 1.0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["prune", "fmnist-cnn", "--sparsity", "1.2"], "'1.2'"),
        (["prune", "fmnist-cnn", "--sparsity", "abc"], "'abc'"),
        (["prune", "fmnist-cnn", "--sparsity", "0.5", "--scope", "sideways"], "'sideways'"),
        (["prune", "nosuchnet", "--sparsity", "0.5"], "fmnist-cnn"),
        (["prune", "fmnist-cnn", "--sparsity", "0.5", "--criterion", "l1"], "'unstructured'"),
    ],
)
def test_bad_arguments_exit_nonzero_with_one_line(args, needle, capsys):
    with pytest.raises(SystemExit) as info:
        code = main(args)
        raise SystemExit(code)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and needle in err and "\n" not in err


def test_untrained_model_refuses_accuracy(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    code, _, err = run(["prune", "mobilenet_v2", "--sparsity", "0.5", "--eval"], capsys)
    assert code == 2 and "untrained" in err


def test_profile_torchvision_untrained_structure(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    code, out, _ = run(["profile", "resnet18", "--json"], capsys)
    d = json.loads(out)
    assert code == 0 and d["total_macs"] == 1_814_073_344 and d["pretrained"] is False


def test_sweep_and_sensitivity(capsys):
    code, out, _ = run(["sweep", "fmnist-cnn", "--sparsities", "0.5,0.95", "--eval-limit", "300", "--json"], capsys)
    d = json.loads(out)
    assert code == 0 and len(d["results"]) == 2 and 0.9 < d["collapse_point"] < 1
    code, out, _ = run(["sensitivity", "fmnist-cnn", "--sparsities", "0.9", "--eval-limit", "300", "--json"], capsys)
    rows = json.loads(out)["results"]
    assert code == 0 and [r["layer"] for r in rows] == ["features.0", "features.3", "classifier.1", "classifier.3"]


def test_module_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "prunekit", "prune", "fmnist-cnn", "--sparsity", "7"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def test_text_summary_marks_estimates(capsys):
    code, out, _ = run(["prune", "fmnist-cnn", "--sparsity", "0.5", "--eval", "--eval-limit", "300"], capsys)
    assert code == 0 and "estimate from 300 images" in out.splitlines()[-1]


def test_app_hands_streamlit_its_options_and_trusted_mode_to_the_server(monkeypatch):
    from prunekit.app import entry
    from prunekit.models.checkpoints import TRUSTED_ENV, trusted_mode

    got = []
    monkeypatch.setattr(entry, "run", lambda args: got.append((list(args), trusted_mode())) or 0)
    monkeypatch.delenv(TRUSTED_ENV, raising=False)
    assert main(["app", "--server.port", "8502"]) == 0
    monkeypatch.setenv(TRUSTED_ENV, "")  # restored after the test
    assert main(["app", "--trusted", "--server.address", "127.0.0.1"]) == 0
    (first, first_trusted), (second, second_trusted) = got
    assert first[-2:] == ["--server.port", "8502"] and not first_trusted
    assert second[-2:] == ["--server.address", "127.0.0.1"] and second_trusted
    assert first[:4] == ["--server.headless", "true", "--browser.gatherUsageStats", "false"]


def test_options_streamlit_would_take_are_refused_by_every_other_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["list", "--server.port", "8502"])
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: unrecognized arguments: --server.port 8502\n"


MYNETS = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        y = torch.tanh(self.stem(x))
        y = y + nn.functional.elu(self.grouped(y))
        return self.head(y.mean((2, 3)))


def build():
    return Net()
"""


def _own_model_files(tmp_path):
    """mynets.py, its weights as safetensors and a 3-class ImageFolder of 12x12 PNGs, in ``tmp_path``."""
    import importlib.util

    from PIL import Image
    from safetensors.torch import save_file

    (tmp_path / "mynets.py").write_text(MYNETS)
    spec = importlib.util.spec_from_file_location("_mynets_here", tmp_path / "mynets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.build().eval()
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    gen = torch.Generator().manual_seed(1)
    for c in ("ant", "bee", "cat"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(8):
            Image.fromarray((torch.rand(12, 12, 3, generator=gen) * 255).to(torch.uint8).numpy()).save(
                tmp_path / "data" / c / f"{i}.png"
            )
    return model


def _folder_by_hand(root, mean, std):
    """The ImageFolder read independently: sorted class folders, sorted files, pixels / 255, normalised."""
    import numpy as np
    from PIL import Image

    images, labels = [], []
    for label, cls in enumerate(sorted(p.name for p in root.iterdir())):
        for f in sorted((root / cls).iterdir()):
            x = torch.from_numpy(np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
            images.append((x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])
            labels.append(label)
    return torch.stack(images), torch.tensor(labels)


def test_your_own_model_by_import_path_equals_torch_prune_on_your_folder(tmp_path, monkeypatch, capsys):
    import copy

    from torch.nn.utils import prune

    model = _own_model_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    args = ["prune", "--model-def", "mynets:build", "--weights", "w.safetensors", "--input-shape", "3,12,12"]
    args += ["--eval-folder", "data", "--input-mean", "0.5,0.4,0.3", "--input-std", "0.2,0.25,0.3"]
    assert main([*args, "--sparsity", "0.6", "--eval", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)

    ref = copy.deepcopy(model)
    layers = [(ref.stem, "weight"), (ref.grouped, "weight"), (ref.head, "weight")]
    prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=0.6)
    want = {
        name: float((m.weight == 0).float().mean())
        for name, m in (("stem", ref.stem), ("grouped", ref.grouped), ("head", ref.head))
    }
    assert {row["name"]: row["sparsity"] for row in out["layers"]} == pytest.approx(want)
    images, labels = _folder_by_hand(tmp_path / "data", mean, std)
    with torch.no_grad():
        dense = float((model(images).argmax(1) == labels).float().mean())
        pruned = float((ref(images).argmax(1) == labels).float().mean())
    assert (out["accuracy"]["dense"], out["accuracy"]["pruned"], out["accuracy"]["images"]) == pytest.approx(
        (dense, pruned, 24)
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["prune", "--sparsity", "0.5"], "name a MODEL or give --model-def"),
        (["prune", "fmnist-cnn", "--weights", "w.pt", "--sparsity", "0.5"], "--weights go with --model-def"),
        (["prune", "fmnist-cnn", "--model-def", "mynets:build", "--sparsity", "0.5"], "not both"),
        (["profile", "--model-def", "mynets:build", "--eval-folder", "data"], "needs --input-shape C,H,W"),
        (
            ["profile", "--model-def", "nosuch:build", "--input-shape", "3,12,12", "--eval-folder", "data"],
            "cannot import 'nosuch:build'",
        ),
        (
            ["profile", "--model-def", "mynets", "--input-shape", "3,12,12", "--eval-folder", "data"],
            "is 'module:function'",
        ),
        (
            ["profile", "--model-def", "mynets:build", "--input-shape", "3,12", "--eval-folder", "data"],
            "C,H,W with positive integers",
        ),
        (
            [
                "profile",
                "--model-def",
                "mynets:build",
                "--input-shape",
                "3,12,12",
                "--eval-folder",
                "data",
                "--weights",
                "no.pt",
            ],
            "'no.pt' does not exist",
        ),
    ],
)
def test_your_own_model_refuses_bad_arguments_in_one_line(args, needle, tmp_path, monkeypatch, capsys):
    _own_model_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1, err


def test_app_refuses_an_eval_folder_that_is_not_a_directory(tmp_path, capsys):
    assert main(["app", "--eval-folder", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"error: --eval-folder {str(tmp_path / 'nope')!r} is not a directory\n"


def test_app_hands_its_models_and_memory_budget_to_the_server_and_refuses_bad_ones(monkeypatch, capsys):
    from prunekit.app import entry
    from prunekit.app.server_state import MODELS_ENV, offered_models
    from prunekit.models import zoo
    from prunekit.service.memory import GB, MEMORY_ENV, budget_bytes

    got = []
    monkeypatch.setattr(entry, "run", lambda args: got.append((offered_models(), budget_bytes())) or 0)
    monkeypatch.setenv(MODELS_ENV, "")  # restored after the test, as the budget's
    monkeypatch.setenv(MEMORY_ENV, "")
    assert main(["app", "--models", "fmnist-*,resnet18", "--memory-gb", "6.5"]) == 0
    assert got == [([*zoo.BUNDLED, "resnet18"], int(6.5 * GB))]
    for bad, needle in [
        (["--models", "fmnist-*,resnet99"], "model pattern 'resnet99' matches no model"),
        (["--memory-gb", "-1"], "PRUNEKIT_MEMORY_GB must be a positive number of gigabytes, got '-1.0'"),
    ]:
        assert main(["app", *bad]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, err
    assert len(got) == 1  # neither started a server


def test_round_to_keeps_channel_counts_to_multiples(tmp_path, capsys):
    from safetensors.torch import load_file

    args = ["export", "fmnist-cnn", "--sparsity", "0.5", "--out", str(tmp_path)]
    assert main([*args, "--round-to", "8"]) == 0
    weights = load_file(tmp_path / "model.safetensors")
    widths = {k: v.shape[0] for k, v in weights.items() if k.endswith("weight") and v.dim() == 4}
    assert widths and all(w % 8 == 0 for w in widths.values()), widths
    assert json.loads((tmp_path / "ratios.json").read_text())["round_to"] == 8
    assert main(["prune", "fmnist-cnn", "--sparsity", "0.5", "--round-to", "8"]) == 2
    assert "needs the filter structure" in capsys.readouterr().err
