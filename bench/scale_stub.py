"""`tuner` with stub trials, for `bench/run.py scale` and the control-plane test: the
real command (spec, search, ASHA with its resumable rungs, the slot actor, the keeper,
Tune's experiment state in storage, results, summary) with each trial's Ray Train run
replaced by a loop that reports epochs on a schedule.

    python bench/scale_stub.py tune --config quick --set search.num_samples=1000 ...

How a stub trial differs from a real one:
- no Train controller, worker group, TensorFlow or data: the trial's driver reports
  through ``ray.tune.report`` itself, every ``$TUNER_STUB_EPOCH_SECONDS`` (default 0.2);
- its metrics are a fixed function of its config and epoch (``stub_metrics``), with the
  same keys a real trial reports, but no checkpoint: the summary has no best model and
  nothing is scored on the test split;
- a resumed trial continues after the last epoch it reported, which it finds in a local
  file (``$TUNER_STUB_STATE``, a folder) rather than in a checkpoint in storage; the
  epochs its driver had not taken in it reports again, as a real trial does.

The class is defined in ``__main__``, so Ray pickles it by value into each trial's
driver; only `tuner` must be importable there.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path


def stub_metrics(config: dict, epoch: int) -> dict:
    """A learning curve that rises with the epoch and peaks at a learning rate of 3e-3
    and a width of 256: ASHA has real differences to act on."""
    lr_miss = abs(math.log10(config["learning_rate"] / 3e-3))
    width_miss = abs(math.log2(config.get("width") or 256) - 8) / 4
    ceiling = 0.99 - 0.08 * lr_miss - 0.03 * width_miss - 0.05 * (config.get("dropout") or 0)
    accuracy = ceiling * (1 - 0.5 ** epoch)
    return {"val_accuracy": accuracy, "val_loss": 1 - accuracy, "accuracy": accuracy + 0.01,
            "loss": 1.01 - accuracy}


def time_driver_steps(stats_path: str | None, steps: dict) -> None:
    """Time ``steps`` ({label: (owner, attribute name)}) in this process; at exit write
    {label: {"calls", "seconds", "max_seconds"}} as JSON to ``stats_path``."""
    import atexit
    import functools
    import json

    if not stats_path:
        return
    stats = {label: {"calls": 0, "seconds": 0.0, "max_seconds": 0.0} for label in steps}

    def timed(label, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                took, s = time.perf_counter() - started, stats[label]
                s["calls"], s["seconds"], s["max_seconds"] = s["calls"] + 1, s["seconds"] + took, max(s["max_seconds"], took)
        return wrapper

    for label, (owner, name) in steps.items():
        setattr(owner, name, timed(label, getattr(owner, name)))
    atexit.register(lambda: Path(stats_path).write_text(json.dumps(stats)))


def experiment_state_steps() -> dict:
    """Tune's experiment-state saves, the same steps in `tuner` and in plain Ray Tune:
    writing the state files on the driver (``experiment_state_write``), and that plus
    starting their upload, on Tune's loop, which calls it every step and saves once a
    period (``experiment_state_step``)."""
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager
    from ray.tune.execution.tune_controller import TuneController

    return {"experiment_state_write": (TuneController, "save_to_dir"),
            "experiment_state_step": (_ExperimentCheckpointManager, "sync_up_experiment_state")}


def main() -> int:
    from tuner import cli, experiment, raycompat, results
    from tuner import tune as tuning

    class StubRunner(tuning.TrialRunner):
        def _run(self, params: dict, trial_id: str) -> None:
            from ray import tune

            from tuner import resume
            from tuner.spec import build_spec

            spec = build_spec(self.spec_dict)
            seconds = float(os.environ.get("TUNER_STUB_EPOCH_SECONDS", "0.2"))
            state = Path(os.environ.get("TUNER_STUB_STATE", "/tmp/tuner-stub-state"), spec.name, trial_id)
            # "<epoch> <the epoch its run resumed from>", written before the epoch's report.
            done, done_resumed = map(int, state.read_text().split()) if state.exists() else (0, 0)

            def metrics(epoch: int, train_seconds: float, resumed: int) -> dict:
                return {"epoch": epoch, **stub_metrics(params, epoch), "learning_rate": params["learning_rate"],
                        "train_seconds": train_seconds, "validation_seconds": 0.0,
                        "workers": spec.scaling.workers, "per_worker_batch": params["batch_size"],
                        "global_batch": params["batch_size"] * spec.scaling.workers, "steps_per_epoch": 1,
                        "resumed_from_epoch": resumed}

            # As a real trial does from its checkpoints (checkpoints.replayed_epochs): the epochs
            # done before a stop whose reports the driver never took in.
            for epoch in range(resume.start(self.slots_name, trial_id)[0] + 1, done + 1):
                tune.report({**metrics(epoch, 0.0, done_resumed), "replayed": True})
            for epoch in range(done + 1, spec.asha.max_t + 1):
                started = time.time()
                time.sleep(seconds)
                state.parent.mkdir(parents=True, exist_ok=True)
                state.write_text(f"{epoch} {done}")
                tune.report(metrics(epoch, time.time() - started, done))

    tuning.TrialRunner = StubRunner
    time_driver_steps(os.environ.get("TUNER_STUB_STATS"), {
        **experiment_state_steps(),
        # The incremental upload of the experiment folder (in Tune's sync thread).
        "experiment_upload": (raycompat.experiment_sync, "upload_changed"),
        # After Tune: trials from Tune's results, results.parquet, summary.json (and the
        # best model's test scoring, which stub trials have none of).
        "summarize": (experiment, "summarize"),
        "trials_from_grid": (results, "trials_from_grid"),
        "write_results": (results, "write_results"),
        "write_summary": (results, "write_summary"),
    })
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
