"""The same spec on a `ray start --head` cluster: `ray job submit`, `--address`, and
GPU scheduling.

The test starts its own cluster (own temp dir and ports) and stops exactly the processes
that cluster started, found by their temp dir; never `ray stop`, which would stop every
Ray on the machine. The cluster advertises 4 GPUs it does not have: Ray schedules and
assigns them like real ones, and TensorFlow, finding no CUDA device, trains on the CPU.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import REPO, free_port, missing

pytestmark = pytest.mark.slow


def cluster_pids(temp_dir: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if temp_dir in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


@pytest.fixture(scope="module")
def ray_head():
    ray = shutil.which("ray")
    if not ray:
        missing("the `ray` CLI is not installed")
    # Short: Ray's unix sockets live under it and must stay under 108 characters.
    temp_dir = tempfile.mkdtemp(prefix="tr-", dir="/tmp")
    gcs, dashboard, client = free_port(), free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    started = subprocess.run(
        # Fake GPUs and the Kubernetes head's driver resource, for the scheduling test.
        [ray, "start", "--head", "--num-cpus", "4", "--num-gpus", "4", "--resources", '{"trial_driver": 100}',
         "--temp-dir", temp_dir, "--port", str(gcs),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
         "--ray-client-server-port", str(client), "--disable-usage-stats"],
        capture_output=True, text=True, env=env, timeout=180,
    )
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        yield {"gcs": f"127.0.0.1:{gcs}", "dashboard": f"http://127.0.0.1:{dashboard}", "env": env}
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in cluster_pids(temp_dir):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + 15
            while cluster_pids(temp_dir) and time.time() < deadline:
                time.sleep(0.2)
        shutil.rmtree(temp_dir, ignore_errors=True)


QUICK = ["--config", "quick", "--set", "search.num_samples=2", "--set", "asha.max_t=1"]


def check_summary(storage: Path, name: str) -> None:
    summary = json.loads((storage / name / "summary.json").read_text())
    assert len(summary["trials"]) == 2 and summary["best"]["test_accuracy"] > 0.3


def test_ray_job_submit(ray_head, tmp_path, unique_name):
    deadline = time.time() + 90
    while True:
        proc = subprocess.run(
            ["ray", "job", "submit", "--address", ray_head["dashboard"], "--working-dir", str(REPO), "--",
             "python", "-m", "tuner", "tune", *QUICK, "--storage", str(tmp_path), "--name", unique_name],
            capture_output=True, text=True, env=ray_head["env"], timeout=900,
        )
        # Right after `ray start` the head's job agent may not be up yet.
        if "No available agent to submit job" not in proc.stderr or time.time() > deadline:
            break
        time.sleep(2)
    assert proc.returncode == 0 and "succeeded" in proc.stdout + proc.stderr, proc.stdout[-3000:] + proc.stderr[-3000:]
    check_summary(tmp_path, unique_name)


def test_address_of_a_running_cluster(ray_head, tmp_path, unique_name):
    proc = subprocess.run(
        ["python", "-m", "tuner", "tune", *QUICK, "--address", ray_head["gcs"], "--storage", str(tmp_path),
         "--name", unique_name],
        capture_output=True, text=True, env=ray_head["env"], timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # 4 CPUs, trials of 1 driver + 2 x 0.5: two at a time.
    assert "Running up to 2 trial(s) at once" in proc.stdout
    check_summary(tmp_path, unique_name)


def max_overlap(windows: list[tuple[float, float]]) -> int:
    """Most of the (start, end) windows that share one instant."""
    edges = sorted([(start, 1) for start, _ in windows] + [(end, -1) for _, end in windows])
    running = most = 0
    for _, step in edges:  # at equal times the end (-1) sorts first: touching is no overlap
        running += step
        most = max(most, running)
    return most


def test_gpu_trials_on_fake_gpus(ray_head, tmp_path, unique_name):
    # Trials of 0.5 driver CPU + 2 workers x (0.25 CPU, 1 GPU): the 4 CPUs allow 4 at
    # once, the 4 GPUs only 2, so the GPUs bind.
    gpu = ["--set", "scaling.use_gpu=true", "--set", "scaling.gpus_per_worker=1", "--set", "scaling.workers=2",
           "--set", "scaling.cpus_per_worker=0.25", "--set", "scaling.driver_cpus=0.5",
           # What the Kubernetes head advertises: drivers go only where it is.
           "--set", "scaling.driver_resource=trial_driver"]
    proc = subprocess.run(
        ["python", "-m", "tuner", "tune", *QUICK, "--set", "search.num_samples=3", *gpu,
         "--address", ray_head["gcs"], "--storage", str(tmp_path), "--name", unique_name],
        capture_output=True, text=True, env=ray_head["env"], timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert ("Running up to 2 trial(s) at once, each 1 CPUs (0.5 driver + 2 workers x 0.25) "
            "and 2 GPUs (2 workers x 1)") in proc.stdout

    summary = json.loads((tmp_path / unique_name / "summary.json").read_text())
    assert summary["max_concurrent_trials"] == 2
    assert summary["cluster_resources"] == {"CPU": 4, "GPU": 4, "trial_driver": 100}
    assert [(t["status"], t["epochs"], t["workers"]) for t in summary["trials"]] == [("terminated", 1, 2)] * 3
    assert summary["best"]["test_accuracy"] > 0.3  # TensorFlow trained, on the CPU

    rows = pq.read_table(tmp_path / unique_name / "results.parquet").to_pylist()
    assert len(rows) == 3
    # Each row is rank 0's report: Ray gave that worker one (fake) GPU and its trial driver none.
    assert [(r["gpus"], r["driver_gpus"]) for r in rows] == [(1, 0)] * 3
    # Each trial from its first Tune iteration to its report; `timestamp` is whole seconds
    # (rounded down), so the start moves 1 s later to keep each window inside the trial.
    windows = [(r["timestamp"] - r["time_total_s"] + 1, r["timestamp"]) for r in rows]
    assert max_overlap(windows) == 2, windows
