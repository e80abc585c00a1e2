"""Benchmarks of the tuning job, each a ratio against a baseline measured in the same run.

    python bench/run.py b1 --mnist ../shared/data/mnist   # throughput: 1-worker trial vs bare model.fit
    python bench/run.py b2                                # fixed overhead per trial (start -> first step)
    python bench/run.py b3 --mnist ../shared/data/mnist   # seed-baseline vs the plain Keras tutorial
    python bench/run.py tuned --mnist ../shared/data/mnist # the `mnist` preset's best test accuracy (~10 min)
    python bench/run.py cnn --mnist ../shared/data/mnist   # the `mnist-cnn` preset's best test accuracy (~1 h)
    python bench/run.py all --mnist ../shared/data/mnist
    python bench/run.py reliability                       # faults: worker, driver, signals, job stop, S3 outage (~15 min)
    python bench/run.py economy --mnist ../shared/data/mnist  # asha, asha_promote, full-budget FIFO: same 27 configs (~40 min)
    python bench/run.py scaling --mnist ../shared/data/mnist  # 1/2/4 workers, with and without the linear rule
    python bench/run.py ckpt --mnist ../shared/data/mnist     # checkpoint save + upload to S3 vs epoch time
    python bench/run.py peers --mnist ../shared/data/mnist    # vs Keras Tuner, Optuna, plain Ray Tune (~40 min)
    python bench/run.py searchers --mnist ../shared/data/mnist  # random, quasi_random, tpe, bayesian (~40 min)
    python bench/run.py data --mnist ../shared/data/mnist     # streaming vs in-memory vs Ray Data, 1x/5x/20x MNIST (~20 min)
    python bench/run.py pbt --mnist ../shared/data/mnist      # PBT and PB2 vs ASHA at about the same worker-seconds (~40 min)
    python bench/run.py warm --mnist ../shared/data/mnist     # a warm-started second run vs a cold one (~20 min)
    python bench/run.py b1 --smoke                        # tiny and quick, on the shipped subset

Each run prints its figures as JSON and appends them, with the date, the machine and the
command, to docs/benchmarks/<name>.md (not with --smoke); docs/benchmarks.md has each
benchmark's current figure and goal.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DATASETS_VAR, NAME, experiment, stage, tuner  # bench/ is on the path: run as a script

REPO = Path(__file__).resolve().parent.parent
RECORDS = REPO / "docs" / "benchmarks"  # <name>.md: each benchmark's raw records


BARE = r'''
import json, sys, time
import numpy as np, tensorflow as tf, tf_keras
from tuner import data, models
cfg = json.loads(sys.argv[1])
tf_keras.utils.set_random_seed(0)
x, y = data.load_split(cfg["dataset"], "train")
if cfg.get("full_train"):  # the tutorial trains on all 60,000 images
    xv, yv = data.load_split(cfg["dataset"], "validation")
    x, y = np.concatenate([x, xv]), np.concatenate([y, yv])
xt, yt = data.load_split(cfg["dataset"], "test")
x, xt = x.astype("float32") / 255.0, xt.astype("float32") / 255.0
net = models.mnist_mlp({"width": 128, "depth": 1, "dropout": 0.2}, models.InputSpec((28, 28), num_classes=10))
lr = cfg["lr"]
if cfg.get("decay_steps"):
    lr = tf_keras.optimizers.schedules.ExponentialDecay(lr, cfg["decay_steps"], 0.5, staircase=True)
net.compile(tf_keras.optimizers.Adam(lr), tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
times = []
class T(tf_keras.callbacks.Callback):
    def on_epoch_begin(self, e, logs=None): self.t = time.time()
    def on_epoch_end(self, e, logs=None): times.append(time.time() - self.t)
net.fit(x, y, batch_size=cfg["batch"], epochs=cfg["epochs"], verbose=0, callbacks=[T()])
_, acc = net.evaluate(xt, yt, verbose=0)
peak = None
if cfg.get("peak"):  # float32 matmul throughput of this process: the machine's practical peak
    n = 2048
    a, b = tf.random.normal([n, n]), tf.random.normal([n, n])
    mm = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))
    mm(a, b).numpy()
    best = min(
        (lambda t0: (mm(a, b).numpy(), time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(10))
    peak = 2 * n**3 / best
print(json.dumps({"epoch_seconds": times, "rows": len(y), "test_accuracy": acc, "peak_flops": peak}))
'''


def bare_fit(cfg: dict) -> dict:
    """A plain single-process tf_keras ``model.fit`` in a fresh process."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, "-c", BARE, json.dumps(cfg)], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def mlp_train_flops(width: int, depth: int, inputs: int = 784, classes: int = 10) -> int:
    """FLOPs to train one sample of the Dense MLP: 6 per weight (forward 2 per
    multiply-add; backward 2 for the weight gradient and 2 for the input gradient), but 4
    in the first layer, whose input gradient TensorFlow never computes; biases, ReLU and
    dropout are noise."""
    return 4 * inputs * width + 6 * ((depth - 1) * width * width + width * classes)


