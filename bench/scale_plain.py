"""Plain Ray Tune on `bench/scale_stub.py`'s stub trials, the peer of `bench/run.py
scale`: the same trial function body (sleep, report the same metrics), the same
random search space as the `quick` preset, Ray's ASHA on ``epoch`` with the same
milestones, the same concurrency and the same S3 storage, written the way the Ray
docs do it. Tune's defaults otherwise (experiment-state period "auto", progress.csv,
no keeper, no slot actor).

    python bench/scale_plain.py '{"name": ..., "storage": "s3://bucket/prefix", "samples": 1000,
                                  "max_t": 9, "grace": 1, "rf": 3, "concurrent": 32}'
"""

from __future__ import annotations

import json
import os
import sys
import time

from scale_stub import experiment_state_steps, stub_metrics, time_driver_steps


def trial(config: dict) -> None:
    from ray import tune

    seconds = float(os.environ.get("TUNER_STUB_EPOCH_SECONDS", "0.2"))
    for epoch in range(1, config["max_t"] + 1):
        started = time.time()
        time.sleep(seconds)
        tune.report({"epoch": epoch, **stub_metrics(config, epoch), "train_seconds": time.time() - started})


def main() -> None:
    import pyarrow.fs as pafs
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    cfg = json.loads(sys.argv[1])
    time_driver_steps(os.environ.get("TUNER_STUB_STATS"), experiment_state_steps())
    ray.init(address=os.environ.get("RAY_ADDRESS"), logging_level="WARNING")
    bucket_path = cfg["storage"].removeprefix("s3://")
    fs = pafs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"], region="us-east-1")
    space = {
        "max_t": cfg["max_t"],
        "learning_rate": tune.loguniform(1e-4, 1e-2),
        "schedule": tune.choice(["constant", "exponential"]),
        "optimizer": tune.choice(["adam", "rmsprop", "sgd"]),
        "batch_size": tune.choice([32, 64]),
        "dropout": tune.uniform(0.0, 0.4),
        "width": tune.choice([64, 128, 256]),
        "depth": tune.choice([1, 2]),
    }
    tuner = tune.Tuner(
        tune.with_resources(trial, {"CPU": 1}),
        param_space=space,
        tune_config=tune.TuneConfig(
            metric="val_accuracy", mode="max", num_samples=cfg["samples"],
            max_concurrent_trials=cfg["concurrent"],
            scheduler=ASHAScheduler(time_attr="epoch", max_t=cfg["max_t"], grace_period=cfg["grace"],
                                    reduction_factor=cfg["rf"]),
        ),
        run_config=tune.RunConfig(name=cfg["name"], storage_path=bucket_path, storage_filesystem=fs, verbose=0),
    )
    grid = tuner.fit()
    best = grid.get_best_result()
    print(json.dumps({"trials": len(grid), "errors": len(grid.errors),
                      "best_val_accuracy": best.metrics["val_accuracy"]}))


if __name__ == "__main__":
    main()
