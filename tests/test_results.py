"""The summary and per-epoch rows from plain trial records (no cluster)."""

import math

from tuner.results import once_per_epoch, rows_from_results, running_seconds, summarize, worker_group_starts
from tuner.spec import load_spec

CONFIG = {"learning_rate": 1e-3, "schedule": "constant", "decay_epochs": 1.0, "decay_rate": 0.5, "staircase": True,
          "optimizer": "adam", "momentum": 0.9, "batch_size": 32, "dropout": 0.1, "width": 64, "depth": 1}


def epoch(e, acc, path=True):
    return {"epoch": e, "val_accuracy": acc, "workers": 2, "steps_per_epoch": 43, "time_total_s": 3.0 * e,
            "checkpoint_path": f"b/exp/runs/t/epoch-{e:04d}" if path else None}


def trials():
    return [
        {"trial_id": "a", "config": CONFIG, "error": None, "history": [epoch(1, 0.8), epoch(2, 0.9), epoch(3, 0.9)]},
        {"trial_id": "b", "config": {**CONFIG, "learning_rate": 1e-5}, "error": None, "history": [epoch(1, 0.2)]},
        {"trial_id": "c", "config": CONFIG, "error": "DivergedError: loss nan", "history": []},
    ]


def test_summary_per_trial_and_best():
    spec = load_spec("quick")
    summary = summarize(spec, ["tuner", "tune"], trials(), lambda p: "s3://" + p, lambda p: True)
    by_id = {t["trial_id"]: t for t in summary["trials"]}
    assert by_id["a"]["epochs"] == 3 and not by_id["a"]["stopped_early"]
    assert by_id["b"]["stopped_early"] and by_id["b"]["epochs"] == 1
    assert by_id["c"]["status"] == "error" and not by_id["c"]["stopped_early"] and by_id["c"]["epochs"] == 0
    assert by_id["a"]["global_batch"] == 64 and by_id["a"]["wall_seconds"] == 9.0
    assert summary["epochs_spent"] == 4
    # A tie at 0.9: the later epoch, the one checkpoint retention keeps.
    assert summary["best"]["trial_id"] == "a" and summary["best"]["epoch"] == 3
    assert summary["best"]["checkpoint_uri"] == "s3://b/exp/runs/t/epoch-0003"


def test_a_multi_objective_summary_has_the_brute_force_front_and_its_hypervolume():
    import random

    from tuner import pareto

    spec = load_spec("quick", ["objective=[{metric: val_accuracy}, {metric: params}]"])
    rng = random.Random(3)
    records = []
    for i in range(12):
        history = [{**epoch(e, round(rng.random(), 2)), "params": rng.choice([100, 200, 400, 800])} for e in (1, 2)]
        records.append({"trial_id": f"t{i:02d}", "config": CONFIG, "error": None, "history": history})
    records.append({"trial_id": "x", "config": CONFIG, "error": "DivergedError", "history": [epoch(1, 0.99)]})
    summary = summarize(spec, [], records, lambda p: "s3://" + p, lambda p: True)
    ends = {t["trial_id"]: (t["history"][-1]["val_accuracy"], t["history"][-1]["params"]) for t in records[:-1]}
    brute = {i for i, p in ends.items() if not any(pareto.dominates(q, p, ("max", "min")) for q in ends.values())}
    front = summary["pareto_front"]
    assert {e["trial_id"] for e in front} == brute
    assert [e["val_accuracy"] for e in front] == sorted((e["val_accuracy"] for e in front), reverse=True)
    assert all(e["epoch"] == 2 and e["checkpoint_uri"].endswith("epoch-0002") for e in front)
    assert summary["objectives"] == [{"metric": "val_accuracy", "mode": "max"}, {"metric": "params", "mode": "min"}]
    assert summary["best"]["trial_id"] == front[0]["trial_id"]  # the front's best first objective
    reference = summary["hypervolume"]["reference"]
    assert reference["val_accuracy"] < min(v for v, _ in ends.values()) and reference["params"] > 800
    assert summary["hypervolume"]["value"] == pareto.hypervolume(list(ends.values()), ("max", "min"),
                                                                 (reference["val_accuracy"], reference["params"]))


def test_best_skips_checkpoints_that_retention_deleted():
    spec = load_spec("quick")
    summary = summarize(spec, [], trials(), str, lambda p: not p.endswith("0003"))
    assert summary["best"]["epoch"] == 2


def test_rows_one_per_epoch():
    rows = rows_from_results(trials())
    assert [r["trial_id"] for r in rows] == ["a", "a", "a", "b"]
    assert rows[0]["config/learning_rate"] == 1e-3 and rows[0]["epoch"] == 1