def b1(work: Path, mnist: str | None, smoke: bool) -> dict:
    """Steady-state samples/s: a 1-worker trial vs bare model.fit, same model, batch and data;
    and both against the machine's float32 matmul peak (the physical-limit ratio)."""
    dataset, batch, epochs = stage(work, mnist), 128, 2 if smoke else 3
    bare = bare_fit({"dataset": dataset, "batch": batch, "epochs": epochs, "lr": 1e-3, "peak": True})
    bare_sps = bare["rows"] / min(bare["epoch_seconds"][1:])
    run = tuner(["train", "--config", "seed-baseline", "--name", NAME["b1"], "--storage", str(work / "store"),
                 "--set", f"data.uri={dataset}", "--set", f"asha.max_t={epochs}", "--set", f"asha.grace_period={epochs}",
                 "--set", "search.space.schedule=constant", "--set", f"search.space.batch_size={batch}",
                 "--set", "scaling.cpus_per_worker=2"], work)
    _, rows = experiment(work / "store", NAME["b1"])
    # Steps x global batch = ceil(rows / batch) * batch: the trial's epoch is a hair
    # longer than the bare one (the last batch is full), which favours the bare run.
    trial_sps = max(r["samples_per_second"] for r in rows if r["epoch"] > 1)
    return {
        "batch": batch, "epochs": epochs, "bare_samples_per_second": round(bare_sps),
        "trial_samples_per_second": round(trial_sps), "ratio": round(trial_sps / bare_sps, 3),
        # The MLP-128 training math per second against a 2048^2 float32 matmul's.
        "peak_gflops": round(bare["peak_flops"] / 1e9, 1),
        "train_gflop_per_sample": mlp_train_flops(128, 1) / 1e9,
        "bare_fraction_of_peak": round(bare_sps * mlp_train_flops(128, 1) / bare["peak_flops"], 3),
        "trial_fraction_of_peak": round(trial_sps * mlp_train_flops(128, 1) / bare["peak_flops"], 3),
        "worker_peak_rss_mb": round(max(r["peak_rss_mb"] for r in rows)),
        "driver_peak_rss_mb": round(run["driver_peak_rss_mb"]),
    }


def b2(work: Path, mnist: str | None, smoke: bool) -> dict:
    """Fixed overhead per trial: trial function start -> first training step.

    With 2 workers per trial (the figure the goal is about) and with 1, which shows how
    much of it is the two workers competing for this machine's 2 cores.
    """
    trials = 1 if smoke else 5
    out = {}
    for workers in (2,) if smoke else (2, 1):  # a smoke run: the goal's 2 workers alone
        name = f"{NAME['b2']}-w{workers}"
        run = tuner(["tune", "--config", "quick", "--name", name, "--storage", str(work / "store"),
                     "--set", f"search.num_samples={trials}", "--set", "asha.max_t=1",
                     "--set", "asha.grace_period=1", "--set", f"scaling.workers={workers}",
                     "--set", "scaling.max_concurrent_trials=1"], work)
        _, rows = experiment(work / "store", name)
        firsts = [r for r in rows if r["startup_seconds"] is not None]

        def median(key):
            return round(statistics.median(r[key] for r in firsts), 2)

        out[f"workers_{workers}"] = {
            "trials": trials,
            "startup_seconds": sorted(round(r["startup_seconds"], 2) for r in firsts),
            "median_startup_seconds": median("startup_seconds"),
            # Where it goes: driver start -> worker process started -> worker function
            # entered -> TensorFlow imported -> model ready -> first step.
            "median_process_seconds": median("startup_process_seconds"),
            "median_worker_entered_seconds": median("startup_worker_entered_seconds"),
            "median_imported_seconds": median("startup_imported_seconds"),
            "median_ready_seconds": median("startup_ready_seconds"),
            # CPU time one worker process spent up to its first step (all its threads).
            "median_worker_cpu_seconds": median("startup_cpu_seconds"),
            "experiment_seconds": round(run["seconds"], 1),
            "worker_peak_rss_mb": round(max(r["peak_rss_mb"] for r in rows)),
            "driver_peak_rss_mb": round(run["driver_peak_rss_mb"]),
        }
    return out


def b3(work: Path, mnist: str | None, smoke: bool) -> dict:
    """seed-baseline through tuner vs the plain Keras tutorial, both on full MNIST."""
    dataset = stage(work, mnist)
    epochs = 1 if smoke else 10
    bare = bare_fit({"dataset": dataset, "batch": 32, "epochs": epochs, "lr": 1e-3, "decay_steps": 1000, "full_train": True})
    run = tuner(["train", "--config", "seed-baseline", "--name", NAME["b3"], "--storage", str(work / "store"),
                 "--set", f"data.uri={dataset}", "--set", f"asha.max_t={epochs}", "--set", f"asha.grace_period={epochs}",
                 "--set", "scaling.cpus_per_worker=2"], work)
    summary, _ = experiment(work / "store", NAME["b3"])
    ours = summary["best"]["test_accuracy"]
    return {
        "epochs": epochs, "tutorial_test_accuracy": round(bare["test_accuracy"], 4),
        "tuner_seed_baseline_test_accuracy": round(ours, 4),
        "difference_pt": round(100 * (ours - bare["test_accuracy"]), 2),
        "tuner_seconds": round(run["seconds"], 1), "tutorial_seconds": round(sum(bare["epoch_seconds"]), 1),
    }


def tuned(work: Path, mnist: str | None, smoke: bool, preset: str = "mnist", bench: str = "tuned") -> dict:
    """The default tuning preset (`mnist`) on full MNIST with a 10-epoch budget."""
    if smoke and preset == "mnist":
        # The same function runs in cnn's smoke run; the `mnist` preset in economy's,
        # searchers', peers' and warm's.
        return {"skipped": "smoke run: cnn's runs this function, economy's and others the preset"}
    dataset = stage(work, mnist)
    extra = ["--set", "search.num_samples=1", "--set", "asha.max_t=1"] if smoke else []
    if smoke and preset == "mnist-cnn":  # one small ConvNet, one epoch
        extra += ["--set", "search.num_samples=1", "--set", "search.space.filters=8", "--set", "search.space.kernel_size=3"]
    run = tuner(["tune", "--config", preset, "--name", NAME[bench], "--storage", str(work / "store"),
                 "--set", f"data.uri={dataset}", *extra], work)
    summary, rows = experiment(work / "store", NAME[bench])
    best = summary["best"]
    return {
        "trials": len(summary["trials"]), "epochs_spent": summary["epochs_spent"],
        "full_budget_epochs": len(summary["trials"]) * summary["spec"]["asha"]["max_t"],
        "best_test_accuracy": round(best["test_accuracy"], 4), "best_val_accuracy": round(best["val_accuracy"], 4),
        "best_epoch": best["epoch"], "best_config": best["config"],
        "search_space": summary["spec"]["search"]["space"],
        "wall_seconds": round(run["seconds"], 1),
        "worker_peak_rss_mb": round(max(r["peak_rss_mb"] for r in rows)),
        "driver_peak_rss_mb": round(run["driver_peak_rss_mb"]),
    }


