"""`bench/run.py all --smoke`: the benchmark code keeps working (figures are not checked)."""

import json
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def test_bench_smoke(tmp_path):
    docs = [REPO / "docs" / "benchmarks.md", *sorted((REPO / "docs" / "benchmarks").glob("*.md"))]
    before = {p: p.read_text() for p in docs}
    # Two at a time: their figures are not checked, and alone they take 12 minutes here.
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "all", "--smoke", "--jobs", "2",
                           "--work", str(tmp_path)], capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            results.update(json.loads(line))
    assert set(results) == {"b1", "b2", "b3", "tuned", "cnn", "economy", "scaling", "ckpt", "peers", "searchers", "data",
                            "pbt", "warm"}
    assert results["b1"]["ratio"] > 0 and results["b2"]["workers_2"]["median_startup_seconds"] > 0
    assert 0 < results["b1"]["trial_fraction_of_peak"] < 1
    # `tuned` and `cnn` are one function: cnn's smoke run keeps it working.
    assert "skipped" in results["tuned"] and 0 < results["cnn"]["best_test_accuracy"] <= 1
    # Smoke runs take one arm of economy's, scaling's and b2's comparisons (see bench/run.py).
    assert results["economy"]["asha"]["trials"] == results["economy"]["fifo"]["trials"]
    assert "asha" in results["economy"]["against_fifo"]
    assert set(results["scaling"]["linear"]) == {"workers_2", "spread_pt"}
    # ckpt's smoke run: `checkpoint.upload=sync` alone (every other run uploads async).
    assert results["ckpt"]["sync"]["median_fraction_of_epoch"] > 0 and "async" not in results["ckpt"]
    searched = results["searchers"]
    # One algorithm in a smoke run; test_searchers.py runs each (bayesian too, in CI).
    assert searched["random"]["trials"] == searched["samples"]
    assert all("skipped" in searched[a] for a in ("quasi_random", "tpe", "bayesian"))
    assert {"tuner", "kerastuner", "optuna", "raytune", "raytune_train"} <= set(results["peers"])
    multi_worker = [p for p, r in results["peers"].items() if isinstance(r, dict) and r.get("multi_worker_trials")]
    assert multi_worker == ["tuner", "raytune_train"]
    # The hand-written Ray Tune + Ray Train peer tried tuner's configurations, as many.
    assert results["peers"]["raytune_train"]["trials"] == results["peers"]["tuner"]["trials"]
    assert results["peers"]["tuner_vs_raytune_train"]["wall"] > 0
    streamed = results["data"]
    # tuner's streamed input alone (Ray Data's and two runs at once are the full run's).
    assert streamed["stream"]["x1"]["startup_seconds"] > 0 and "raydata" not in streamed
    assert streamed["stream"]["x1"]["s3_per_worker_epoch"]["get_requests"] > 0
    assert streamed["tuner_train_x1"]["s3_requests_per_trial_epoch_store"] > 0
    assert streamed["tuner_train_x1"]["s3_requests_per_trial_epoch_store_by_kind"]["checkpoints"] > 0
    # PB2 (PBT runs in test_pbt.py) with 2 members; a warm-started run after a first one.
    assert results["pbt"]["pb2"]["trials"] == 2 and results["pbt"]["pb2"]["best_schedule"]
    assert results["warm"]["warm"]["until_within_0.1pt_of_first_best"]["trials"] == 1
    assert results["warm"]["warm"]["best_config"] == results["warm"]["first"]["best_config"]
    # A smoke run records nothing.
    after = [REPO / "docs" / "benchmarks.md", *sorted((REPO / "docs" / "benchmarks").glob("*.md"))]
    assert {p: p.read_text() for p in after} == before
