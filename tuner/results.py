"""What an experiment leaves behind under ``<storage>/<name>/``.

- ``results.parquet``: one row per reported epoch of every trial;
- ``summary.json``: the resolved spec, the command, the objective, the best trial (with
  its test metrics and checkpoint URI) and one entry per trial;
- ``best_model.keras``: the best checkpoint's model.

``rows_from_results`` and ``summarize`` are pure; ``export_best`` touches TensorFlow.
"""

from __future__ import annotations

import io
import math
import posixpath
import tempfile
import time
from pathlib import Path

from tuner import population as pop
from tuner import storage
from tuner.rungs import TIME_ATTR
from tuner.spec import Spec

SUMMARY = "summary.json"
RESULTS = "results.parquet"
BEST_MODEL = "best_model.keras"

# Per-epoch metrics kept in results.parquet (plus the trial's hyperparameters).
ROW_METRICS = (
    "epoch", "val_accuracy", "val_mae", "val_loss", "loss", "accuracy", "mae", "learning_rate", "train_seconds",
    "validation_seconds",
    "samples_per_second", "workers", "per_worker_batch", "global_batch", "steps_per_epoch",
    "resumed_from_epoch", "startup_seconds", "startup_process_seconds", "startup_worker_entered_seconds",
    "startup_imported_seconds", "startup_ready_seconds", "startup_cpu_seconds",
    "checkpoint_save_seconds", "previous_report_seconds", "replayed", "checkpoint_path", "weights_sha256", "peak_rss_mb", "gpus",
    "driver_gpus", "params", "epoch_seconds", "worker_seconds",
    "time_total_s", "timestamp", "generation",
)
# A PBT member's rows: where the generation that trained the row's epoch came from.
LINEAGE_COLUMNS = ("pbt_from_trial", "pbt_from_epoch")


