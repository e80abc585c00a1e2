"""The summary and per-epoch rows from plain trial records (no cluster)."""

from tuner.results import rows_from_results, summarize
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


def test_best_skips_checkpoints_that_retention_deleted():
    spec = load_spec("quick")
    summary = summarize(spec, [], trials(), str, lambda p: not p.endswith("0003"))
    assert summary["best"]["epoch"] == 2


def test_rows_one_per_epoch():
    rows = rows_from_results(trials())
    assert [r["trial_id"] for r in rows] == ["a", "a", "a", "b"]
    assert rows[0]["config/learning_rate"] == 1e-3 and rows[0]["epoch"] == 1
