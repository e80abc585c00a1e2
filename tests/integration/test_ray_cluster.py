"""The same spec on a `ray start --head` cluster: `ray job submit`, `--address`, and
GPU scheduling.

The test starts its own cluster (`tests/services/ray_head.py`: own temp dir and ports,
stopped by killing exactly its processes, never `ray stop`). The cluster advertises 4 GPUs
it does not have: Ray schedules and assigns them like real ones, and TensorFlow, finding
no CUDA device, trains on the CPU.
"""

import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray_head as ray_head_service  # tests/services/, on the path through conftest
from conftest import REPO, missing, run_tuner

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_head():
    try:
        # Fake GPUs and the Kubernetes head's driver resource, for the scheduling test. Ray
        # Train's start timeout of a worker group cut from 60 s to 2 s (what its processes
        # would use without tuner's `failure.worker_start_timeout`), to show slow starts wait.
        head = ray_head_service.start(cpus=4, gpus=4, resources={"trial_driver": 100},
                                      server_env={"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "2"})
    except FileNotFoundError as e:
        missing(str(e))
    try:
        yield head
    finally:
        head.stop()


QUICK = ["--config", "quick", "--set", "search.num_samples=2", "--set", "asha.max_t=1"]


def check_summary(storage: Path, name: str) -> None:
    summary = json.loads((storage / name / "summary.json").read_text())
    assert len(summary["trials"]) == 2 and summary["best"]["test_accuracy"] > 0.3


def submit(head, tuner_args: list[str], *options: str):
    return ray_head_service.submit(head, ["python", "-m", "tuner", *tuner_args], *options, working_dir=str(REPO))


def test_ray_job_submit_of_a_users_project(ray_head, moto_s3, tmp_path, unique_name):
    # The README's command: the user's folder (its builder module) as the job's working
    # directory, S3 settings in the job's runtime environment, which tuner's own (it
    # forwards AWS_* to the trials) must not conflict with. The breast-cancer example,
    # its results then read as test_examples.py reads the others'.
    from test_examples import SMALL, check_breast_cancer, check_tuned, example, stage_example

    here = example("breast_cancer", tmp_path)
    dataset = stage_example(moto_s3, here, "breast_cancer.csv", "diagnosis", unique_name)
    env_json = json.dumps({"env_vars": {k: v for k, v in moto_s3.items() if k.startswith("AWS_")}})
    proc = ray_head_service.submit(
        ray_head, ["python", "-m", "tuner", "tune", "--config", "spec.yaml", "--storage", "s3://tuner/jobs",
                   "--name", unique_name, "--set", f"data.uri={dataset}", *SMALL],
        "--runtime-env-json", env_json, working_dir=str(here))
    assert proc.returncode == 0 and "succeeded" in proc.stdout + proc.stderr, proc.stdout[-3000:] + proc.stderr[-3000:]
    check_breast_cancer(check_tuned(moto_s3, "jobs", unique_name))


def test_ray_job_stop_then_the_same_submit_resumes(ray_head, tmp_path, unique_name):
    # `ray job stop` sends SIGTERM, and SIGKILL 3 s later (RAY_JOB_STOP_WAIT_TIME_S).
    args = ["tune", *QUICK, "--set", "asha.max_t=4", "--set", "asha.grace_period=4",
            "--storage", str(tmp_path), "--name", unique_name]
    first = submit(ray_head, args, "--no-wait")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    (job_id,) = set(re.findall(r"raysubmit_\w+", first.stdout + first.stderr))
    deadline = time.time() + 600
    while not list((tmp_path / unique_name / "runs").glob("*/epoch-*/state.json")) and time.time() < deadline:
        time.sleep(0.3)
    stop = ray_head_service.job(ray_head, "stop", job_id)
    assert stop.returncode == 0, stop.stdout[-3000:] + stop.stderr[-3000:]
    status = ray_head_service.job(ray_head, "status", job_id)
    assert "was stopped" in status.stdout + status.stderr, status.stdout + status.stderr
    logs = ray_head_service.job(ray_head, "logs", job_id)
    print("the stopped job's last lines:", *logs.stdout.splitlines()[-3:], sep="\n  ")
    assert not (tmp_path / unique_name / "summary.json").exists()

    again = submit(ray_head, args)
    assert again.returncode == 0 and "succeeded" in again.stdout + again.stderr, again.stdout[-3000:] + again.stderr[-3000:]
    assert "Resuming the interrupted experiment" in again.stdout + again.stderr
    summary = json.loads((tmp_path / unique_name / "summary.json").read_text())
    assert [(t["status"], t["epochs"]) for t in summary["trials"]] == [("terminated", 4)] * 2
    # The stopped trial went on from a checkpoint, not from scratch.
    assert [e for t in summary["trials"] for e in t["resumed_from_epochs"]], summary["trials"]


def test_in_process_run_beside_a_live_cluster(ray_head, tmp_path, unique_name):
    # Ray's `ray_current_cluster` file names the live cluster (as after its `ray start`),
    # and two GCS processes run on the machine: an in-process run keeps to its own Ray.
    temp = tempfile.mkdtemp(prefix="tlv-", dir="/tmp")
    os.makedirs(f"{temp}/ray")
    Path(temp, "ray", "ray_current_cluster").write_text(ray_head.gcs)
    proc = run_tuner(["tune", *QUICK, "--storage", str(tmp_path), "--name", unique_name], env={"TMPDIR": temp},
                     timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Running up to 1 trial(s) at once" in proc.stdout  # its own 2 CPUs, not the cluster's 4
    check_summary(tmp_path, unique_name)
    # The presets' search, `random` under ASHA, as test_searchers.py checks the others.
    from test_searchers import assert_first_suggestions

    from tuner.spec import load_spec

    summary = json.loads((tmp_path / unique_name / "summary.json").read_text())
    assert summary["spec"]["search"]["algorithm"] == "random" and summary["spec"]["scheduler"]["kind"] == "asha"
    assert_first_suggestions(load_spec("quick", [o for o in QUICK[2:] if o != "--set"]), summary["trials"])


def max_overlap(windows: list[tuple[float, float]]) -> int:
    """Most of the (start, end) windows that share one instant."""
    edges = sorted([(start, 1) for start, _ in windows] + [(end, -1) for _, end in windows])
    running = most = 0
    for _, step in edges:  # at equal times the end (-1) sorts first: touching is no overlap
        running += step
        most = max(most, running)
    return most


HOLD_GPUS = """
import sys, time, ray
from ray.util.placement_group import placement_group
ray.init(address=sys.argv[1], logging_level="ERROR")
ray.get(placement_group([{"GPU": 2}]).ready())
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_gpu_trials_on_fake_gpus(ray_head, tmp_path, unique_name):
    """`tuner tune --address` of a running cluster, with GPU trials on its fake GPUs."""
    # Trials of 0.5 driver CPU + 2 workers x (0.25 CPU, 1 GPU): the 4 CPUs allow 4 at
    # once, the 4 GPUs only 2, so the GPUs bind.
    gpu = ["--set", "scaling.use_gpu=true", "--set", "scaling.gpus_per_worker=1", "--set", "scaling.workers=2",
           "--set", "scaling.cpus_per_worker=0.25", "--set", "scaling.driver_cpus=0.5",
           # What the Kubernetes head advertises: drivers go only where it is.
           "--set", "scaling.driver_resource=trial_driver"]
    # Another job holds 2 of the 4 GPUs for the first 15 s: one of the 2 trials that start
    # at once waits for its workers' GPUs past Ray's start timeout (2 s here, 60 s by
    # default) x (1 + failure.controller_failure_limit 3), and trains once they come.
    held = subprocess.Popen(["python", "-c", HOLD_GPUS, ray_head.gcs, "15"], env=ray_head.env,
                            stdout=subprocess.PIPE, text=True)
    assert held.stdout.readline().strip() == "held"
    proc = subprocess.run(
        ["python", "-m", "tuner", "tune", *QUICK, "--set", "search.num_samples=3", *gpu,
         "--address", ray_head.gcs, "--storage", str(tmp_path), "--name", unique_name],
        capture_output=True, text=True, env=ray_head.env, timeout=900,
    )
    assert held.wait(timeout=60) == 0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert ("Running up to 2 trial(s) at once, each 1 CPUs (0.5 driver + 2 workers x 0.25) "
            "and 2 GPUs (2 workers x 1)") in proc.stdout

    summary = json.loads((tmp_path / unique_name / "summary.json").read_text())
    assert summary["max_concurrent_trials"] == 2
    assert summary["cluster_resources"] == {"CPU": 4, "GPU": 4, "trial_driver": 100}
    assert [(t["status"], t["epochs"], t["workers"]) for t in summary["trials"]] == [("terminated", 1, 2)] * 3
    assert summary["best"]["test_accuracy"] > 0.3  # TensorFlow trained, on the CPU
    assert (tmp_path / unique_name / "best_model.keras").is_file()

    rows = pq.read_table(tmp_path / unique_name / "results.parquet").to_pylist()
    assert len(rows) == 3
    # Each row is rank 0's report: Ray gave that worker one (fake) GPU and its trial driver none.
    assert [(r["gpus"], r["driver_gpus"]) for r in rows] == [(1, 0)] * 3
    # Each trial from its first Tune iteration to its report; `timestamp` is whole seconds
    # (rounded down), so the start moves 1 s later to keep each window inside the trial.
    windows = [(r["timestamp"] - r["time_total_s"] + 1, r["timestamp"]) for r in rows]
    assert max_overlap(windows) == 2, windows
