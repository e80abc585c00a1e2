"""`bench/run.py scale`: `tuner`'s control plane at 100, 300 and 1,000 trials.

Each size runs on a fresh `ray start --head` cluster that advertises 64 GPUs it does
not have (tests/services/ray_head.py), storage in S3 (moto behind the counting proxy).
Trials are `bench/scale_stub.py`'s stubs: 2 workers of 1 GPU each on paper (32 at
once), a trial driver that reports an epoch every 0.2 s and starts no worker group.
Per size:

- `tuner tune` (the `quick` preset's space, ASHA 1/3/9 epochs), against the same stub
  trials under plain Ray Tune (`bench/scale_plain.py`; at the sizes `--plain` names, by
  default all) on the same cluster and bucket:
  wall time, the driver's peak RSS, the head's processes' peak RSS by kind, S3 requests
  per trial, Tune's experiment-state saves (count, time) and what they leave in storage;
- `tuner`'s steps after Tune (trials from Tune's results, results.parquet,
  summary.json) and the report (`tuner report`'s rendering);
- a lost driver: `tuner tune` killed (SIGKILL) once half the trials ended, then the same
  command: the seconds to its first trial event and to its end (its S3 requests and
  driver steps are the resumed run's).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "services"))

GPUS, WORKERS = 64, 2
MAX_T, GRACE, RF = 9, 1, 3
EPOCH_SECONDS = 0.2
SIZES = [100, 300, 1000]
PLAIN_SIZES = None  # the sizes plain Ray Tune runs at too (None: all)


def _kind(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    for marker, kind in (("gcs_server", "gcs_server"), ("/raylet", "raylet"), ("dashboard", "dashboard"),
                         ("ImplicitFunc", "trial_drivers"), ("Slots", "tuner_slot_actor"), ("IDLE", "idle_workers"),
                         ("log_monitor", "log_monitor"), ("ray::", "other_actors")):
        if marker in cmd:
            return kind
    return "other"


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Sampler:
    """Samples, every second, the RSS of the head's processes (``RayHead.pids``: Ray's
    own, its workers and actors) by kind, and a driver's peak RSS."""

    def __init__(self, head, driver_pid: int):
        self.head, self.driver_pid = head, driver_pid
        self.peak_total, self.peak_by_kind, self.peak_counts, self.driver_peak = 0, {}, {}, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while not self._stop.is_set():
            pids = self.head.pids()
            by_kind, counts = {}, {}
            for pid in pids:
                kind = _kind(pid)
                by_kind[kind] = by_kind.get(kind, 0) + _rss(pid)
                counts[kind] = counts.get(kind, 0) + 1
            total = sum(by_kind.values())
            if total > self.peak_total:
                self.peak_total, self.peak_by_kind, self.peak_counts = total, by_kind, counts
            try:
                for line in Path(f"/proc/{self.driver_pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.driver_peak = max(self.driver_peak, int(line.split()[1]) * 1024)
            except OSError:
                pass
            self._stop.wait(1.0)

    def figures(self) -> dict:
        return {"driver_peak_rss_mb": round(self.driver_peak / 2**20),
                "head_processes_peak_rss_mb": round(self.peak_total / 2**20),
                "head_at_peak_mb_by_kind": {k: round(v / 2**20) for k, v in sorted(self.peak_by_kind.items())},
                "head_at_peak_processes_by_kind": dict(sorted(self.peak_counts.items()))}


def _run(cmd: list[str], env: dict, head, log: Path, kill_after_ended: int | None = None, ok=(0,)) -> dict:
    """Run ``cmd``; with ``kill_after_ended``, SIGKILL it once that many trials ended (by
    its console lines). Returns wall seconds, the sampler's figures, the seconds to its
    first trial event, and whether it was killed."""
    started = time.time()
    with log.open("a") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=out, text=True, cwd=log.parent)
        first_event, ended, killed = None, 0, False
        with Sampler(head, proc.pid) as sampler:
            for line in proc.stdout:
                out.write(line)
                if first_event is None and re.search(r"\] trial \S+ (started|epoch)", line):
                    first_event = time.time() - started
                if re.search(r"\] trial \S+ (stopped by|finished|failed)", line):
                    ended += 1
                    if kill_after_ended and ended >= kill_after_ended and not killed:
                        proc.send_signal(signal.SIGKILL)
                        killed = True
            code = proc.wait()
    if code not in ok and not killed:
        raise SystemExit(f"{' '.join(cmd[:4])} failed ({code}); see {log}")
    return {"seconds": round(time.time() - started, 1), **sampler.figures(),
            "first_trial_event_seconds": None if first_event is None else round(first_event, 1), "killed": killed}


def _stats(path: Path) -> dict:
    return {k: {"calls": v["calls"], "seconds": round(v["seconds"], 2), "max_seconds": round(v["max_seconds"], 3)}
            for k, v in json.loads(path.read_text()).items()}