def run(first, last, lost_first=False):
    """Epochs ``first``..``last`` of one worker-group start, as Tune's rows have them:
    start-up figures on the start's first epoch only, NaN where a row lacks a metric."""
    rows = []
    for e in range(first, last + 1):
        row = {**epoch(e, 0.5 + e / 100), "resumed_from_epoch": first - 1,
               "startup_seconds": 7.5 if e == first else math.nan}
        rows.append(row)
    return rows[1:] if lost_first else rows


def test_restarts_from_the_rows_of_each_worker_group_start():
    spec = load_spec("quick")
    records = [
        {"trial_id": "fresh", "config": CONFIG, "error": None, "history": run(1, 3)},
        {"trial_id": "resumed", "config": CONFIG, "error": None, "history": run(1, 3) + run(4, 5)},
        {"trial_id": "twice", "config": CONFIG, "error": None, "history": run(1, 2) + run(3, 4) + run(5, 5)},
        # A worker killed right after epoch 2: the controller had collected neither report.
        {"trial_id": "lost", "config": CONFIG, "error": None, "history": run(3, 5)},
        {"trial_id": "diverged", "config": CONFIG, "history": run(1, 2),
         "error": "DivergedError: training loss became nan in epoch 3"},
        {"trial_id": "never", "config": CONFIG, "error": "RuntimeError: no worker started", "history": []},
    ]
    by_id = {t["trial_id"]: t for t in summarize(spec, [], records, str, lambda p: True)["trials"]}
    assert (by_id["fresh"]["restarts"], by_id["fresh"]["resumed_from_epochs"]) == (0, [])
    assert (by_id["resumed"]["restarts"], by_id["resumed"]["resumed_from_epochs"]) == (1, [3])
    assert (by_id["twice"]["restarts"], by_id["twice"]["resumed_from_epochs"]) == (2, [2, 4])
    assert (by_id["lost"]["restarts"], by_id["lost"]["resumed_from_epochs"]) == (1, [2])
    diverged = by_id["diverged"]
    assert diverged["status"] == "error" and diverged["epochs"] == 2 and diverged["restarts"] == 0
    assert diverged["error"] == "DivergedError: training loss became nan in epoch 3"
    assert by_id["never"]["status"] == "error" and by_id["never"]["restarts"] == 0
    assert by_id["never"]["resumed_from_epochs"] == [] and by_id["never"]["error"] == "RuntimeError: no worker started"


def test_a_start_whose_reports_were_lost_counts_by_its_resumed_epoch():
    # A restart from 0 (no checkpoint yet) differs from the fresh start only by its
    # start-up figures; a start whose first report never reached Tune, by its new
    # resumed_from_epoch. A start that died before its first epoch leaves no row at all.
    assert worker_group_starts(run(1, 1) + run(1, 2)) == [0, 0]
    assert worker_group_starts(run(1, 3) + run(4, 6, lost_first=True)) == [0, 3]
    # Every report of the first start lost when its worker died: its checkpoint shows it.
    assert worker_group_starts(run(3, 5)) == [0, 2]
    # Rows without the metric (written before it existed) count as no start.
    assert worker_group_starts([epoch(1, 0.5)]) == []


def test_running_time_adds_up_the_runs_of_a_paused_and_resumed_trial():
    # Tune's time_total_s starts again from 0 when the trial's function runs again: the
    # resumed run's first report (start-up and restore) may even come later than the last.
    history = [{"time_this_iter_s": a, "time_total_s": b} for a, b in
               ((8.0, 8.0), (2.0, 10.0), (10.5, 10.5), (2.0, 12.5))]
    assert running_seconds(history) == 22.5
    assert running_seconds([{"time_total_s": 3.0}]) == 3.0 and running_seconds([]) is None


def test_an_epoch_reported_again_after_a_resume_makes_one_row():
    """A resumed trial reports again the epochs the experiment's saved state had not
    taken in; one of them may already be in Tune's results: the first report stays."""
    history = [epoch(1, 0.8), epoch(2, 0.9), {**epoch(2, 0.9), "replayed": True}, epoch(3, 0.95)]
    assert once_per_epoch(history) == [epoch(1, 0.8), epoch(2, 0.9), epoch(3, 0.95)]
    # Trained again after a restart from an older checkpoint: a new result, kept.
    assert once_per_epoch([epoch(1, 0.8), epoch(2, 0.9), epoch(2, 0.91)]) == [epoch(1, 0.8), epoch(2, 0.9), epoch(2, 0.91)]