def cnn(work: Path, mnist: str | None, smoke: bool) -> dict:
    """The `mnist-cnn` preset (tuner.models:mnist_cnn) on full MNIST with a 10-epoch budget."""
    return tuned(work, mnist, smoke, preset="mnist-cnn", bench="cnn")


# Economy: the `mnist` preset's space with narrower layers (27 x 9 full-budget epochs
# on 2 cores), one batch size, so the two runs differ only in the scheduler.
ECONOMY_SPACE = ["--set", "search.space.batch_size=128", "--set", "search.space.width={choice: [128, 256, 512]}",
                 "--set", "search.space.depth={choice: [1, 2]}"]


def economy(work: Path, mnist: str | None, smoke: bool) -> dict:
    """The same configurations (one seed) under Ray's ASHA (``asha``: decides at once,
    never pauses), the paper's promotion rule (``asha_promote``: trials wait, paused, at a
    rung until promoted) and full-budget FIFO."""
    dataset = stage(work, mnist)
    samples, max_t = (1, 1) if smoke else (27, 9)
    # A smoke run keeps the comparison working with Ray's ASHA alone against FIFO
    # (tests/integration/test_promote.py runs asha_promote).
    compared = ("asha",) if smoke else ("asha", "asha_promote")
    out = {}
    for how in (*compared, "fifo"):
        name = f"{NAME['economy']}-{how}"
        run = tuner(["tune", "--config", "mnist", "--name", name, "--storage", str(work / "store"),
                     "--set", f"data.uri={dataset}", "--set", f"search.num_samples={samples}",
                     "--set", f"asha.max_t={max_t}", "--set", "asha.grace_period=1",
                     "--set", "asha.reduction_factor=3", "--set", f"scheduler.kind={how}", *ECONOMY_SPACE], work)
        summary, rows = experiment(work / "store", name)
        failed = [t["trial_id"] for t in summary["trials"] if t["status"] != "terminated"]
        if failed:
            raise SystemExit(f"economy: trials {failed} of {name} failed; see {work / 'tuner.log'}")
        out[how] = {
            "configs": sorted(json.dumps(t["config"], sort_keys=True) for t in summary["trials"]),
            "trials": len(summary["trials"]),
            "epochs_spent": summary["epochs_spent"],
            "trials_per_epoch_reached": {e: sum(t["epochs"] >= e for t in summary["trials"]) for e in (1, 3, max_t)},
            # Worker-group starts after a trial's first: with asha_promote, its resumes.
            "worker_group_restarts": sum(t["restarts"] for t in summary["trials"]),
            # Worker processes held, start-up included: trial running time x workers.
            "worker_seconds": round(sum(t["wall_seconds"] * t["workers"] for t in summary["trials"]), 1),
            "wall_seconds": round(run["seconds"], 1),
            "best_test_accuracy": round(summary["best"]["test_accuracy"], 4),
            "best_val_accuracy": round(summary["best"]["val_accuracy"], 4),
            "best_epoch": summary["best"]["epoch"],
        }
    fifo = out["fifo"]
    configs = fifo.pop("configs")
    if any(out[how].pop("configs") != configs for how in compared):
        raise SystemExit("economy: the schedulers ran different configurations; keep search.seed and the space fixed")
    ratios = {
        how: {
            "epochs_ratio": round(out[how]["epochs_spent"] / fifo["epochs_spent"], 3),
            "worker_seconds_ratio": round(out[how]["worker_seconds"] / fifo["worker_seconds"], 3),
            "wall_ratio": round(out[how]["wall_seconds"] / fifo["wall_seconds"], 3),
            "best_test_accuracy_difference_pt": round(
                100 * (out[how]["best_test_accuracy"] - fifo["best_test_accuracy"]), 2),
        } for how in compared
    }
    return {"max_t": max_t, "reduction_factor": 3, "grace_period": 1, **out, "against_fifo": ratios}


def scaling(work: Path, mnist: str | None, smoke: bool) -> dict:
    """One configuration with 1, 2 and 4 workers (per-worker batch fixed, the global batch
    grows), without and with the linear scaling rule plus one epoch of warmup. The two
    cores are split evenly among the workers."""
    dataset = stage(work, mnist)
    epochs, counts = (2, (2,)) if smoke else (10, (1, 2, 4))
    out = {}
    # A smoke run keeps the loop working with the linear rule and 2 workers alone.
    for rule in ("linear",) if smoke else ("none", "linear"):
        runs = {}
        for workers in counts:
            name = f"{NAME['scaling']}-{rule}-w{workers}"
            warmup = ["--set", "training.warmup_epochs=1"] if rule == "linear" else []
            tuner(["train", "--config", "seed-baseline", "--name", name, "--storage", str(work / "store"),
                   "--set", f"data.uri={dataset}", "--set", f"asha.max_t={epochs}", "--set", f"asha.grace_period={epochs}",
                   "--set", "search.space.decay_epochs=3", "--set", "search.space.staircase=false",
                   "--set", f"training.lr_scaling={rule}", "--set", "training.reference_batch=32", *warmup,
                   "--set", f"scaling.workers={workers}", "--set", f"scaling.cpus_per_worker={2 / workers:g}"], work)
            summary, rows = experiment(work / "store", name)
            curve = sorted(rows, key=lambda r: r["epoch"])
            runs[f"workers_{workers}"] = {
                "global_batch": curve[-1]["global_batch"],
                "test_accuracy": round(summary["best"]["test_accuracy"], 4),
                "val_accuracy_per_epoch": [round(r["val_accuracy"], 4) for r in curve],
                "learning_rate_per_epoch": [round(r["learning_rate"], 6) for r in curve],
                "seconds_per_epoch": round(statistics.median(r["train_seconds"] for r in curve), 2),
            }
        accs = [r["test_accuracy"] for r in runs.values()]
        out[rule] = {**runs, "spread_pt": round(100 * (max(accs) - min(accs)), 2)}
    return {"epochs": epochs, "per_worker_batch": 32, **out}