def _sizes(bucket: str, prefix: str) -> dict:
    """Bytes of each file directly under ``prefix`` (the experiment folder), timestamps
    dropped from Tune's state file names."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/", Delimiter="/"):
        for o in page.get("Contents", []):
            name = re.sub(r"-\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", "", o["Key"].rsplit("/", 1)[1])
            out[name] = out.get(name, 0) + o["Size"]
    return dict(sorted(out.items()))


def scale(work: Path, mnist: str | None, smoke: bool) -> dict:
    import ray_head
    from common import NAME
    from data import BUCKET, _counted_s3, _is_store, _kinds

    from tuner import data as tdata
    from tuner import report, storage

    sizes = [12] if smoke else SIZES
    concurrent = GPUS // WORKERS
    out: dict = {"cluster": f"ray start --head, {GPUS} fake GPUs, {concurrent * 3} CPUs", "trials_at_once": concurrent,
                 "trial": f"stub: {WORKERS} workers x 1 GPU on paper, an epoch reported every {EPOCH_SECONDS} s",
                 "asha": {"max_t": MAX_T, "grace_period": GRACE, "reduction_factor": RF},
                 "storage": "moto S3 on 127.0.0.1 behind a counting proxy", "runs": {}}
    os.environ.update({"TUNER_STUB_EPOCH_SECONDS": str(EPOCH_SECONDS), "TUNER_STUB_STATE": str(work / "stub-state"),
                       "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)})
    log = work / "scale.log"
    with _counted_s3() as (proxy, _):
        tdata.mnist_dataset(tdata.source_for(mnist or "builtin"), 1 / 12).write(f"s3://{BUCKET}/datasets/x1")
        proxy.take()
        for n in sizes:
            figures = {}
            plain_too = PLAIN_SIZES is None or n in PLAIN_SIZES
            for how in ("plain_ray_tune", "tuner", "tuner_lost_driver")[0 if plain_too else 1:]:
                head = ray_head.start(cpus=concurrent * 3, gpus=GPUS)
                try:
                    env = {**head.env, "RAY_ADDRESS": head.gcs, "TUNER_STUB_STATS": str(work / f"{how}-{n}.json")}
                    name = f"{NAME['scale']}-{how}-{n}"
                    if how == "plain_ray_tune":
                        cfg = {"name": name, "storage": f"s3://{BUCKET}/store", "samples": n, "max_t": MAX_T,
                               "grace": GRACE, "rf": RF, "concurrent": concurrent}
                        run = _run([sys.executable, str(HERE / "scale_plain.py"), json.dumps(cfg)], env, head, log)
                    else:
                        cmd = [sys.executable, str(HERE / "scale_stub.py"), "tune", "--config", "quick", "--name", name,
                               "--storage", f"s3://{BUCKET}/store", "--set", f"data.uri=s3://{BUCKET}/datasets/x1",
                               "--set", f"search.num_samples={n}", "--set", f"asha.max_t={MAX_T}",
                               "--set", f"asha.grace_period={GRACE}", "--set", f"asha.reduction_factor={RF}",
                               "--set", f"scaling.workers={WORKERS}", "--set", "scaling.use_gpu=true",
                               "--set", "scaling.gpus_per_worker=1", "--set", "scaling.cpus_per_worker=1"]
                        # Exit 1: stub trials leave no checkpoint, so no best model.
                        if how == "tuner":
                            run = _run(cmd, env, head, log, ok=(0, 1))
                        else:
                            # The driver lost, the cluster up (its job's actors die with it).
                            lost = _run(cmd, env, head, log, kill_after_ended=n // 2)
                            proxy.take_log()
                            run = {"killed_run_seconds": lost["seconds"], "resume": _run(cmd, env, head, log, ok=(0, 1))}
                    counts, requests = proxy.take_log()
                    store = [p for _, p in requests if _is_store(p)]
                    run["s3_requests_per_trial"] = round(len(store) / n, 1)
                    run["s3_requests_per_trial_by_kind"] = {k: round(v / n, 2) for k, v in _kinds(requests).items()}
                    stats = work / f"{how}-{n}.json"
                    if stats.exists():
                        run["driver_steps"] = _stats(stats)
                    run["stored_bytes"] = _sizes(BUCKET, f"store/{name}")
                    if how == "tuner":
                        started = time.time()
                        report.write_report(storage.Location(f"s3://{BUCKET}/store"), name)
                        run["report_seconds"] = round(time.time() - started, 1)
                        summary = json.loads(storage.read_bytes(f"s3://{BUCKET}/store/{name}/summary.json"))
                        run["trials_in_summary"] = len(summary["trials"])
                        run["epochs_spent"] = summary["epochs_spent"]
                    figures[how] = run
                finally:
                    head.stop()
            tuner_run, plain, lost = figures["tuner"], figures.get("plain_ray_tune"), figures["tuner_lost_driver"]
            figures["per_trial"] = {
                "tuner_seconds": round(tuner_run["seconds"] / n, 3),
                "tuner_s3_requests": tuner_run["s3_requests_per_trial"],
                "tuner_experiment_state_bytes": round(tuner_run["stored_bytes"]["experiment_state.json"] / n),
                "tuner_keeper_rungs_bytes": round(tuner_run["stored_bytes"]["callback-states.pkl"] / n, 1),
            }
            if plain:
                figures["tuner_vs_plain_wall"] = round(tuner_run["seconds"] / plain["seconds"], 3)
                figures["per_trial"].update(plain_seconds=round(plain["seconds"] / n, 3),
                                            plain_s3_requests=plain["s3_requests_per_trial"])
            # What the lost driver's resume costs before its first trial event, beyond a fresh start's.
            figures["resume_first_event_minus_fresh_seconds"] = round(
                lost["resume"]["first_trial_event_seconds"] - tuner_run["first_trial_event_seconds"], 1)
            out["runs"][f"trials_{n}"] = figures
            print(json.dumps({f"trials_{n}": figures}), file=sys.stderr, flush=True)
    return out

