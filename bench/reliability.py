"""Reliability: inject each fault into a one-trial run and compare it with an undisturbed
run measured in the same session.

    python bench/run.py reliability          # ~10 min on 2 cores; the outage needs Ceph RGW

Faults, each injected once the trial's epoch-2 checkpoint is in storage (6-epoch budget,
2 workers, the shipped MNIST subset):
- worker: SIGKILL one Ray Train worker process;
- driver: SIGKILL the whole `tuner` process tree (its in-process Ray included), then run
  the identical command again;
- sigint: SIGINT to the `tuner` process group (a terminal's Ctrl-C), then the same command;
- sigterm: SIGTERM to the `tuner` process (Kubernetes' pod deletion, `timeout`), then the
  same command;
- ray_job_stop: `ray job stop` of the job on a `ray start` cluster (SIGTERM, SIGKILL 3 s
  later), then the same `ray job submit` (its baseline: an undisturbed job there);
- outage: stop the S3 server (Ceph RGW) for 30 s, then start it on the same port.
Figures: survived (exit 0, the trial finished its budget), epochs lost (newest checkpoint
at the fault minus the epoch training resumed from), extra wall seconds versus the
undisturbed run on the same storage; for the signals also the seconds from the signal to
the process's exit.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CEPH = REPO / "tests" / "services" / "ceph_rgw.sh"
MAX_T = 6
ARGS = ["train", "--config", "seed-baseline", "--set", "data.source=builtin", "--set", f"asha.max_t={MAX_T}",
        "--set", f"asha.grace_period={MAX_T}", "--set", "scaling.workers=2", "--set", "scaling.cpus_per_worker=0.5"]


def _proc_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent, session, cmdline)."""
    table = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                if fields[0] == "Z":
                    continue
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                table[int(proc.name)] = (int(fields[1]), int(fields[3]), cmd)
            except (OSError, ValueError, IndexError):
                pass
    return table


def _kill_session(sid: int) -> None:
    for _ in range(50):
        pids = [pid for pid, (_, s, _) in _proc_table().items() if s == sid]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def _checkpoint_epochs(lister) -> list[int]:
    try:
        return sorted(int(k.split("/epoch-")[1][:4]) for k in lister() if "/epoch-" in k and k.endswith("/state.json"))
    except Exception:  # noqa: BLE001 - storage may be down (that is the point of one fault)
        return []