def ckpt(work: Path, mnist: str | None, smoke: bool) -> dict:
    """Checkpoint cost: every epoch each worker saves the model, and rank 0's model and
    every rank's weight digest go to S3 (a moto server on 127.0.0.1). The same training
    twice: `checkpoint.upload=sync` (the report waits for the upload) and `async` (the
    upload runs while the next epoch trains). Per mode, the time training is held up
    (save + report) against the epoch's training time; and the whole epoch's seconds,
    async against sync, which shows what the background upload costs the training."""
    import socket

    import boto3

    dataset = stage(work, mnist)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        for _ in range(100):
            try:
                boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                             aws_access_key_id="bench", aws_secret_access_key="bench").create_bucket(Bucket="bench")
                break
            except Exception:
                time.sleep(0.1)
        epochs = 2 if smoke else 5
        import pyarrow.fs as pafs
        import pyarrow.parquet as pq

        fs = pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], access_key="bench", secret_key="bench",
                               region="us-east-1")
        modes = {}
        # A smoke run: `sync` alone (`async`, the default, is every other run's).
        for mode in ("sync",) if smoke else ("sync", "async"):
            name = f"{NAME['ckpt']}-{mode}"
            os.environ.update(env)
            try:
                tuner(["train", "--config", "seed-baseline", "--name", name, "--storage", "s3://bench/store",
                       "--set", f"data.uri={dataset}", "--set", f"asha.max_t={epochs}",
                       "--set", f"asha.grace_period={epochs}", "--set", "search.space.batch_size=128",
                       "--set", "scaling.workers=2", "--set", "scaling.cpus_per_worker=1",
                       "--set", f"checkpoint.upload={mode}"], work)
            finally:
                for key in env:
                    os.environ.pop(key, None)
            rows = sorted(pq.read_table(f"bench/store/{name}/results.parquet", filesystem=fs).to_pylist(),
                          key=lambda r: r["epoch"])
            modes[mode] = _ckpt_costs(rows)
    finally:
        server.terminate()
        server.wait()
    ratio = {"async_vs_sync_epoch_seconds": round(modes["async"]["median_epoch_seconds"]
                                                  / modes["sync"]["median_epoch_seconds"], 3)} if "async" in modes else {}
    return {"workers": 2, "global_batch": 256, "storage": "moto S3 on 127.0.0.1", **modes, **ratio}


def _ckpt_costs(rows: list[dict]) -> dict:
    """Per epoch: training, the save, and the report (epoch k's arrives with epoch k+1)."""
    per_epoch = [{"epoch": r["epoch"], "train_seconds": round(r["train_seconds"], 3),
                  "save_seconds": round(r["checkpoint_save_seconds"], 3),
                  "report_seconds": round(nxt["previous_report_seconds"], 3)}
                 for r, nxt in zip(rows, rows[1:])]
    fractions = [(e["save_seconds"] + e["report_seconds"]) / e["train_seconds"] for e in per_epoch]
    return {"per_epoch": per_epoch, "median_fraction_of_epoch": round(statistics.median(fractions), 4),
            "median_epoch_seconds": round(statistics.median(
                e["train_seconds"] + e["save_seconds"] + e["report_seconds"] for e in per_epoch), 3)}


SEARCHERS = ("random", "quasi_random", "tpe", "bayesian")


def searchers(work: Path, mnist: str | None, smoke: bool) -> dict:
    """The four search algorithms at one budget: 24 trials under ASHA (10-epoch max_t,
    grace 1, reduction factor 3), seed 0, on the economy space (2-worker trials). One run
    each: the spread between them is one seed's, not a ranking."""
    dataset = stage(work, mnist)
    samples, max_t = (1, 1) if smoke else (24, 10)
    out = {}
    for algorithm in SEARCHERS:
        if smoke and algorithm != "random":
            # Each algorithm's `tuner tune` runs in tests/integration/test_searchers.py;
            # the smoke run keeps this loop working with one.
            out[algorithm] = {"skipped": "smoke run: tests/integration/test_searchers.py runs it"}
            continue
        if algorithm == "bayesian" and importlib.util.find_spec("torch") is None:
            out[algorithm] = {"skipped": "PyTorch is not installed: pip install -e '.[bayesian]'"}
            continue
        name = f"{NAME['searchers']}-{algorithm}"
        run = tuner(["tune", "--config", "mnist", "--name", name, "--storage", str(work / "store"),
                     "--set", f"data.uri={dataset}", "--set", f"search.algorithm={algorithm}",
                     "--set", f"search.num_samples={samples}", "--set", "search.seed=0",
                     "--set", f"asha.max_t={max_t}", "--set", "asha.grace_period=1",
                     "--set", "asha.reduction_factor=3", *ECONOMY_SPACE], work)
        summary, _ = experiment(work / "store", name)
        failed = [t["trial_id"] for t in summary["trials"] if t["status"] != "terminated"]
        if failed:
            raise SystemExit(f"searchers: {algorithm} failed (trials {failed}); see {work / 'tuner.log'}")
        best = summary["best"]
        out[algorithm] = {"trials": len(summary["trials"]), "epochs_spent": summary["epochs_spent"],
                          "trials_to_max_t": sum(t["epochs"] == max_t for t in summary["trials"]),
                          "best_test_accuracy": round(best["test_accuracy"], 4),
                          "best_val_accuracy": round(best["val_accuracy"], 4),
                          "wall_seconds": round(run["seconds"], 1), "best_config": best["config"]}
    return {"samples": samples, "max_t": max_t, "reduction_factor": 3, **out}