def _clean(value):
    """JSON/Parquet-friendly scalars (numpy -> Python, NaN -> None)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def rows_from_results(trials: list[dict], lineages: dict[str, list[dict]] | None = None) -> list[dict]:
    """Flatten per-trial records into per-epoch rows.

    Args:
        trials: ``{"trial_id", "config", "history": [metrics dict per epoch], ...}``.
        lineages: PBT members' ``Population.lineage``, by trial id: a row's config is
            then its generation's, and ``pbt_from_trial`` / ``pbt_from_epoch`` say where
            that generation started.
    """
    rows = []
    lineages = lineages or {}
    names = list(dict.fromkeys(k for t in trials for k in t["config"]))
    for t in trials:
        lineage = lineages.get(t["trial_id"])
        for metrics in t["history"]:
            row = {"trial_id": t["trial_id"]}
            config, origin = t["config"], {}
            if lineage:
                segment = lineage[min(int(_clean(metrics.get("generation")) or 0), len(lineage) - 1)]
                config = segment["config"]
                origin = {"pbt_from_trial": segment["from_trial"],
                          "pbt_from_epoch": segment["start_epoch"] if segment["from_trial"] else None}
            row.update({f"config/{k}": _clean(config.get(k)) for k in names})
            row.update({k: _clean(metrics.get(k)) for k in ROW_METRICS})
            if lineages:
                row.update({k: origin.get(k) for k in LINEAGE_COLUMNS})
            rows.append(row)
    return rows


def asha_rungs(brackets: list[list[tuple[float, dict]]], mode: str = "max") -> list[list[dict]]:
    """ASHA's rungs for ``summary.json``: per bracket, lowest milestone first,
    ``{"epoch": milestone, "recorded": {trial id: the objective when it got there}}``.

    Args:
        brackets: ``ResumableASHA.rungs()`` (highest milestone first, as ASHA keeps them;
            ASHA records a "min" objective negated, undone here).
    """
    sign = 1 if mode == "max" else -1
    return [
        [{"epoch": int(m) if float(m).is_integer() else m,
          "recorded": {t: _clean(v) if _clean(v) is None else sign * _clean(v) for t, v in sorted(rec.items())}}
         for m, rec in reversed(rungs)]
        for rungs in brackets
    ]


def worker_group_starts(history: list[dict]) -> list[int]:
    """The epoch each start of the trial's worker group resumed from (0: fresh), in order.

    A start shows in the rows by its first epoch, which carries the start-up figures (each
    run of the train function reports them once), or, should that report have been lost
    with its worker group, by a new ``resumed_from_epoch``. A worker group that dies loses
    the reports its Train controller had not yet collected, possibly all of them; if the
    first start seen resumed from a checkpoint, an earlier start wrote it. So a start
    counts only if it reported an epoch or left a checkpoint that a later one resumed
    from: one that died in its first epoch leaves no trace here. (Ray Train counts
    worker-group failures only inside the trial's Train controller.)
    """
    starts, previous = [], None
    for m in history:
        resumed = _clean(m.get("resumed_from_epoch"))
        if resumed is None:
            continue
        resumed = int(resumed)
        if _clean(m.get("startup_seconds")) is not None or resumed != previous:
            starts.append(resumed)
        previous = resumed
    if starts and starts[0] > 0:
        starts.insert(0, 0)
    return starts


def running_seconds(history: list[dict]) -> float | None:
    """Seconds the trial ran, over all its runs: the sum of Tune's ``time_this_iter_s``
    (each report's time since the previous one, or since its run started).
    ``time_total_s`` counts only the last run: it starts from 0 again each time the
    trial's function runs again (after a pause or a resume), since the trial reports no
    checkpoint to Tune."""
    steps = [_clean(m.get("time_this_iter_s")) for m in history]
    if history and all(v is not None for v in steps):
        return sum(steps)
    return _clean(history[-1].get("time_total_s")) if history else None


def summarize(spec: Spec, command: list[str], trials: list[dict], storage_fs_uri, checkpoint_exists,
              population=None) -> dict:
    """The summary without the test accuracy (added by ``export_best``).

    Args:
        trials: as for ``rows_from_results``, plus ``error`` (str or None).
        storage_fs_uri: maps a checkpoint path inside the storage filesystem to a URI.
        checkpoint_exists: whether a checkpoint path is still in storage (retention
            deletes all but the best few, and on ties it may keep a later epoch).
        population: a PBT run's ``tuner.population.Population``: each trial gets its
            ``lineage``, and the best trial the ``schedule`` of hyperparameters that
            trained its model and the command that replays it.
    """
    metric, mode = spec.objective.metric, spec.objective.mode
    entries, candidates = [], []
    for t in trials:
        entries.append(trial_entry(spec, t, population))
        candidates += [(m[metric], int(m[TIME_ATTR]), t, m) for m in t["history"]
                       if m.get("checkpoint_path") and m.get(metric) is not None]
    best = None
    # The best objective first; on a tie the later epoch, the one retention keeps.
    sign = 1 if mode == "max" else -1
    for value, epoch, t, m in sorted(candidates, key=lambda c: (sign * c[0], c[1]), reverse=True):
        if checkpoint_exists(m["checkpoint_path"]):
            best = {
                "trial_id": t["trial_id"],
                "config": t["config"],
                "epoch": epoch,
                metric: value,
                "checkpoint_uri": storage_fs_uri(m["checkpoint_path"]),
            }
            if population is not None and t["trial_id"] in population.members:
                best.update(best_schedule(spec, command, population, t["trial_id"], int(_clean(m.get("generation")) or 0)))
            break
    out = {
        "name": spec.name,
        "command": command,
        "spec": spec.to_dict(),
        "objective": {"metric": metric, "mode": mode},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "epochs_spent": sum(e["epochs"] for e in entries),
        "best": best,
        "trials": entries,
    }
    if spec.objective.more:
        out.update(objectives=[{"metric": m, "mode": d} for m, d in spec.objective.all],
                   **pareto_front(spec, trials, storage_fs_uri, checkpoint_exists))
        # The best model of a multi-objective run: the front's best on the first objective.
        top = next((e for e in out["pareto_front"] if e["checkpoint_uri"]), None)
        out["best"] = top and {k: top[k] for k in ("trial_id", "config", "epoch", metric, "checkpoint_uri")}
    return out


def pareto_front(spec: Spec, trials: list[dict], storage_fs_uri, checkpoint_exists) -> dict:
    """A multi-objective run's ``pareto_front``: the trials that no other dominates, each
    at its last reported epoch (its model as it ended, whose checkpoint retention keeps)
    with its objective values, config and checkpoint, best first objective first; and the
    front's ``hypervolume`` against a reference point just beyond the worst values of all
    the trials (``tuner.pareto.reference_point``)."""
    from tuner import pareto

    metrics, modes = spec.objective.metrics, spec.objective.modes
    ends = []
    for t in trials:
        last = next((m for m in reversed(t["history"]) if all(m.get(k) is not None for k in metrics)), None)
        if last is not None and t["error"] is None:
            ends.append((t, last))
    points = [[float(m[k]) for k in metrics] for _, m in ends]
    members = []
    for i in pareto.front(points, modes):
        t, m = ends[i]
        checkpoint = m.get("checkpoint_path")
        members.append({"trial_id": t["trial_id"], "config": t["config"], "epoch": int(m[TIME_ATTR]),
                        **{k: _clean(m[k]) for k in metrics},
                        "checkpoint_uri": storage_fs_uri(checkpoint) if checkpoint and checkpoint_exists(checkpoint)
                        else None})
    first, sign = metrics[0], 1 if modes[0] == "max" else -1
    members.sort(key=lambda e: (-sign * e[first], e["trial_id"]))
    if not points:
        return {"pareto_front": [], "hypervolume": None}
    reference = pareto.reference_point(points, modes)
    return {"pareto_front": members,
            "hypervolume": {"value": pareto.hypervolume(points, modes, reference), "reference": dict(zip(metrics, reference))}}


def pick(front: list[dict], metric: str, mode: str) -> dict:
    """The member of a Pareto ``front`` that is best on ``metric`` (``tuner best --pick``);
    on a tie the first of them in the front's order (best first objective first)."""
    sign = 1 if mode == "max" else -1
    return max(front, key=lambda e: (sign * e[metric], -front.index(e)))


def front_table(front: list[dict], objectives: list[dict]) -> str:
    """``tuner best`` of a multi-objective run: the front, one trial a line."""
    metrics = [o["metric"] for o in objectives]
    said = " and ".join(f"{o['metric']} ({o['mode']})" for o in objectives)
    lines = [f"Pareto front: {len(front)} trial(s) that no other beats on {said}; the first is best_model.keras. "
             "`tuner best --pick METRIC` prints one as JSON.",
             "  ".join(f"{h:>14}" for h in ["trial", "epoch", *metrics])]
    for e in front:
        cells = [e["trial_id"], str(e["epoch"]), *(f"{e[m]:.6g}" if isinstance(e[m], float) else str(e[m]) for m in metrics)]
        lines.append("  ".join(f"{c:>14}" for c in cells))
    return "\n".join(lines)


def trial_entry(spec: Spec, t: dict, population=None) -> dict:
    """One trial in the summary: its outcome, epochs, batch, best objective, wall time,
    restarts, and a PBT member's lineage."""
    metric, history = spec.objective.metric, t["history"]
    better = max if spec.objective.mode == "max" else min
    epochs = max((int(m["epoch"]) for m in history), default=0)
    last = history[-1] if history else {}
    finished = t["error"] is None
    starts = worker_group_starts(history)
    return {
        "trial_id": t["trial_id"],
        "config": t["config"],
        "status": "error" if not finished else "terminated",
        "error": t["error"],
        "epochs": epochs,
        "stopped_early": finished and epochs < spec.asha.max_t,
        "workers": _clean(last.get("workers", spec.scaling.workers)),
        "per_worker_batch": t["config"]["batch_size"],
        "global_batch": t["config"]["batch_size"] * spec.scaling.workers,
        "steps_per_epoch": _clean(last.get("steps_per_epoch")),
        f"best_{metric}": better((m[metric] for m in history if m.get(metric) is not None), default=None),
        "wall_seconds": running_seconds(history),
        "restarts": len(starts) - 1 if starts else 0,
        "resumed_from_epochs": starts[1:],
        **({"lineage": population.lineage(t["trial_id"])}
           if population is not None and t["trial_id"] in population.members else {}),
    }


def best_schedule(spec: Spec, command: list[str], population, trial_id: str, generation: int) -> dict:
    """The best PBT member's model: its generation's config, the ``schedule`` of
    hyperparameters that trained it from scratch (through the members it copied), and
    ``replay``: that schedule as ``training.hyperparameter_schedule`` and the ``tuner
    train`` command that trains it again."""
    import shlex

    import yaml

    from tuner.space import searched

    schedule = population.schedule(trial_id, generation)
    replay = pop.replay_schedule(schedule, population.mutate)
    first = schedule[0]["config"]
    args = _replay_args(command[2:] if command[:2] == ["tuner", "tune"] else [])
    if not any(a == "--config" or a.startswith("--config=") for a in args):
        args = ["--config", "quick", *args]  # `tuner tune`'s default; `tuner train` needs one
    sets = {f"search.space.{n}": first.get(n) if first.get(n) is not None else spec.search.space[n].corners()[0]
            for n in searched(spec.search.space)}
    sets["scheduler.kind"] = "fifo"
    if replay:
        sets["training.hyperparameter_schedule"] = replay
    flow = {k: yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
            for k, v in sets.items()}
    replay_command = ["tuner", "train", *args, "--name", f"{spec.name}-replay",
                      *[x for k, v in flow.items() for x in ("--set", f"{k}={v}")]]
    return {"config": dict(schedule[-1]["config"]), "generation": generation,
            "schedule": [{"epoch": s["epoch"], "trial": s["trial"], **{n: s["config"].get(n) for n in population.mutate}}
                         for s in schedule],
            "replay": {"hyperparameter_schedule": replay, "command": shlex.join(replay_command)}}


def _replay_args(args: list[str]) -> list[str]:
    """A ``tuner tune`` command's arguments without its ``--name`` (the replay's overrides
    come after its own, and the last of a key wins)."""
    out, i = [], 0
    while i < len(args):
        if args[i] == "--name":
            i += 2
        elif args[i].startswith("--name="):
            i += 1
        else:
            out.append(args[i])
            i += 1
    return out


def trials_from_grid(grid) -> list[dict]:
    """Per-trial records from Tune's ``ResultGrid``."""
    trials = []
    for result in grid:
        df = result.metrics_dataframe
        history = [] if df is None or df.empty else df.to_dict("records")
        history = once_per_epoch(h for h in history if h.get(TIME_ATTR) is not None and not _isnan(h.get(TIME_ATTR)))
        trial_id = (result.metrics or {}).get("trial_id") or posixpath.basename(result.path)
        error = None
        if result.error is not None:
            error = str(result.error).strip().splitlines()[-1][:500] if str(result.error).strip() else type(result.error).__name__
        trials.append({"trial_id": trial_id, "config": pop.hyperparameters(result.config), "history": history,
                       "error": error})
    trials.sort(key=lambda t: t["trial_id"])
    return trials


def once_per_epoch(history) -> list[dict]:
    """``history`` without the epochs reported again (``replayed``) that it already has.
    A resumed trial reports again, from their checkpoints, the epochs its driver had not
    taken in as far as the experiment's saved state knows (``checkpoints.replayed_epochs``);
    the stored results may have some of them. An epoch trained again (after a restart
    from an older checkpoint) stays: it is a new result."""
    seen, kept = set(), []
    for h in history:
        if not (_clean(h.get("replayed")) is True and h[TIME_ATTR] in seen):
            kept.append(h)
        seen.add(h[TIME_ATTR])
    return kept


def _isnan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


def write_results(spec: Spec, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    spec.experiment_location().join(RESULTS).write_bytes(sink.getvalue())


def export_best(spec: Spec, summary: dict, dataset: storage.Location) -> None:
    """Score the best checkpoint on the test split (``test_loss`` and ``test_accuracy`` or
    ``test_mae``) and store it as ``best_model.keras``."""
    best = summary["best"]
    if best is None:
        return
    import tf_keras

    from tuner import checkpoints, data, training

    manifest = data.staged_manifest(dataset)
    task = data.staged.task(manifest)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp, checkpoints.MODEL_FILE)
        checkpoint = storage.Location(best["checkpoint_uri"], spec.storage.endpoint)
        local.write_bytes(checkpoint.join(checkpoints.MODEL_FILE).read_bytes())
        net = tf_keras.models.load_model(local)
        test = data.SplitReader(dataset, manifest, "test")
        scores = training.evaluate(net, test.chunks(), task=task, loss=spec.model.loss)
        target = spec.experiment_location().join(BEST_MODEL)
        target.write_bytes(local.read_bytes())
    best.update({f"test_{k}": v for k, v in scores.items()}, model_uri=target.uri)


def write_summary(spec: Spec, summary: dict) -> str:
    """Store ``summary.json``; returns its URI."""
    target = spec.experiment_location().join(SUMMARY)
    target.write_json(summary)
    return target.uri


def trial_values(where: storage.Location, name: str, metric: str, mode: str,
                 first_generation: bool = False) -> dict[str, tuple[float, float]]:
    """{trial id: (the last ``metric`` it reported, its best)} from the results.parquet of
    experiment ``name`` stored at ``where`` ({} where there is none); ``first_generation``:
    of a PBT member's first generation only (its own configuration's training, before any
    exploit)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(where.join(name, RESULTS).read_bytes()))
    except (OSError, KeyError, ValueError):  # none stored
        return {}
    if metric not in table.column_names:
        return {}
    better = max if mode == "max" else min
    latest: dict[str, tuple[int, float]] = {}
    best: dict[str, float] = {}
    for row in table.to_pylist():
        value, trial_id = _clean(row[metric]), row["trial_id"]
        if value is None or first_generation and (row.get("generation") or 0) != 0:
            continue
        if trial_id not in latest or row["epoch"] >= latest[trial_id][0]:
            latest[trial_id] = (row["epoch"], value)
        best[trial_id] = better(best.get(trial_id, value), value)
    return {t: (latest[t][1], best[t]) for t in latest}


def read_summary(where: storage.Location, name: str) -> dict:
    """The summary of experiment ``name`` stored at ``where``."""
    return where.join(name, SUMMARY).read_json()
