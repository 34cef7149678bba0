"""The Ray backend on a local Ray head (2 CPUs, like CI): the same results as local workers, a worker
killed mid-sweep, a cluster that disappears, a bad address, and no Ray at all without an address."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prunekit.cli import main
from prunekit.core.evaluate import Accuracy
from prunekit.core.lab import Lab
from prunekit.core.loaded import ModelSpec
from prunekit.core.oracle import Oracle
from prunekit.core.spec import Allocation, PruneSpec
from prunekit.models.zoo import load
from prunekit.service.fanout import Backend, oracle_jobs, run_jobs, sensitivity_jobs, sweep_jobs
from prunekit.service.jobs import EvalJob, OracleJob
from prunekit.service.raypool import RayPool
from prunekit.service.store import ResultStore
from tests.helpers import ROOT, page
from tests.service.lost_cluster import head_pids

pytestmark = pytest.mark.xdist_group("ray")  # one Ray instance at a time, on one xdist worker
RAY = Path(sys.executable).parent / "ray"
SPEC = ModelSpec("prunekit.models.zoo:load", ("fmnist-cnn",))


def _figures(outcomes: dict) -> dict:
    """What a result says (its timing aside)."""
    return {job: (o.top1, o.top5, o.n, o.total) for job, o in outcomes.items()}


@pytest.fixture(scope="module", autouse=True)
def no_ray_tokens():
    """Ray reads its auth mode once per process: one mode for every head these tests start and join."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        # Ray starts its workers at nice 15: beside the suite's other xdist worker (a full core at nice 0) the
        # first two tasks' imports took 84 s instead of 5 (the image-folder test: 135 s in CI, 16 s alone)
        mp.setenv("RAY_worker_niceness", "0")
        yield


