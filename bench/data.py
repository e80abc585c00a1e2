"""`bench/run.py data`: streaming each Train worker's shard from S3, against the in-memory
path and Ray Data, on MNIST enlarged 1x, 5x and 20x (the real training images repeated,
each copy shifted by up to 2 pixels at random, seeded), staged on a moto S3 server behind
a counting proxy (``s3count.py``).

- Per scale, `tuner`'s streaming input in a 2-worker Ray Train run (``data_trial.py``):
  samples/s, each worker's peak RSS, and S3 requests and bytes per worker-epoch.
- At 1x, the same run with the in-memory input (the baseline: whole split in NumPy) and
  with Ray Data (``get_dataset_shard().to_tf()``); Ray Data at the largest scale too.
- At 1x, 2 such runs at once reading the same dataset (each a Ray Tune trial that builds
  its own trainer, as `tuner` runs trials), with `tuner`'s input and with Ray Data.
- A real `tuner train` (2 workers) at 1x through the proxy: S3 requests per trial-epoch
  for checkpoints and results, and data reads per worker-epoch.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUCKET = "bench"


def _enlarge(x, y, scale: int, seed: int = 0):
    """``scale`` copies of the images: the first as it is, the others each image shifted
    by a seeded (dy, dx) in [-2, 2]^2 (zeros shifted in)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    xs, ys = [x], [y]
    for _ in range(scale - 1):
        shifts = rng.integers(-2, 3, size=(len(x), 2))
        copy = np.zeros_like(x)
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                rows = np.flatnonzero((shifts[:, 0] == dy) & (shifts[:, 1] == dx))
                src = x[rows]
                dst = np.zeros_like(src)
                h, w = x.shape[1:]
                dst[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
                    src[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
                copy[rows] = dst
        xs.append(copy)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def _per(counts: dict, prefix: str, divisor: float) -> dict:
    """Requests and bytes read (GET) and written (PUT/POST) under ``prefix``, per unit."""
    get = [v for (m, p), v in counts.items() if p.startswith(prefix) and m in ("GET", "HEAD")]
    put = [v for (m, p), v in counts.items() if p.startswith(prefix) and m in ("PUT", "POST", "DELETE")]
    return {
        "requests": round(sum(v["requests"] for v in get + put) / divisor, 1),
        "get_requests": round(sum(v["requests"] for v in get) / divisor, 1),
        "mb_read": round(sum(v["bytes_out"] for v in get) / divisor / 2**20, 2),
        "mb_written": round(sum(v["bytes_in"] for v in put) / divisor / 2**20, 2),
    }


@contextlib.contextmanager
def _counted_s3():
    """A moto S3 server with the bucket BUCKET behind a ``CountingProxy``, this process's
    AWS_* variables pointing at the proxy while inside; yields (proxy, moto's PID)."""
    import boto3

    sys.path.insert(0, str(HERE))
    from reliability import _free_port
    from s3count import CountingProxy

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    proxy, saved = None, {}
    try:
        proxy = CountingProxy(f"http://127.0.0.1:{port}").start()
        env = {"AWS_ENDPOINT_URL": proxy.url, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
               "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required"}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        for attempt in range(100):
            try:
                boto3.client("s3", endpoint_url=proxy.url, region_name="us-east-1").create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if attempt == 99:
                    raise
                time.sleep(0.1)
        yield proxy, server.pid
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        if proxy is not None:
            proxy.stop()
        server.terminate()
        server.wait()


def data(work: Path, mnist: str | None, smoke: bool) -> dict:
    from tuner import data as tdata

    scales = [1] if smoke else [1, 5, 20]
    with _counted_s3() as (proxy, server_pid):
        base = tdata.mnist_dataset(tdata.source_for(mnist or "builtin"), 1 / 12)
        out: dict = {"storage": "moto S3 on 127.0.0.1 behind a counting proxy", "workers": 2,
                     "per_worker_batch": 128, "shuffle_buffer": "4 row groups, at most 64 MiB of features",
                     "scales": {}}
        for scale in scales:
            x, y = _enlarge(*base.splits["train"], scale)
            prepared = tdata.Prepared({**base.splits, "train": (x, y)}, dict(base.meta))
            prepared._stats = base.stats()
            uri = f"s3://{BUCKET}/datasets/x{scale}"
            started = time.time()
            manifest = prepared.write(uri)
            train = manifest["splits"]["train"]
            out["scales"][f"x{scale}"] = {
                "train_rows": train["rows"], "files": len(train["files"]),
                "row_groups": sum(len(f["row_groups"]) for f in train["files"]),
                "rows_per_row_group": train["files"][0]["row_groups"][0],
                "stage_seconds": round(time.time() - started, 1)}
            if scale == 1 and not smoke:
                # The same files on local disk: the streaming reader without a storage
                # server on the machine's 2 cores (moto and the proxy are Python).
                prepared.write(str(work / "datasets-x1"))
            del x, y, prepared
        proxy.take()
        epochs = 1 if smoke else 3
        # A smoke run keeps `tuner`'s streamed input alone (and the `tuner train` below):
        # the in-memory input (the full run's baseline), Ray Data's and two runs at once
        # (the last number: how many) are the comparisons, three more Ray starts.
        runs = [("stream", 1, epochs)]
        if not smoke:
            runs = [("memory", 1, epochs), *runs, ("raydata", 1, epochs), ("stream", 5, 2), ("stream", 20, 2),
                    ("raydata", 20, 2), ("stream", 1, epochs, 2), ("raydata", 1, epochs, 2)]
        for mode, scale, n, *concurrent in runs:
            if (mode, scale, concurrent) == ("raydata", 1, []) and not smoke:
                out["stream_local_disk"] = {"x1": _trial(work, "stream", str(work / "datasets-x1"), epochs, smoke)}
            trials = concurrent[0] if concurrent else 1
            server_cpu = _cpu_seconds(server_pid) + time.process_time()
            figures = _trial(work, mode, f"s3://{BUCKET}/datasets/x{scale}", n, smoke, trials)
            # CPU the storage side took from the trial: moto, and the proxy's threads here.
            figures["storage_cpu_seconds"] = round(_cpu_seconds(server_pid) + time.process_time() - server_cpu, 1)
            figures["s3_per_worker_epoch"] = _per(proxy.take(), f"{BUCKET}/datasets", 2 * n * trials)
            # What one worker's share of the staged (compressed) training files weighs.
            figures["s3_per_worker_epoch"]["share_mb"] = round(_split_bytes(scale, "train") / 2 / 2**20, 2)
            out.setdefault(f"{mode}_{trials}_at_once" if concurrent else mode, {})[f"x{scale}"] = figures
        out["tuner_train_x1"] = _tuner_run(work, smoke, proxy)
    _ratios(out, scales)
    return out


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _split_bytes(scale: int, split: str) -> int:
    import boto3

    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix=f"datasets/x{scale}/{split}/")
    return sum(o["Size"] for page in pages for o in page.get("Contents", []))


def _ratios(out: dict, scales: list[int]) -> None:
    one = out["stream"]["x1"]
    if "memory" in out:  # not in a smoke run
        out["stream_vs_memory_samples_per_second_x1"] = round(
            one["samples_per_second"] / out["memory"]["x1"]["samples_per_second"], 3)
    if "stream_local_disk" in out:  # not in a smoke run
        out["stream_local_disk_vs_memory_samples_per_second_x1"] = round(
            out["stream_local_disk"]["x1"]["samples_per_second"] / out["memory"]["x1"]["samples_per_second"], 3)
    if "raydata" in out:  # not in a smoke run
        out["raydata_vs_stream_samples_per_second_x1"] = round(
            out["raydata"]["x1"]["samples_per_second"] / one["samples_per_second"], 3)
    for mode in ("stream", "raydata"):
        if f"{mode}_2_at_once" not in out:  # a smoke run
            continue
        # Two trials at once against one: the sum of their samples/s, and the peak RSS of
        # all Ray processes.
        two, single = out[f"{mode}_2_at_once"]["x1"], out[mode]["x1"]
        out[f"{mode}_2_at_once_vs_1_samples_per_second_x1"] = round(
            two["samples_per_second"] / single["samples_per_second"], 3)
        out[f"{mode}_2_at_once_vs_1_ray_processes_rss_x1"] = round(
            two["ray_processes_peak_rss_mb"] / single["ray_processes_peak_rss_mb"], 3)
    if "raydata_2_at_once" in out:
        out["raydata_vs_stream_2_at_once_samples_per_second_x1"] = round(
            out["raydata_2_at_once"]["x1"]["samples_per_second"] / out["stream_2_at_once"]["x1"]["samples_per_second"],
            3)
    largest = f"x{scales[-1]}"
    out[f"stream_worker_rss_{largest}_vs_x1"] = round(
        max(out["stream"][largest]["worker_peak_rss_mb"]) / max(one["worker_peak_rss_mb"]), 3)
    if "memory" in out:
        out["memory_worker_rss_x1_vs_stream_x1"] = round(
            max(out["memory"]["x1"]["worker_peak_rss_mb"]) / max(one["worker_peak_rss_mb"]), 3)


def _trial(work: Path, mode: str, dataset: str, epochs: int, smoke: bool, trials: int = 1) -> dict:
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        cfg = {"mode": mode, "dataset": dataset, "epochs": epochs, "batch": 128, "out": tmp, "trials": trials}
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(HERE.parent)}
        proc = subprocess.run([sys.executable, str(HERE / "data_trial.py"), json.dumps(cfg)], capture_output=True,
                              text=True, env=env, timeout=3600)
        if proc.returncode != 0:
            raise SystemExit(f"data_trial {mode} {dataset} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        # The figures are the last JSON line (Ray may print after it).
        return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


def _is_store(path: str) -> bool:
    """Whether a request is for the experiment's storage (under <bucket>/store/): a key
    there, a listing of a prefix there, or a batch delete (only checkpoints are deleted)."""
    where, _, query = path.partition("?")
    if where.startswith(f"/{BUCKET}/store/"):
        return True
    params = urllib.parse.parse_qs(query, keep_blank_values=True)
    return where.rstrip("/") == f"/{BUCKET}" and (
        "delete" in params or params.get("prefix", [""])[0].startswith("store/"))


def _store_kind(path: str) -> str:
    """What a request under <bucket>/store/<name>/ is for."""
    where, _, query = path.partition("?")
    params = urllib.parse.parse_qs(query, keep_blank_values=True)
    if where.rstrip("/") == f"/{BUCKET}":  # bucket-level: a listing or a batch delete
        if "delete" in params:
            return "checkpoints"
        where = f"/{BUCKET}/" + params["prefix"][0]
        listing = "listings"
    else:
        listing = None
    key = urllib.parse.unquote(where).strip("/").split("/")[3:]
    if listing and key and key[0] == "runs":
        return "checkpoints"
    if listing:
        return listing
    if not key or where.endswith("/"):
        return "directory_markers"
    if key[0] == "runs":
        return "checkpoints"  # Ray Train's: checkpoint folders, its snapshot and markers
    if len(key) > 1:
        return "trial_logs"  # Tune's per-trial result.json, progress.csv, events, params
    if key[0].split("-")[0].split(".")[0] in ("spec", "summary", "results", "best_model", "report"):
        return "tuner_outputs"
    if key[0] == "lease.json":  # one run of the experiment at a time (tuner.lease)
        return "lease"
    return "tune_state"


def _kinds(log: list) -> dict:
    """Requests under the store, by ``_store_kind``, of a proxy's (method, path) log."""
    kinds: dict = {}
    for _, path in log:
        if _is_store(path):
            kinds[_store_kind(path)] = kinds.get(_store_kind(path), 0) + 1
    return kinds


def _tuner_run(work: Path, smoke: bool, proxy) -> dict:
    """A real `tuner train` through the proxy: S3 per trial-epoch outside the dataset
    (checkpoints, Tune's state, results), by kind, and the dataset's reads per
    worker-epoch. Without --smoke a 1-epoch run too: (N-epoch - 1-epoch) / (N - 1) is the
    steady cost of one more epoch, without the run's start and end."""
    import pyarrow.parquet as pq
    from common import NAME, tuner

    from tuner import storage

    def run_for(epochs: int) -> tuple[dict, list, dict, list]:
        name = f"{NAME['data']}-tuner-{epochs}"
        run = tuner(["train", "--config", "seed-baseline", "--name", name, "--storage", f"s3://{BUCKET}/store",
                     "--set", f"data.uri=s3://{BUCKET}/datasets/x1", "--set", f"asha.max_t={epochs}",
                     "--set", f"asha.grace_period={epochs}", "--set", "search.space.batch_size=128",
                     "--set", "scaling.workers=2", "--set", "scaling.cpus_per_worker=1"], work)
        counts, log = proxy.take_log()
        fs, path = storage.filesystem(f"s3://{BUCKET}/store/{name}/results.parquet")
        rows = pq.read_table(path, filesystem=fs).to_pylist()
        proxy.take()  # the bench's own read
        return run, rows, counts, log

    epochs = 1 if smoke else 4
    run, rows, counts, log = run_for(epochs)
    store = [path for _, path in log if _is_store(path)]
    kinds = _kinds(log)
    out = {
        "epochs": epochs, "seconds": round(run["seconds"], 1), "driver_peak_rss_mb": round(run["driver_peak_rss_mb"]),
        "worker_peak_rss_mb": round(max(r["peak_rss_mb"] for r in rows)),
        "samples_per_second": round(max(r["samples_per_second"] for r in rows)),
        "s3_requests_per_trial_epoch_store": round(len(store) / epochs, 1),
        "s3_requests_per_trial_epoch_store_by_kind": {k: round(v / epochs, 1) for k, v in sorted(kinds.items())},
        "s3_per_worker_epoch_dataset": _per(counts, f"{BUCKET}/datasets", 2 * epochs),
    }
    if not smoke:
        _, _, _, one = run_for(1)
        extra = len(store) - sum(1 for _, path in one if _is_store(path))
        out["s3_requests_per_extra_trial_epoch_store"] = round(extra / (epochs - 1), 1)
    return out


def s3(work: Path, mnist: str | None, smoke: bool) -> dict:
    """S3 requests outside the dataset (checkpoints, results, Tune's state), by kind, of
    real `tuner tune` runs through a counting proxy in front of moto: 1 and 4 trials of
    one epoch (what one more trial costs, the run's own start and end left out: ASHA
    stops most trials at their first rung), one trial of 1 and 4 epochs (what one more
    epoch costs), and an ASHA experiment (8 trials, up to 9 epochs, a rung at 1, 3 and 9:
    what a trial-epoch costs over a whole run). One trial at a time, 2 workers each."""
    import boto3
    from common import NAME, tuner

    from tuner import data as tdata

    many = 2 if smoke else 4

    def run(trials: int, epochs: int, grace: int | None = None, label: str = "") -> tuple[dict, int]:
        """(requests by kind, epochs the trials ran)"""
        name = f"{NAME['s3']}-{label or f'{trials}x{epochs}'}"
        tuner(["tune", "--config", "quick", "--name", name, "--storage", f"s3://{BUCKET}/store",
               "--set", f"data.uri=s3://{BUCKET}/datasets/x1", "--set", f"search.num_samples={trials}",
               "--set", f"asha.max_t={epochs}", "--set", f"asha.grace_period={grace or epochs}",
               "--set", "asha.reduction_factor=3",
               "--set", "search.space.batch_size=128", "--set", "scaling.max_concurrent_trials=1"], work)
        kinds = _kinds(proxy.take_log()[1])
        client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")
        summary = json.loads(client.get_object(Bucket=BUCKET, Key=f"store/{name}/summary.json")["Body"].read())
        proxy.take()  # that read is the benchmark's, not the run's
        return kinds, summary["epochs_spent"]

    def per(more: dict, one: dict, n: int) -> dict:
        kinds = {k: round((more.get(k, 0) - one.get(k, 0)) / n, 1) for k in sorted(set(more) | set(one))}
        return {"requests": round(sum(kinds.values()), 1), "by_kind": kinds}

    with _counted_s3() as (proxy, _):
        tdata.mnist_dataset(tdata.source_for(mnist or "builtin"), 1 / 12).write(f"s3://{BUCKET}/datasets/x1")
        proxy.take()
        one, _ = run(1, 1)
        trials, _ = run(many, 1)
        epochs, _ = run(1, many)
        asha, asha_epochs = run(3, 3, 1, "asha") if smoke else run(8, 9, 1, "asha")
    extra_trial, extra_epoch = per(trials, one, many - 1), per(epochs, one, many - 1)
    # A run's own start and end (pre-flight, spec, Tune's first saves, results, the best
    # model, summary): what a run of one 1-epoch trial costs beyond one more such trial.
    fixed = {k: v - extra_trial["by_kind"].get(k, 0) for k, v in one.items()}
    trial_files = ("checkpoints", "trial_logs")  # a trial's checkpoints and results
    return {
        "storage": "moto S3 on 127.0.0.1 behind a counting proxy", "workers": 2, "goal_per_trial_epoch": 10,
        "run_of_one_1_epoch_trial": {"requests": sum(one.values()), "by_kind": dict(sorted(one.items()))},
        "per_extra_1_epoch_trial": extra_trial,
        "per_extra_1_epoch_trial_checkpoints_and_results": round(sum(extra_trial["by_kind"].get(k, 0)
                                                                     for k in trial_files), 1),
        "per_extra_epoch": extra_epoch,
        "per_extra_epoch_checkpoints_and_results": round(sum(extra_epoch["by_kind"].get(k, 0) for k in trial_files), 1),
        "asha_run": {
            "trials": 3 if smoke else 8, "epochs": asha_epochs, "requests": sum(asha.values()),
            "by_kind": dict(sorted(asha.items())),
            "per_trial_epoch": round(sum(asha.values()) / asha_epochs, 2),
            "per_trial_epoch_without_the_runs_start_and_end": round(
                (sum(asha.values()) - sum(fixed.values())) / asha_epochs, 2),
            "per_trial_epoch_checkpoints_and_results": round(sum(asha.get(k, 0) for k in trial_files) / asha_epochs, 2),
        },
    }
