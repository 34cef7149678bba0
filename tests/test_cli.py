"""The CLI as a user runs it: JSON fields, one-line errors, exit codes."""

import json
import subprocess
import sys

import pytest

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
    from prunekit.app import serve
    from prunekit.models.checkpoints import TRUSTED_ENV, trusted_mode

    got = []
    monkeypatch.setattr(serve, "main", lambda args: got.append((list(args), trusted_mode())) or 0)
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