@pytest.fixture(scope="module", autouse=True)
def one_instance(no_ray_tokens):
    """One private Ray instance for the module, as a server keeps one: every pool the tests make joins it and
    leaves it running (RayPool.close stops only an instance it started), so its workers stay warm between
    tests (each test starting its own cost 3-4 s, and as much again for its workers' first imports)."""
    import ray

    from prunekit.service.raypool import connect

    connect("local", cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def lab():
    return Lab(load("fmnist-cnn"))


def test_ray_sweep_sensitivity_and_oracle_equal_local_workers(lab, tmp_path):
    template = EvalJob("fmnist-cnn", PruneSpec("magnitude", "unstructured", allocation=Allocation("global")))
    jobs = sweep_jobs(template, [0.3, 0.6, 0.9]) + sensitivity_jobs(lab, template.with_subset(500), [0.5, 0.9])[1:]
    jobs += oracle_jobs(lab, "fmnist-cnn", 60)  # the oracle's slices travel to Ray as any job does
    local = run_jobs(jobs, SPEC, lab.fingerprint, Backend(workers=2, store=ResultStore(tmp_path / "local.sqlite3")))
    seen = []
    on_ray = run_jobs(
        jobs,
        SPEC,
        lab.fingerprint,
        Backend(ray="local", store=ResultStore(tmp_path / "ray.sqlite3")),
        lambda done, total: seen.append((done, total)),
    )
    slices = [job for job in jobs if isinstance(job, OracleJob)]
    assert all(isinstance(on_ray[job], Oracle) for job in slices)
    ray_rows = Oracle.merged([on_ray[job] for job in slices]).flat()
    local_rows = Oracle.merged([local[job] for job in slices]).flat()
    assert [v for _, _, v in ray_rows] == pytest.approx([v for _, _, v in local_rows], abs=1e-6)
    points = {job: o for job, o in on_ray.items() if job not in slices}
    assert all(isinstance(o, Accuracy) for o in points.values())
    assert _figures(points) == _figures({job: o for job, o in local.items() if job not in slices})
    assert seen[-1] == (len(jobs), len(jobs)) and len(seen) > 2  # the progress bar moved


def test_model_reaches_the_object_store_once(tmp_path, services):
    pool = RayPool("local", cpus=2)
    svc = services(0, remote=pool)
    svc.register("fmnist-cnn", SPEC)
    jobs = [EvalJob("fmnist-cnn", PruneSpec("magnitude", sparsity=s / 10), subset=300) for s in range(8)]
    assert svc.wait(jobs, timeout=120)
    assert pool.puts == 1  # eight tasks over two slots, one payload
    assert svc.status().backend == "a private Ray instance on this machine (2 CPUs)"


def _ray_task_pids() -> list[int]:
    """Ray worker processes running one of our tasks (Ray titles them after the task)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if cmdline.read_bytes().startswith(b"ray::run_remote"):
                pids.append(int(cmdline.parent.name))
    return pids


def test_a_worker_killed_mid_sweep_loses_no_point(tmp_path, services):
    svc = services(0, remote=RayPool("local", cpus=2), store="r.sqlite3")
    svc.register("fmnist-resnet", ModelSpec("prunekit.models.zoo:load", ("fmnist-resnet",)))
    jobs = [EvalJob("fmnist-resnet", PruneSpec("magnitude", sparsity=s / 20)) for s in range(3)]
    svc.request([(job, 1) for job in jobs])
    deadline = time.monotonic() + 60
    while not (svc.status().done >= 1 and _ray_task_pids()) and time.monotonic() < deadline:
        time.sleep(0.05)
    victims = _ray_task_pids()
    assert victims, "no Ray task was running to kill"
    os.kill(victims[0], signal.SIGKILL)
    assert svc.wait(jobs, timeout=240)
    outcomes = {job: svc.lookup(job) for job in jobs}
    assert all(isinstance(o, Accuracy) and o.n == 10_000 for o in outcomes.values()), outcomes
    assert victims[0] not in _ray_task_pids()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_cluster_that_disappears_falls_back_to_local_workers():
    """In its own process: Ray joins one cluster per process, and after a lost one this process would
    not join another (the app does not either: it stays on local workers until restarted)."""
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    start = [str(RAY), "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false"]
    subprocess.run(start, check=True, capture_output=True, env=env, timeout=120)
    try:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("lost_cluster.py")), str(port)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        for pid in head_pids(port):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["before"] == {"notice": None, "backend": f"Ray at 127.0.0.1:{port} (1 CPUs)"}
    assert got["after"] == {
        "notice": f"the Ray cluster at '127.0.0.1:{port}' stopped answering; evaluations now run on "
        f"{os.cpu_count()} local worker processes",
        "backend": "local worker processes",
    }
    assert got["measured"] == [True] * 4


def test_cli_ray_sweep_prints_what_local_workers_print(tmp_path, monkeypatch, capsys):
    args = ["sweep", "fmnist-cnn", "--sparsities", "0.5,0.9", "--eval-limit", "400", "--json"]
    outputs = []
    for i, where in enumerate((["--workers", "2"], ["--ray", "local"])):
        monkeypatch.setenv("PRUNEKIT_CACHE_DIR", str(tmp_path / str(i)))
        assert main(args + where) == 0
        captured = capsys.readouterr()
        assert "| 0/3 [" in captured.err and "| 3/3 [" in captured.err  # tqdm's bar, in points
        outputs.append(json.loads(captured.out))
    assert outputs[0] == outputs[1]


def test_ray_workers_read_an_image_folder_in_shards(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from prunekit.models.datasets import fashion_mnist

    test = fashion_mnist("test")
    raw = (test.images[:150, 0] * 0.3530 + 0.2860).mul(255).round().clamp(0, 255).byte()
    for i in range(150):
        folder = tmp_path / "images" / f"{int(test.labels[i]):02d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(raw[i].numpy()).save(folder / f"{i:04d}.png")
    args = ["sensitivity", "fmnist-cnn", "--sparsities", "0.9", "--eval-folder", str(tmp_path / "images")]
    outputs = []
    for i, where in enumerate((["--workers", "2"], ["--ray", "local"])):
        monkeypatch.setenv("PRUNEKIT_CACHE_DIR", str(tmp_path / str(i)))
        assert main([*args, "--shard-size", "40", *where, "--json"]) == 0
        captured = capsys.readouterr()
        assert "| 20/20 [" in captured.err  # 5 jobs x 4 shards of the 150 images
        outputs.append(json.loads(captured.out))
    assert outputs[0] == outputs[1] and outputs[0]["results"][0]["images"] == 150


def test_an_unreachable_cluster_is_one_clear_error(capsys):
    port = _free_port()
    assert main(["sensitivity", "fmnist-cnn", "--ray", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: no Ray cluster answers at '127.0.0.1:{port}'\n"


def test_without_an_address_nothing_of_ray_is_imported(tmp_path):
    script = (
        "import sys\n"
        "from prunekit.app import server_state\n"
        "from prunekit.cli import main\n"
        "assert main(['sweep', 'fmnist-cnn', '--sparsities', '0.5', '--eval-limit', '200', '--workers', '1']) == 0\n"
        "server_state.service().close()\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    env = {**os.environ, "PRUNEKIT_CACHE_DIR": str(tmp_path)}
    env.pop("PRUNEKIT_RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


@pytest.fixture
def app_on(monkeypatch, tmp_path):
    """The app's evaluation service made afresh for ``PRUNEKIT_RAY_ADDRESS=address`` with an empty result
    store (nothing measured by other tests), and dropped after."""
    from prunekit.app import server_state

    def start(address: str):
        monkeypatch.setenv("PRUNEKIT_RAY_ADDRESS", address)
        monkeypatch.setenv("PRUNEKIT_CACHE_DIR", str(tmp_path))
        server_state.service.clear()
        return server_state

    yield start
    server_state.service().close()
    server_state.service.clear()


def _sensitivity_scan(at):
    at.multiselect[0].set_value([0.9]).run()
    at.button[0].click().run()
    deadline = time.time() + 180
    progress = []
    while not any("Most sensitive" in m.value for m in at.markdown):
        assert time.time() < deadline and not at.exception, at.exception
        progress += [p.proto.text for p in at.get("progress")]
        time.sleep(0.3)
        at.run()
    return progress


def test_the_app_runs_the_sensitivity_scan_on_ray(app_on):
    from streamlit.testing.v1 import AppTest

    server_state = app_on("local")
    at = AppTest.from_file(str(ROOT / "prunekit" / "app" / "main.py"), default_timeout=240).run()
    at.switch_page(page("sensitivity")).run()
    progress = _sensitivity_scan(at)
    assert not at.error, [e.value for e in at.error]
    assert server_state.service().status().backend.startswith("a private Ray instance")
    assert server_state.service().remote.puts == 1
    assert any("private Ray instance" in text for text in progress), progress


def test_the_app_says_once_that_the_cluster_is_unreachable_and_works_locally(app_on):
    from streamlit.testing.v1 import AppTest

    port = _free_port()
    app_on(f"127.0.0.1:{port}")
    at = AppTest.from_file(str(ROOT / "prunekit" / "app" / "main.py"), default_timeout=240).run()
    at.switch_page(page("sensitivity")).run()
    assert [e.value for e in at.error] == [
        f"no Ray cluster answers at '127.0.0.1:{port}'; evaluations run on local worker processes instead"
    ]
    _sensitivity_scan(at)
    assert "Most sensitive" in next(m.value for m in at.markdown if "Most sensitive" in m.value)


def test_a_sweep_through_sparsity_zero_counts_the_dense_point_once(tmp_path, services):
    from prunekit.service.fanout import collect

    svc = services(1)
    svc.register("fmnist-cnn", SPEC)
    jobs = sweep_jobs(EvalJob("fmnist-cnn", PruneSpec("magnitude"), subset=200), [0.0, 0.5])  # 0.0 is the dense job
    seen = []
    got = collect(svc, jobs, lambda done, total: seen.append((done, total)))
    assert seen[-1] == (2, 2) and got[jobs[0]] == got[jobs[1]]


def test_training_methods_run_on_ray_with_progress_a_stop_and_their_weights_written_here(services):
    from safetensors.torch import load_file

    from prunekit.core.evaluate import accuracy
    from prunekit.deploy.training import Budget, MethodResult
    from prunekit.service.jobs import MethodJob
    from prunekit.service.runner import weights_folder
    from tests.helpers import wait_for

    svc = services(0, remote=RayPool("local", cpus=2))
    svc.register("fmnist-cnn", SPEC, fingerprint="cnn")
    long = MethodJob.of("fmnist-cnn", "ft", 0.5, Budget(epochs=20, train_images=1024, batch_size=64))
    short = MethodJob.of("fmnist-cnn", "snip", 0.9, Budget(epochs=1.0, train_images=256, batch_size=64))
    svc.request([(long, 1), (short, 1)], "s:ray")
    deadline = time.monotonic() + 120
    while (svc.progress(long) is None or svc.progress(long).steps < 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    seen = svc.progress(long)
    assert seen is not None and seen.total_steps == 20 * -(-seen.train_images // 64)  # progress came from the node
    svc.stop(long)
    got = wait_for(svc, [long, short], session="s:ray")
    assert isinstance(got[long], MethodResult) and got[long].stopped and 3 <= got[long].steps < got[long].total_steps
    done = got[short]
    assert isinstance(done, MethodResult) and not done.stopped and done.model is None
    assert done.folder == str(weights_folder(short))  # written by the driver, not on the node's disk
    model = load("fmnist-cnn").model
    model.load_state_dict(load_file(Path(done.folder) / "model.safetensors"))
    assert accuracy(model, load("fmnist-cnn").eval_data()).top1 == done.accuracy.top1


def test_a_key_sent_again_with_another_model_is_loaded_again_by_warm_workers(services):
    """Ray's worker processes outlive a pool: the same key from a later pool (another driver, or the same one
    after a restart) with other weights must be answered with them, not with the model a worker kept."""
    jobs = [EvalJob("m", PruneSpec("magnitude", sparsity=s / 10), subset=200) for s in range(6)]
    for name in ("fmnist-cnn", "fmnist-resnet"):  # both Ray workers hold the first before the second comes
        spec = ModelSpec("prunekit.models.zoo:load", (name,))
        local = services(1, store=f"local-{name}.sqlite3")  # own stores: each figure computed, none read back
        remote = services(0, remote=RayPool("local", cpus=2), store=f"ray-{name}.sqlite3")
        for svc in (local, remote):
            svc.register("m", spec, fingerprint=name)
            assert svc.wait(jobs, timeout=240)
        assert _figures({j: remote.lookup(j) for j in jobs}) == _figures({j: local.lookup(j) for j in jobs}), name


def test_a_pool_leaves_running_an_instance_it_did_not_start():
    import ray

    pool = RayPool("local", cpus=2)  # the module's instance is running: the pool joins it
    pool.close()
    assert ray.is_initialized() and ray.cluster_resources().get("CPU") == 2