def test_a_pbt_summary_keeps_each_lineage_and_the_best_models_schedule_with_its_replay():
    import shlex

    from tuner import population as pop
    from tuner import report

    spec = load_spec("quick", ["scheduler.kind=pbt", "pbt.interval=1", "search.num_samples=2", "asha.max_t=3",
                               "search.space.learning_rate={loguniform: [1.0e-4, 1.0e-2]}"])
    p = pop.Population(spec.search.space, 2, 1, 0.5, 0.0, None, 3)
    p.add("a", CONFIG), p.add("b", {**CONFIG, "learning_rate": 1e-4})
    p.report("a", 1, 0.9, "b/exp/runs/a/epoch-0001")
    p.report("b", 1, 0.1, "b/exp/runs/b/epoch-0001")
    exploit = p.decide("b")
    assert exploit.donor == "a"
    p.apply(exploit)

    def row(e, acc, gen, run):
        return {**epoch(e, acc), "generation": gen, "checkpoint_path": f"b/exp/runs/{run}/epoch-{e:04d}"}

    records = [
        {"trial_id": "a", "config": CONFIG, "error": None,
         "history": [row(1, 0.9, 0, "a"), row(2, 0.92, 0, "a"), row(3, 0.93, 0, "a")]},
        {"trial_id": "b", "config": exploit.config, "error": None,
         "history": [row(1, 0.1, 0, "b"), row(2, 0.95, 1, "b-g1"), row(3, 0.96, 1, "b-g1")]},
    ]
    command = ["tuner", "tune", "--config", "quick", "--set", "scheduler.kind=pbt", "--name", "exp", "--set",
               "asha.max_t=3", "--set", "search.space.learning_rate={loguniform: [1.0e-4, 1.0e-2]}"]
    summary = summarize(spec, command, records, lambda p: "s3://" + p, lambda p: True, population=p)
    b = next(t for t in summary["trials"] if t["trial_id"] == "b")
    assert [(s["generation"], s["start_epoch"], s["from_trial"]) for s in b["lineage"]] == [(0, 0, None), (1, 1, "a")]
    best = summary["best"]
    assert (best["trial_id"], best["epoch"], best["generation"]) == ("b", 3, 1)
    assert best["config"] == exploit.config
    # Trained from scratch: a's first epoch (a's learning rate), then b's explored one.
    assert [(s["epoch"], s["trial"], s["learning_rate"]) for s in best["schedule"]] == [
        (0, "a", CONFIG["learning_rate"]), (1, "b", exploit.config["learning_rate"])]
    replay = shlex.split(best["replay"]["command"])
    assert replay[:4] == ["tuner", "train", "--config", "quick"] and replay[replay.index("--name") + 1] == "quick-replay"
    sets = [replay[i + 1] for i, a in enumerate(replay) if a == "--set"]
    assert "asha.max_t=3" in sets and "scheduler.kind=fifo" in sets
    replayed = load_spec("quick", sets)
    assert replayed.search.space["learning_rate"].values == (CONFIG["learning_rate"],)
    changed = {n: exploit.config[n] for n in p.mutate if exploit.config[n] != CONFIG[n]}
    assert "learning_rate" in changed
    assert replayed.training.hyperparameter_schedule == [{"epoch": 1, **changed}]
    # Each row's config is its generation's, with where that generation came from.
    rows = rows_from_results(records, {t["trial_id"]: t["lineage"] for t in summary["trials"]})
    rows_b = [r for r in rows if r["trial_id"] == "b"]
    assert [(r["config/learning_rate"], r["pbt_from_trial"], r["pbt_from_epoch"]) for r in rows_b] == [
        (1e-4, None, None), (exploit.config["learning_rate"], "a", 1), (exploit.config["learning_rate"], "a", 1)]
    # The report draws the population and the schedule, and lists the schedule.
    pngs = report.figures(summary, rows)
    assert {"population", "schedule", "hyperparameters"} <= set(pngs) and "rungs" not in pngs
    assert report.exploit_jumps(b, {t: [r for r in rows if r["trial_id"] == t] for t in "ab"}, "val_accuracy") == [
        ((1, 0.9), (2, 0.95))]
    page = report.render_html(summary, rows, {})
    assert "Its hyperparameter schedule" in page and "quick-replay" in page


def test_best_of_a_front_prints_its_table_or_picks_one():
    from tuner.results import front_table, pick

    front = [{"trial_id": "a", "epoch": 4, "val_accuracy": 0.95, "params": 800},
             {"trial_id": "b", "epoch": 2, "val_accuracy": 0.90, "params": 100}]
    objectives = [{"metric": "val_accuracy", "mode": "max"}, {"metric": "params", "mode": "min"}]
    assert pick(front, "params", "min")["trial_id"] == "b" and pick(front, "val_accuracy", "max")["trial_id"] == "a"
    lines = front_table(front, objectives).splitlines()
    assert lines[0].startswith("Pareto front: 2 trial(s) that no other beats on val_accuracy (max) and params (min)")
    assert lines[1].split() == ["trial", "epoch", "val_accuracy", "params"] and lines[2].split() == ["a", "4", "0.95", "800"]
