"""One 2-worker Ray Train run (``TensorflowTrainer``, ``MultiWorkerMirroredStrategy``, no
Tune) training the MLP-128 on a staged dataset, with one of three inputs:

- ``memory``: the path `tuner` had before streaming: every worker reads the whole split
  into NumPy, keeps rows ``[rank::N]`` and shuffles them all (``from_tensor_slices``);
- ``stream``: `tuner`'s worker input: its share of the row groups, streamed
  (``tuner.data.SplitReader``, ``tuner.training.streaming_dataset``);
- ``raydata``: Ray Train's own path: ``datasets={"train": ray.data.read_parquet(...)}``,
  ``get_dataset_shard("train").to_tf(...)`` with a local shuffle buffer of the same size.

    python bench/data_trial.py '{"mode": "stream", "dataset": "s3://...", "epochs": 2, "batch": 128, "out": DIR}'

Prints one JSON line: start-up (``fit()`` called -> first step), seconds per epoch,
samples/s, each worker's peak RSS, this driver's peak RSS and the peak summed RSS of the
Ray worker processes (Train workers, Ray Data's tasks and actors).

With ``"trials": K`` (K > 1) it runs K such 2-worker runs at once on the same dataset, the
way `tuner` runs trials: a Ray Tune function per trial that builds its own
``TensorflowTrainer`` (and, for ``raydata``, its own Ray Data dataset) and calls ``fit()``.
Samples/s is then the sum over the trials' steadiest epochs, and also the whole run's
samples over the span from the first trial's first step to the last trial's end.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
from pathlib import Path


def train_fn(cfg: dict) -> None:
    import ray.train
    import tensorflow as tf
    import tf_keras

    from tuner import data, models, schedule, training, worker

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    tf_keras.utils.set_random_seed(0)
    manifest = data.read_manifest(cfg["dataset"])
    reader = data.SplitReader(cfg["dataset"], manifest, "train")
    shape, per_worker = reader.shape, cfg["batch"]
    steps = schedule.BatchPlan(world, per_worker, reader.rows).steps_per_epoch
    pieces = data.shards.assign(reader.row_groups, world, rank)
    # Ray Data's local buffer the size of tuner's.
    buffer = data.shards.shuffle_buffer(pieces, reader.row_bytes, worker.SHUFFLE_ROW_GROUPS,
                                        worker.SHUFFLE_BUFFER_BYTES)
    off = tf.data.Options()
    off.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF

    if cfg["mode"] == "memory":
        x, y = data.load_split(cfg["dataset"], "train", manifest=manifest)

        def dataset_fn(ic):
            xs, ys = x[rank::world], y[rank::world]
            ds = tf.data.Dataset.from_tensor_slices((xs, ys)).shuffle(len(ys), seed=rank).repeat()
            ds = ds.batch(per_worker, drop_remainder=True)
            ds = ds.map(lambda a, b: (training.to_model_input(a), b), num_parallel_calls=tf.data.AUTOTUNE)
            return ds.with_options(off).prefetch(tf.data.AUTOTUNE)
    elif cfg["mode"] == "stream":
        def dataset_fn(ic):
            return training.streaming_dataset(worker.stream_pieces(reader, pieces, 0, rank, 0), reader.shape,
                                              reader.dtype, reader.label_dtype, per_worker, buffer, seed=rank)
    else:
        shard = ray.train.get_dataset_shard("train")

        def decode(a, b):
            return training.to_model_input(tf.reshape(a, (-1, *shape))), b

        def dataset_fn(ic):
            ds = shard.to_tf("x", "y", batch_size=per_worker, drop_last=True, local_shuffle_buffer_size=buffer,
                             local_shuffle_seed=rank)
            return ds.repeat().map(decode, num_parallel_calls=tf.data.AUTOTUNE).with_options(off)

    with strategy.scope():
        net = models.mnist_mlp({"width": 128, "depth": 1, "dropout": 0.2},
                               models.InputSpec(shape, num_classes=10))
        training.compile_model(net, tf_keras.optimizers.Adam(1e-3), steps_per_execution=min(32, steps))

    marks = {"epochs": []}

    class Clock(tf_keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            marks.setdefault("first_step", time.time())

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.time()

        def on_epoch_end(self, epoch, logs=None):
            marks["epochs"].append(time.time() - self.started)

    net.fit(tf_keras.utils.experimental.DatasetCreator(dataset_fn), epochs=cfg["epochs"], steps_per_epoch=steps,
            callbacks=[Clock()], verbose=0)
    out = {"rank": rank, "startup_seconds": marks["first_step"] - cfg["fit_called"], "epoch_seconds": marks["epochs"],
           "samples_per_epoch": steps * per_worker * world, "first_step": marks["first_step"], "end": time.time(),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    Path(cfg["out"], f"rank{rank}.json").write_text(json.dumps(out))
    ray.train.report({"done": 1})


def ray_processes_rss() -> int:
    """Summed resident bytes of this run's Ray worker processes (``ray::`` titles among
    this process's descendants: the raylet it started forks them)."""
    parents, titles = {}, {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                parents[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                titles[int(proc.name)] = (proc / "cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue
    me, total = os.getpid(), 0
    for pid, title in titles.items():
        ancestor = parents.get(pid)
        while ancestor not in (None, 0, 1, me):
            ancestor = parents.get(ancestor)
        if ancestor == me and title.startswith(b"ray::"):
            try:
                status = Path(f"/proc/{pid}/status").read_text().splitlines()
            except OSError:
                continue
            total += next((int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:")), 0)
    return total


def _pixels(batch, shape: tuple, dtype: str) -> dict:
    """A staged record batch as Ray Data's own tensor column (``to_tf`` turns a fixed-size
    binary column into NumPy bytes, which drop trailing zeros)."""
    from tuner import data

    x, y = data.from_table(batch, shape, dtype)
    return {"x": x, "y": y}


def raydata_datasets(dataset: str) -> dict:
    """Ray Train's own input: the staged training files through ``ray.data.read_parquet``."""
    import ray

    from tuner import data, storage

    manifest = data.read_manifest(dataset)
    fs, _ = storage.filesystem(dataset)
    paths = [storage.filesystem(storage.join(dataset, f["path"]))[1] for f in manifest["splits"]["train"]["files"]]
    features = manifest["features"]
    return {"train": ray.data.read_parquet(paths, filesystem=fs).map_batches(
        _pixels, batch_format="pyarrow", zero_copy_batch=True,
        fn_kwargs={"shape": tuple(features["shape"]), "dtype": features["dtype"]})}


def fit(cfg: dict, name: str) -> None:
    """One 2-worker Train run writing its workers' figures into ``cfg["out"]``."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    datasets = raydata_datasets(cfg["dataset"]) if cfg["mode"] == "raydata" else None
    cfg = {**cfg, "fit_called": time.time()}
    TensorflowTrainer(train_fn, train_loop_config=cfg, datasets=datasets,
                      scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                      run_config=RunConfig(storage_path=str(Path(cfg["out"], "store")), name=name)).fit()


def tune_trial(config: dict) -> None:
    """A Tune trial as `tuner` runs one: build the trainer, ``fit()``."""
    cfg = config["cfg"]
    out = Path(cfg["out"], f"trial{config['trial']}")
    out.mkdir(parents=True, exist_ok=True)
    fit({**cfg, "out": str(out)}, f"run{config['trial']}")


def main() -> None:
    cfg = json.loads(sys.argv[1])
    import ray

    # As `tuner` does (tuner/tune.py): Ray Train's placement-group cleaner finds the state
    # API through this variable, else through whichever `ray start` cluster the machine had.
    from reliability import _free_port  # bench/ is this script's folder

    trials = cfg.get("trials", 1)
    port = _free_port()
    # Per trial: 2 Train workers and 2 CPUs to spare for Ray Data's tasks (trial drivers
    # hold no CPU, only a resource of their own, so each trial sees the same spare CPUs as
    # a single run).
    ray.init(address="local", num_cpus=4 * trials, resources={"trial_driver": trials}, include_dashboard=True,
             dashboard_host="127.0.0.1",
             dashboard_port=port, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}})
    peak, done = [0], threading.Event()

    def watch():
        while not done.wait(0.5):
            peak[0] = max(peak[0], ray_processes_rss())

    threading.Thread(target=watch, daemon=True).start()
    if trials == 1:
        fit(cfg, "run")
        outs = [Path(cfg["out"])]
    else:
        from ray import tune

        grid = tune.Tuner(tune.with_resources(tune_trial, {"CPU": 0, "trial_driver": 1}),
                          param_space={"cfg": cfg, "trial": tune.grid_search(list(range(trials)))},
                          tune_config=tune.TuneConfig(max_concurrent_trials=trials),
                          run_config=tune.RunConfig(storage_path=str(Path(cfg["out"], "tune")), name="trials",
                                                    verbose=0)).fit()
        if grid.errors:  # Tune reports a failed trial in its results, without raising
            raise grid.errors[0]
        outs = [Path(cfg["out"], f"trial{t}") for t in range(trials)]
    done.set()
    runs = [[json.loads(Path(out, f"rank{r}.json").read_text()) for r in (0, 1)] for out in outs]
    ranks = [r for run in runs for r in run]
    figures = {
        "startup_seconds": round(max(r["startup_seconds"] for r in ranks), 2),
        "epoch_seconds": [round(e, 2) for e in runs[0][0]["epoch_seconds"]],
        # The steadiest epoch: the first also pays for filling the shuffle buffer.
        "samples_per_second": round(sum(run[0]["samples_per_epoch"] / min(run[0]["epoch_seconds"]) for run in runs)),
        "worker_peak_rss_mb": [round(r["peak_rss_mb"]) for r in ranks],
        # VmHWM: ru_maxrss would carry the peak of the process that started this one.
        "driver_peak_rss_mb": round(next(int(line.split()[1]) for line in Path("/proc/self/status").read_text()
                                         .splitlines() if line.startswith("VmHWM:")) / 1024),
        "ray_processes_peak_rss_mb": round(peak[0] / 2**20),
    }
    if trials > 1:
        figures["trials"] = trials
        figures["startup_seconds_per_trial"] = [round(max(r["startup_seconds"] for r in run), 2) for run in runs]
        figures["epoch_seconds_per_trial"] = [[round(e, 2) for e in run[0]["epoch_seconds"]] for run in runs]
        span = max(r["end"] for r in ranks) - min(r["first_step"] for r in ranks)
        figures["samples_per_second_over_span"] = round(
            sum(run[0]["samples_per_epoch"] * len(run[0]["epoch_seconds"]) for run in runs) / span)
    print(json.dumps(figures))
    ray.shutdown()


if __name__ == "__main__":
    main()
