"""`bench/run.py head`: what each running trial costs the Ray head, process by process,
with real trials.

A two-node Ray on this machine (``ray.cluster_utils.Cluster``): a head without GPUs
that advertises the Helm chart's ``trial_driver`` resource, and a worker node with 4
GPUs it does not have. `tuner tune --config quick` runs 2 trials at once, each 2
workers x 1 GPU, 2 epochs. Every second the RSS of each node's processes (its raylet's
descendants, plus the head's own Ray services) is summed by kind; the figures are the
sample with the most Train workers alive. Twice: with ``scaling.driver_resource:
trial_driver`` (the chart's setting: trial drivers on the head) and without it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "services"))
from ray_head import descendants  # noqa: E402

KINDS = (("ImplicitFunc", "trial_driver"), ("TrainController", "train_controller"),
         ("SynchronizationActor", "train_sync_actor"), ("PlacementGroupCleaner", "train_pg_cleaner"),
         ("PreemptionWatcher", "train_preemption_watcher"), ("_QueueActor", "queue_actor"),
         ("_AutoscalingCoordinatorActor", "autoscaling_coordinator"),
         ("RayTrainWorker", "train_worker"), ("Slots", "tuner_slot_actor"), ("IDLE", "idle_worker"),
         ("DashboardAgent", "ray_agents"), ("RuntimeEnvAgent", "ray_agents"), ("raylet", "ray_services"),
         ("gcs_server", "ray_services"), ("dashboard", "ray_services"), ("log_monitor", "ray_services"),
         ("monitor", "ray_services"))
# One of each per running trial (the queue actor is a ray.util.queue.Queue's, which
# carries the Train run's reports to its Tune trial).
PER_TRIAL = ("trial_driver", "train_controller", "train_sync_actor", "train_pg_cleaner", "train_preemption_watcher",
             "queue_actor")


def _kind(pid: int) -> tuple[str, int, float]:
    """(kind, RSS bytes, CPU seconds so far) of a process."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        rss = next(int(line.split()[1]) * 1024 for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS:"))
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, IndexError, ValueError):
        return "gone", 0, 0.0
    for marker, kind in KINDS:
        if marker in cmd:
            return kind, rss, cpu
    match = re.match(r"ray::(\w+)", cmd)
    return (f"other:{match.group(1)}" if match else "other"), rss, cpu


def _node_pids(node) -> list[int]:
    return [p.process.pid for infos in node.all_processes.values() for p in infos if p.process is not None]


def _measure(work: Path, dataset: str, on_head: bool) -> dict:
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="trh-", dir="/tmp")
    cluster = Cluster(initialize_head=True, shutdown_at_exit=True,
                      head_node_args={"num_cpus": 4, "resources": {"trial_driver": 8}, "temp_dir": temp,
                                      "include_dashboard": True, "dashboard_host": "127.0.0.1"})
    worker = cluster.add_node(num_cpus=6, num_gpus=4)
    samples: list[dict] = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            snap: dict = {}
            for node_name, node in (("head", cluster.head_node), ("worker", worker)):
                for pid in descendants(_node_pids(node)):
                    kind, rss, cpu = _kind(pid)
                    entry = snap.setdefault(node_name, {}).setdefault(kind, {"processes": 0, "rss_mb": 0.0, "cpu": 0.0})
                    entry["processes"] += 1
                    entry["rss_mb"] += rss / 2**20
                    entry["cpu"] += cpu
            samples.append(snap)
            stop.wait(1.0)

    name = f"head-{'on_head' if on_head else 'anywhere'}-{int(time.time())}"
    cmd = [sys.executable, "-m", "tuner", "tune", "--config", "quick", "--name", name, "--storage", str(work / "store"),
           "--address", cluster.address, "--set", f"data.uri={dataset}", "--set", "search.num_samples=2",
           "--set", "asha.max_t=2", "--set", "asha.grace_period=2", "--set", "scaling.max_concurrent_trials=2",
           "--set", "scaling.use_gpu=true", "--set", "scaling.gpus_per_worker=1", "--set", "scaling.cpus_per_worker=1",
           "--set", f"scaling.driver_resource={'trial_driver' if on_head else 'null'}"]
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        with (work / "head.log").open("a") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=work, timeout=1800,
                                  env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        if proc.returncode != 0:
            raise SystemExit(f"tuner tune on the two-node Ray failed ({proc.returncode}); see {work / 'head.log'}")
    finally:
        stop.set()
        thread.join()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)

    def workers(snap):
        return sum(n.get("train_worker", {}).get("processes", 0) for n in snap.values())

    peak = max(samples, key=lambda s: (workers(s), sum(e["rss_mb"] for e in s.get("head", {}).values())))
    out: dict = {"train_workers_alive": workers(peak)}
    for node_name in ("head", "worker"):
        kinds = peak.get(node_name, {})
        out[node_name] = {
            "total_mb": round(sum(e["rss_mb"] for e in kinds.values())),
            # CPU seconds: each process's since it started, summed (at the sample).
            "by_kind": {k: {"processes": e["processes"], "rss_mb": round(e["rss_mb"]), "cpu_seconds": round(e["cpu"], 1)}
                        for k, e in sorted(kinds.items())},
        }
        # What the two running trials add on this node: the per-trial processes.
        out[node_name]["per_trial_mb"] = round(sum(kinds[k]["rss_mb"] for k in PER_TRIAL if k in kinds) / 2)
    return out


def head(work: Path, mnist: str | None, smoke: bool) -> dict:
    from common import stage

    dataset = stage(work, None)  # the shipped subset: memory, not accuracy
    out = {"cluster": "ray.cluster_utils.Cluster: head 4 CPUs + trial_driver 8, worker node 6 CPUs + 4 fake GPUs",
           "trials": "2 at once, 2 workers x 1 GPU x 1 CPU, quick preset, 2 epochs",
           "drivers_on_head": _measure(work, dataset, True)}
    if not smoke:
        out["drivers_anywhere"] = _measure(work, dataset, False)
    return out
