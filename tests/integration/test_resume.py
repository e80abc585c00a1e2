"""A Train worker killed mid-trial: the worker group restarts from the latest checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow


def descendants(root: int) -> dict[int, str]:
    """pid -> cmdline of every process below ``root``."""
    parent, cmd = {}, {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
                parent[int(proc.name)] = int(stat.rsplit(")", 1)[1].split()[1])
                cmd[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, ValueError, IndexError):
                pass
    found, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        for child, p in parent.items():
            if p == pid and child not in found:
                found[child] = cmd.get(child, "")
                frontier.append(child)
    return found


def test_killed_worker_resumes_from_latest_checkpoint(tmp_path, unique_name):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
    args = [sys.executable, "-m", "tuner", "train", "--config", "seed-baseline", "--name", unique_name,
            "--storage", str(tmp_path), "--set", "data.source=builtin", "--set", "asha.max_t=5",
            "--set", "asha.grace_period=5", "--set", "scaling.workers=2", "--set", "scaling.cpus_per_worker=0.5",
            "--set", "failure.max_failures=1"]
    log = open(tmp_path / "tuner.log", "w")
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    runs = tmp_path / unique_name / "runs"
    killed = None
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        if killed is None and list(runs.glob("*/epoch-0002/state.json")):
            # Our own Ray's Train workers: descendants of this tuner process only.
            workers = [pid for pid, cmd in descendants(proc.pid).items() if cmd.startswith("ray::RayTrainWorker")]
            if workers:
                killed = max(workers)
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    code = proc.wait(timeout=max(1, deadline - time.time()))
    log.close()
    assert killed is not None, "no Train worker was found to kill"
    assert code == 0, (tmp_path / "tuner.log").read_text()[-5000:]

    summary = json.loads((tmp_path / unique_name / "summary.json").read_text())
    (trial,) = summary["trials"]
    assert trial["status"] == "terminated" and trial["epochs"] == 5 and trial["restarts"] == 1
    rows = pq.read_table(tmp_path / unique_name / "results.parquet").to_pylist()
    resumed = {r["resumed_from_epoch"] for r in rows} - {0}
    # The kill came after the epoch-2 checkpoint: at most one epoch is lost.
    (start,) = resumed
    assert start >= 2
    # Every epoch after the resumed one was reported, up to the budget. (Reports the
    # controller had not yet collected when the worker died do not reach Tune.)
    after = sorted(r["epoch"] for r in rows if r["resumed_from_epoch"] == start)
    assert after == list(range(start + 1, 6))
    assert summary["best"]["test_accuracy"] > 0.5