class Run:
    def __init__(self, work: Path, name: str, storage: str, env: dict, lister):
        self.work, self.name, self.storage, self.env, self.lister = work, name, storage, env, lister
        self.cmd = [sys.executable, "-m", "tuner", *ARGS, "--name", name, "--storage", storage]

    def start(self) -> subprocess.Popen:
        self.log = open(self.work / f"{self.name}.log", "a")
        return subprocess.Popen(self.cmd, env=self.env, cwd=self.work, stdout=self.log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def wait_for_epoch(self, proc, epoch: int, timeout: float = 600) -> int | None:
        deadline = time.time() + timeout
        while proc.poll() is None and time.time() < deadline:
            done = _checkpoint_epochs(self.lister)
            if done and done[-1] >= epoch:
                return done[-1]
            time.sleep(0.2)
        return None


def _outcome(run: Run, summary_reader, codes: list[int], at_fault: int | None, seconds: float, baseline: float | None):
    try:
        summary = summary_reader()
        (trial,) = summary["trials"]
    except Exception as e:  # noqa: BLE001
        return {"survived": False, "error": f"{type(e).__name__}: {e}", "exit_codes": codes}
    if at_fault is None and baseline is not None:
        return {"survived": None, "injected": False, "exit_codes": codes,
                "error": "the fault was not injected (the run ended or never reached epoch 2)"}
    starts = [0, *trial.get("resumed_from_epochs", [])]
    lost = max(0, (at_fault or 0) - starts[-1]) if len(starts) > 1 else 0
    return {
        "survived": codes[-1] == 0 and trial["status"] == "terminated" and trial["epochs"] == MAX_T,
        "exit_codes": codes, "checkpoint_at_fault": at_fault, "resumed_from_epochs": starts[1:],
        "epochs_lost": lost, "wall_seconds": round(seconds, 1),
        "extra_seconds": round(seconds - baseline, 1) if baseline is not None else None,
        "test_accuracy": (summary.get("best") or {}).get("test_accuracy"),
    }


def _local(work: Path, label: str, env: dict):
    store = work / "store"
    name = f"{label}-{time.strftime('%H%M%S')}"

    def lister():
        return [str(p.relative_to(store)) for p in (store / name / "runs").rglob("state.json")]

    return Run(work, name, str(store), env, lister), (lambda: json.loads((store / name / "summary.json").read_text()))


def reliability(work: Path, mnist: str | None, smoke: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    out = {"max_t": MAX_T, "workers": 2}

    # Undisturbed, local storage.
    run, summary = _local(work, "baseline", env)
    t = time.time()
    code = run.start().wait()
    base = time.time() - t
    out["baseline"] = _outcome(run, summary, [code], None, base, None)

    # A Train worker killed.
    run, summary = _local(work, "worker", env)
    t = time.time()
    proc = run.start()
    at = run.wait_for_epoch(proc, 2)
    if at:
        workers = [pid for pid, (_, sid, cmd) in _proc_table().items()
                   if sid == proc.pid and cmd.startswith("ray::RayTrainWorker")]
        if workers:
            os.kill(max(workers), signal.SIGKILL)
        else:
            at = None  # nothing to kill: not injected
    code = proc.wait()
    out["worker_killed"] = _outcome(run, summary, [code], at, time.time() - t, base)

    # The whole driver process tree killed, then the same command again.
    run, summary = _local(work, "driver", env)
    t = time.time()
    proc = run.start()
    at = run.wait_for_epoch(proc, 2)
    _kill_session(proc.pid)
    proc.wait()
    code = run.start().wait()
    out["driver_killed"] = _outcome(run, summary, [-9, code], at, time.time() - t, base)

    # Stopped by a signal, then the same command again.
    for label, send in (("sigint", lambda p: os.killpg(p.pid, signal.SIGINT)),
                        ("sigterm", lambda p: p.send_signal(signal.SIGTERM))):
        run, summary = _local(work, label, env)
        t = time.time()
        proc = run.start()
        at = run.wait_for_epoch(proc, 2)
        sent = time.time()
        if at:
            send(proc)
        first = proc.wait()
        stop_seconds = time.time() - sent
        code = run.start().wait()
        out[label] = {**_outcome(run, summary, [first, code], at, time.time() - t, base),
                      "seconds_to_exit": round(stop_seconds, 1)}

    out.update(_ray_job_stop(work, env))
    out.update(_outage(work, env))
    return out


def _ray_job_stop(work: Path, env: dict) -> dict:
    """An undisturbed job and one stopped by `ray job stop`, then submitted again, on a
    4-CPU `ray start` cluster."""
    sys.path.insert(0, str(REPO / "tests" / "services"))
    import ray_head

    try:
        head = ray_head.start(cpus=4)
    except (FileNotFoundError, RuntimeError) as e:
        return {"ray_job_stop": f"skipped: {e}"}
    try:
        out, base = {}, None
        for label in ("job_baseline", "ray_job_stop"):
            run, summary = _local(work, label, env)
            entrypoint = ["python", "-m", "tuner", *run.cmd[3:]]
            t = time.time()
            if label == "job_baseline":
                codes = [ray_head.submit(head, entrypoint, working_dir=str(REPO)).returncode]
                base = time.time() - t
                out[label] = _outcome(run, summary, codes, None, base, None)
                continue
            first = ray_head.submit(head, entrypoint, "--no-wait", working_dir=str(REPO))
            job_ids = sorted(set(re.findall(r"raysubmit_\w+", first.stdout + first.stderr)))
            at = None
            if job_ids:
                deadline = time.time() + 600
                while time.time() < deadline and not (at := _newest(run.lister, 2)):
                    time.sleep(0.2)
                sent = time.time()
                ray_head.job(head, "stop", job_ids[0])
                stop_seconds = time.time() - sent
                status = ray_head.job(head, "status", job_ids[0])
            code = ray_head.submit(head, entrypoint, working_dir=str(REPO)).returncode
            out[label] = {**_outcome(run, summary, [first.returncode, code], at, time.time() - t, base),
                          "stop_seconds": round(stop_seconds, 1) if at else None,
                          "status_after_stop": (status.stdout + status.stderr).strip().splitlines()[-1:] if at else None}
        return out
    finally:
        head.stop()


def _newest(lister, epoch: int) -> int | None:
    done = _checkpoint_epochs(lister)
    return done[-1] if done and done[-1] >= epoch else None


def _outage(work: Path, env: dict) -> dict:
    if not CEPH.exists():
        return {"storage_outage": "skipped: tests/services/ceph_rgw.sh is missing"}
    data = Path(tempfile.mkdtemp(prefix="ceph-", dir=work))
    port = _free_port()
    started = subprocess.run(["bash", str(CEPH), "start", str(data), str(port)], capture_output=True, text=True,
                             timeout=300)
    if started.returncode != 0:
        return {"storage_outage": f"skipped: Ceph RGW did not start ({started.stderr.strip()[-200:]})"}
    try:
        s3 = {}
        for line in started.stdout.splitlines():
            line = line.removeprefix("export ").strip()
            if "=" in line:
                k, v = line.split("=", 1)
                s3[k] = v.strip("'\"")
        import boto3

        client = boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"], region_name="us-east-1",
                              aws_access_key_id=s3["AWS_ACCESS_KEY_ID"], aws_secret_access_key=s3["AWS_SECRET_ACCESS_KEY"])
        client.create_bucket(Bucket="tuner")
        s3_env = {**env, **{k: s3[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
                  "AWS_DEFAULT_REGION": "us-east-1"}
        out = {}
        base = None
        for label in ("s3_baseline", "storage_outage"):
            name = f"{label}-{time.strftime('%H%M%S')}"

            def lister(name=name):
                return [o["Key"] for o in client.list_objects_v2(Bucket="tuner", Prefix=f"b/{name}/runs/")
                        .get("Contents", [])]

            def summary(name=name):
                return json.loads(client.get_object(Bucket="tuner", Key=f"b/{name}/summary.json")["Body"].read())

            run = Run(work, name, "s3://tuner/b", s3_env, lister)
            t = time.time()
            proc = run.start()
            at = None
            if label == "storage_outage":
                at = run.wait_for_epoch(proc, 2)
                subprocess.run(["bash", str(CEPH), "stop-rgw", str(data)], check=True, timeout=60)
                time.sleep(30)
                subprocess.run(["bash", str(CEPH), "start-rgw", str(data)], check=True, timeout=120)
            code = proc.wait()
            seconds = time.time() - t
            out[label] = _outcome(run, summary, [code], at, seconds, base)
            if label == "s3_baseline":
                base = seconds
        out["storage_outage"]["outage_seconds"] = 30
        return out
    finally:
        subprocess.run(["bash", str(CEPH), "stop", str(data)], timeout=120)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