def peers(work: Path, mnist: str | None, smoke: bool) -> dict:
    """`tuner` (ASHA, 2-worker trials) against Keras Tuner's Hyperband, Optuna + successive
    halving and plain Ray Tune + ASHA (single-process trials), and against the same
    2-worker trials under Ray Tune + Ray Train written by hand (`tuner`'s configurations),
    on the economy space with the same epoch budget per trial (bench/peers.py)."""
    dataset = stage(work, mnist)
    samples, max_t = (1, 2) if smoke else (27, 9)
    out = {}
    run = tuner(["tune", "--config", "mnist", "--name", NAME["peers"], "--storage", str(work / "store"),
                 "--set", f"data.uri={dataset}", "--set", f"search.num_samples={samples}",
                 "--set", f"asha.max_t={max_t}", "--set", "asha.grace_period=1", "--set", "asha.reduction_factor=3",
                 *ECONOMY_SPACE], work)
    summary, rows = experiment(work / "store", NAME["peers"])
    failed = [t["trial_id"] for t in summary["trials"] if t["status"] != "terminated"]
    if failed:
        raise SystemExit(f"peers: tuner trials {failed} failed; see {work / 'tuner.log'}")
    out["tuner"] = {"trials": len(summary["trials"]), "epochs_spent": summary["epochs_spent"],
                    "best_test_accuracy": round(summary["best"]["test_accuracy"], 4),
                    "best_val_accuracy": round(summary["best"]["val_accuracy"], 4),
                    "wall_seconds": round(run["seconds"], 1), "multi_worker_trials": True,
                    "best_epoch": summary["best"]["epoch"], "best_config": summary["best"]["config"]}
    # Keras 3 for the peers: nothing of tuner's tf_keras set-up in their environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "TF_USE_LEGACY_KERAS"))}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO / "bench"))
    # The hand-written multi-worker peer tries tuner's configurations, in tuner's order.
    # (A value tuner leaves unset, decay_epochs of a constant schedule, Tune draws unused.)
    drawn = [{k: t["config"][k] for k in PEER_SPACE_KEYS if t["config"].get(k) is not None}
             for t in sorted(summary["trials"], key=lambda t: t["trial_id"])]
    for peer in PEERS:
        extra = [json.dumps(drawn)] if peer == "raytune_train" else []
        proc = subprocess.run([sys.executable, str(REPO / "bench" / "peers.py"), peer, dataset, str(samples), str(max_t),
                               *extra], cwd=work, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"peer {peer} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        out[peer] = {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}
    if fair := out.get("raytune_train"):
        out["tuner_vs_raytune_train"] = {
            "wall": round(out["tuner"]["wall_seconds"] / fair["wall_seconds"], 3),
            "best_test_accuracy_points": round(100 * (out["tuner"]["best_test_accuracy"] - fair["best_test_accuracy"]), 2),
            **paired_val_accuracy(summary, rows, drawn, fair.pop("per_trial"))}
    return {"max_t": max_t, "reduction_factor": 3, "samples": samples, **out}


def paired_val_accuracy(summary: dict, rows: list[dict], drawn: list[dict], theirs: list[dict]) -> dict:
    """`tuner`'s trials against the hand-written peer's on the same configurations: the
    validation accuracy of each configuration at each epoch both ran it to, `tuner`'s
    minus the peer's, in points (mean, and its standard error over the pairs). Which
    trial is best hangs on a few of them; this compares every epoch both trained."""
    ours: dict = {}  # trial ID -> {epoch: validation accuracy}
    for r in rows:
        ours.setdefault(r["trial_id"], {})[r["epoch"]] = r["val_accuracy"]
    diffs = []
    # `drawn` lists the configurations in the order of tuner's sorted trial IDs.
    for trial_id, config in zip(sorted(t["trial_id"] for t in summary["trials"]), drawn):
        match = [t for t in theirs if all(t["config"].get(k) == v for k, v in config.items())]
        if match:
            curve = match[0]["val_accuracy"]
            diffs += [100 * (acc - curve[e - 1]) for e, acc in ours.get(trial_id, {}).items() if e <= len(curve)]
    if not diffs:
        return {}
    spread = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None
    return {"paired_val_accuracy_points": {"epochs_compared": len(diffs), "mean": round(statistics.mean(diffs), 3),
                                           "standard_error": round(spread, 3) if spread is not None else None}}


# bench/run.py peers runs these (bench/peers.py); `--peers` picks some.
# PBT against ASHA: the `mnist` preset's training knobs with a constant schedule (PBT finds
# its own schedule: it changes the learning rate as it trains), Adam, the economy's model sizes.
POPULATION_SPACE = ["--set", "search.space.learning_rate={loguniform: [1.0e-4, 1.0e-2]}",
                    "--set", "search.space.schedule=constant", "--set", "search.space.decay_epochs=2.0",
                    "--set", "search.space.optimizer=adam",
                    "--set", "search.space.batch_size={choice: [64, 128, 256]}",
                    "--set", "search.space.width={choice: [256, 512]}", "--set", "search.space.depth={choice: [1, 2]}",
                    "--set", "search.space.dropout={uniform: [0.1, 0.5]}"]


def _tuning_figures(summary: dict, run: dict) -> dict:
    """The figures `pbt` and `warm` compare, from a finished experiment."""
    failed = [t["trial_id"] for t in summary["trials"] if t["status"] != "terminated"]
    if failed:
        raise SystemExit(f"trials {failed} of {summary['name']} failed")
    best = summary["best"]
    return {"trials": len(summary["trials"]), "epochs_spent": summary["epochs_spent"],
            # Worker processes held, start-up included: trial running time x workers.
            "worker_seconds": round(sum(t["wall_seconds"] * t["workers"] for t in summary["trials"]), 1),
            "worker_group_starts": sum(1 + t["restarts"] for t in summary["trials"]),
            "wall_seconds": round(run["seconds"], 1),
            "best_test_accuracy": round(best["test_accuracy"], 4), "best_val_accuracy": round(best["val_accuracy"], 4),
            "best_epoch": best["epoch"], "best_config": best["config"]}


def pbt(work: Path, mnist: str | None, smoke: bool) -> dict:
    """PBT and PB2 against ASHA on one space and about the same worker-seconds: ASHA over
    27 configurations (max_t 10, grace 1, reduction factor 3: about 64 epochs and 27
    worker-group starts), PBT and PB2 over a population of 6 trained to the same 10 epochs
    (60 epochs; a perturbation point every 2 epochs, the worst quarter copies the best
    quarter's checkpoint and explores the learning rate and the batch size). 2-worker trials,
    one at a time on 2 cores (so PBT's members take turns: a worker-group start per member
    and interval), seed 0."""
    dataset = stage(work, mnist)
    runs = {"asha": ["--set", "search.num_samples=27", "--set", "scheduler.kind=asha"],
            "pbt": ["--set", "search.num_samples=6", "--set", "scheduler.kind=pbt", "--set", "pbt.interval=2"],
            "pb2": ["--set", "search.num_samples=6", "--set", "scheduler.kind=pb2", "--set", "pbt.interval=2"]}
    max_t = 10
    if smoke:  # PB2 alone (tests/integration/test_pbt.py runs PBT), 2 members, 2 epochs
        runs, max_t = {"pb2": ["--set", "search.num_samples=2", "--set", "scheduler.kind=pb2", "--set",
                               "pbt.interval=1", "--set", "pbt.quantile=0.5"]}, 2
    out = {}
    for how, args in runs.items():
        name = f"{NAME['pbt']}-{how}"
        run = seeded_mnist_run(work, name, dataset, max_t, [*POPULATION_SPACE, *args])
        summary, _ = experiment(work / "store", name)
        out[how] = _tuning_figures(summary, run)
        if how != "asha":
            out[how]["exploits"] = sum(len(t.get("lineage", [])) - 1 for t in summary["trials"])
            out[how]["best_schedule"] = summary["best"].get("schedule")
    if "asha" in out:
        for how in ("pbt", "pb2"):
            out[f"{how}_vs_asha"] = {
                "best_test_accuracy_difference_pt": round(100 * (out[how]["best_test_accuracy"]
                                                                 - out["asha"]["best_test_accuracy"]), 2),
                "worker_seconds_ratio": round(out[how]["worker_seconds"] / out["asha"]["worker_seconds"], 3),
                "wall_ratio": round(out[how]["wall_seconds"] / out["asha"]["wall_seconds"], 3),
                "epochs_ratio": round(out[how]["epochs_spent"] / out["asha"]["epochs_spent"], 3)}
    return {"max_t": max_t, **out}


def seeded_mnist_run(work: Path, name: str, dataset: str, max_t: int, args: list[str]) -> dict:
    """``tuner tune`` of the `mnist` preset on ``dataset``, seed 0, ASHA's grace period 1 and
    reduction factor 3 (where ASHA runs), ``max_t`` epochs, and ``args``."""
    return tuner(["tune", "--config", "mnist", "--name", name, "--storage", str(work / "store"),
                  "--set", f"data.uri={dataset}", "--set", "search.seed=0", "--set", f"asha.max_t={max_t}",
                  "--set", "asha.grace_period=1", "--set", "asha.reduction_factor=3", *args], work)


def _reached(rows: list[dict], target: float) -> dict:
    """Trials started, and training worker-seconds spent, until a trial first reported a
    validation accuracy of at least ``target`` (trials in the order they first reported)."""
    rows = sorted(rows, key=lambda r: r["timestamp"])
    order = list(dict.fromkeys(r["trial_id"] for r in rows))
    spent = 0.0
    for r in rows:
        spent += (r.get("train_seconds") or 0) * (r.get("workers") or 1)
        if r.get("val_accuracy") is not None and r["val_accuracy"] >= target:
            return {"reached": True, "trials": order.index(r["trial_id"]) + 1, "training_worker_seconds": round(spent, 1)}
    return {"reached": False, "trials": len(order), "training_worker_seconds": round(spent, 1)}


def warm(work: Path, mnist: str | None, smoke: bool) -> dict:
    """A warm start against a cold start: the `mnist` preset's economy space tuned once
    (TPE, seed 0, 12 trials, ASHA max_t 6), then twice more with seed 1: warm-started from
    the first (its trials given to TPE first, its best configuration run first) and cold.
    Figure: trials and training worker-seconds until the second run's first validation
    accuracy within 0.1 pt of the first run's best."""
    dataset = stage(work, mnist)
    samples, max_t = (1, 1) if smoke else (12, 6)
    common = ["--config", "mnist", "--storage", str(work / "store"), "--set", f"data.uri={dataset}",
              "--set", "search.algorithm=tpe", "--set", f"search.num_samples={samples}", "--set", f"asha.max_t={max_t}",
              "--set", "asha.grace_period=1", "--set", "asha.reduction_factor=3", *ECONOMY_SPACE]
    first = f"{NAME['warm']}-first"
    runs = {"first": ["--set", "search.seed=0"],
            "warm": ["--set", "search.seed=1", "--set", f"search.warm_start.experiments=[{first}]"],
            "cold": ["--set", "search.seed=1"]}
    if smoke:  # the warm-started run; the cold one is any other run
        del runs["cold"]
    out, target = {}, None
    for how, args in runs.items():
        name = f"{NAME['warm']}-{how}"
        run = tuner(["tune", "--name", name, *common, *args], work)
        summary, rows = experiment(work / "store", name)
        out[how] = _tuning_figures(summary, run)
        if how == "first":
            target = summary["best"]["val_accuracy"] - 0.001
        else:
            out[how]["until_within_0.1pt_of_first_best"] = _reached(rows, target)
    if "cold" in out:
        warm_run, cold_run = (out[h]["until_within_0.1pt_of_first_best"] for h in ("warm", "cold"))
        out["warm_vs_cold"] = {
            "trials_ratio": round(warm_run["trials"] / cold_run["trials"], 3),
            "training_worker_seconds_ratio": round(warm_run["training_worker_seconds"]
                                                   / max(cold_run["training_worker_seconds"], 1e-9), 3),
            "both_reached": warm_run["reached"] and cold_run["reached"]}
    return {"target_val_accuracy": round(target, 4), **out}


PEERS = ["kerastuner", "optuna", "raytune", "raytune_train"]
PEER_SPACE_KEYS = ["learning_rate", "schedule", "decay_epochs", "optimizer", "dropout", "width", "depth"]


import scale as scale_module  # noqa: E402
from data import data, s3  # noqa: E402 - bench/ is the script's folder
from head import head  # noqa: E402
from reliability import reliability  # noqa: E402
from scale import scale  # noqa: E402

# Accuracy against model size: the MLP's learning rate, dropout, width and depth.
PARETO_SPACE = ["--set", "search.space.learning_rate={loguniform: [1.0e-4, 1.0e-2]}",
                "--set", "search.space.batch_size=128", "--set", "search.space.width={int_loguniform: [16, 1024]}",
                "--set", "search.space.depth={choice: [1, 2, 3]}", "--set", "search.space.dropout={uniform: [0.0, 0.4]}",
                "--set", "objective=[{metric: val_accuracy}, {metric: params}]"]


def pareto(work: Path, mnist: str | None, smoke: bool) -> dict:
    """A Pareto search (accuracy up, trainable parameters down) by MO-ASHA + MOTPE against
    random search with FIFO, on the MLP (2-worker trials, one at a time, seed 0): the
    hypervolume of each run's front over the trials that ended within the same
    worker-seconds (the smaller of the two runs' totals), against one reference point
    for both (just beyond the worst values of all their trials), and the epochs each spent."""
    dataset = stage(work, mnist)
    samples, max_t = (2, 1) if smoke else (27, 9)
    runs = {"mo_asha_tpe": ["--set", "search.algorithm=tpe", "--set", "scheduler.kind=asha",
                            "--set", f"search.num_samples={samples}"],
            # FIFO trains every trial to the budget: a third as many trials spend about as much.
            "random_fifo": ["--set", "search.algorithm=random", "--set", "scheduler.kind=fifo",
                            "--set", f"search.num_samples={max(1, samples // 3) if not smoke else 1}"]}
    out, ends = {}, {}
    for how, args in runs.items():
        name = f"{NAME['pareto']}-{how}"
        run = seeded_mnist_run(work, name, dataset, max_t, [*PARETO_SPACE, *args])
        summary, rows = experiment(work / "store", name)
        ends[how] = pareto_ends(rows)
        out[how] = {"trials": len(summary["trials"]), "epochs_spent": summary["epochs_spent"],
                    "worker_seconds": round(sum(w for _, w, _ in ends[how]), 1), "wall_seconds": round(run["seconds"], 1),
                    "front": [{k: e[k] for k in ("trial_id", "epoch", "val_accuracy", "params")}
                              for e in summary["pareto_front"]]}
    budget = min(o["worker_seconds"] for o in out.values())
    reference = pareto_reference([p for e in ends.values() for _, _, p in e])
    for how in runs:
        out[how]["hypervolume_at_budget"] = pareto_hypervolume_within(ends[how], budget, reference)
    ratio = (out["mo_asha_tpe"]["hypervolume_at_budget"] / out["random_fifo"]["hypervolume_at_budget"]
             if out["random_fifo"]["hypervolume_at_budget"] else None)
    return {"max_t": max_t, "worker_seconds_budget": round(budget, 1), "reference": list(reference),
            "hypervolume_ratio_mo_to_random": ratio and round(ratio, 3), **out}


def pareto_ends(rows: list[dict]) -> list[tuple[str, float, tuple[float, float]]]:
    """(trial id, its worker-seconds, (validation accuracy, parameters) at its last epoch),
    in the order the trials ended."""
    last: dict[str, dict] = {}
    for r in sorted(rows, key=lambda r: (r["timestamp"], r["epoch"])):
        if r.get("val_accuracy") is not None and r.get("params") is not None:
            last[r["trial_id"]] = r
    ordered = sorted(last.values(), key=lambda r: r["timestamp"])
    return [(r["trial_id"], float(r.get("worker_seconds") or 0.0), (r["val_accuracy"], float(r["params"])))
            for r in ordered]


def pareto_reference(points: list[tuple[float, float]]) -> tuple[float, ...]:
    from tuner import pareto as front

    return front.reference_point(points, ("max", "min"))


def pareto_hypervolume_within(ends: list[tuple[str, float, tuple[float, float]]], budget: float,
                              reference: tuple[float, ...]) -> float:
    """The hypervolume of the trials that ended before their worker-seconds, summed in
    the order they ended, passed ``budget``."""
    from tuner import pareto as front

    spent, kept = 0.0, []
    for _, seconds, point in ends:
        spent += seconds
        if spent > budget + 1e-9:
            break
        kept.append(point)
    return front.hypervolume(kept, ("max", "min"), reference)


BENCHES = {"b1": b1, "b2": b2, "b3": b3, "tuned": tuned, "cnn": cnn, "reliability": reliability, "economy": economy,
           "scaling": scaling, "ckpt": ckpt, "peers": peers, "searchers": searchers, "data": data, "s3": s3,
           "scale": scale, "head": head, "pbt": pbt, "warm": warm, "pareto": pareto}
# `all`; reliability (~15 min, Ceph), s3 (~7 min), scale (39 min at 100 and 300 trials) and head
# (2 min) run on their own.
ALL = ["b1", "b2", "b3", "tuned", "cnn", "economy", "scaling", "ckpt", "peers", "searchers", "data", "pbt", "warm"]


def record(command: str, results: dict) -> None:
    """Append each benchmark's results, with the date, the machine and the command, to its
    own record file, docs/benchmarks/<name>.md (docs/benchmarks.md keeps the current
    figures)."""
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    RECORDS.mkdir(parents=True, exist_ok=True)
    for name, result in results.items():
        path = RECORDS / f"{name}.md"
        if not path.exists():
            path.write_text(f"# `{name}`: raw records\n\nAppended by `bench/run.py {name}` with the date, the machine "
                            "and the command; the current figure and its goal are in "
                            "[../benchmarks.md](../benchmarks.md).\n")
        with path.open("a") as f:
            f.write(f"\n### {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: `{command}`\n\n")
            f.write(f"Machine: {machine}.\n\n```json\n{json.dumps({name: result}, indent=2)}\n```\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=[*BENCHES, "all"])
    parser.add_argument("--mnist", help="folder with the four original MNIST .gz files (default: the shipped subset)")
    parser.add_argument("--smoke", action="store_true", help="tiny run to keep the code working; not recorded")
    parser.add_argument("--work", help="working folder (default: a temporary one)")
    parser.add_argument("--trials", help="scale: the trial counts to run, comma-separated (default 100,300,1000)")
    parser.add_argument("--plain", help="scale: the trial counts plain Ray Tune runs at too (default: all of --trials)")
    parser.add_argument("--peers", help=f"peers: the peers to run beside tuner, comma-separated (default {','.join(PEERS)})")
    parser.add_argument("--jobs", type=int, default=1,
                        help="with --smoke: run this many benchmarks at once, each in its own process and folder "
                             "(figures measured side by side are not figures: never without --smoke)")
    args = parser.parse_args()
    if args.jobs > 1 and not args.smoke:
        parser.error("--jobs runs benchmarks side by side, which spoils their figures: only with --smoke")
    if args.trials:
        scale_module.SIZES = [int(n) for n in args.trials.split(",")]
    if args.plain:
        scale_module.PLAIN_SIZES = [int(n) for n in args.plain.split(",")]
    if args.peers:
        unknown = set(args.peers.split(",")) - set(PEERS)
        if unknown:
            parser.error(f"--peers: unknown {', '.join(sorted(unknown))}; choose from {', '.join(PEERS)}")
        PEERS[:] = args.peers.split(",")
    names = ALL if args.which == "all" else [args.which]
    if args.mnist:  # the CLI runs in the working folder
        args.mnist = str(Path(args.mnist).resolve())
    if args.jobs > 1 and len(names) > 1:
        return side_by_side(names, args)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        results = {}
        for name in names:
            started = time.time()
            results[name] = BENCHES[name](work, None if args.smoke else args.mnist, args.smoke)
            print(json.dumps({name: results[name]}), flush=True)
            print(f"bench {name}: {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    if not args.smoke:
        record(recorded_command(sys.argv[1:]), results)


# Smoke runs' seconds here, longest first: side by side, the long ones start first.
SMOKE_SECONDS = {"data": 110, "peers": 101, "scaling": 68, "ckpt": 67, "economy": 63, "b1": 41, "b2": 41, "b3": 40,
                 "searchers": 34, "tuned": 0, "cnn": 31, "pbt": 75, "warm": 65}


def side_by_side(names: list[str], args) -> None:
    """``--smoke --jobs N``: each benchmark as its own ``bench/run.py NAME --smoke`` process
    in a folder of its own, N at a time; their result lines are printed in ``names``' order."""
    from concurrent.futures import ThreadPoolExecutor

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        stage(work, None)  # one `tuner stage-data` for all of them
        env = {**os.environ, DATASETS_VAR: str(work / "datasets")}

        def one(name: str) -> tuple[int, str, str]:
            cmd = [sys.executable, str(Path(__file__).resolve()), name, "--smoke", "--work", str(work / name)]
            cmd += [x for flag in ("peers", "trials", "plain") if getattr(args, flag)
                    for x in (f"--{flag}", getattr(args, flag))]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            return proc.returncode, proc.stdout, proc.stderr

        order = sorted(names, key=lambda n: -SMOKE_SECONDS.get(n, 60))
        with ThreadPoolExecutor(args.jobs) as pool:
            done = dict(zip(order, pool.map(one, order)))
    failed = [n for n in names if done[n][0] != 0]
    for name in names:
        code, out, err = done[name]
        sys.stderr.write(err if code else "".join(line + "\n" for line in err.splitlines() if line.startswith("bench ")))
        sys.stdout.write(out)
    sys.stdout.flush()
    if failed:
        raise SystemExit(f"benchmarks failed: {', '.join(failed)}")


def recorded_command(argv: list[str]) -> str:
    """The command as the record shows it: no machine's absolute path (`--mnist` relative
    to the repository, the scratch `--work` folder left out)."""
    shown, it = [], iter(argv)
    for arg in it:
        flag, eq, value = arg.partition("=")
        if flag in ("--work", "--mnist"):
            value = value if eq else next(it, "")
            if flag == "--mnist":
                shown += ["--mnist", os.path.relpath(Path(value).resolve(), REPO)]
            continue
        shown.append(arg)
    return " ".join(["python bench/run.py", *shown])


if __name__ == "__main__":
    main()
