"""`tuner report` on a small synthetic experiment: the analysis and the page."""

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tuner import report, rungs
from tuner.cli import main
from tuner.spec import load_spec

pytest.importorskip("matplotlib")


def make_experiment(root, name="exp"):
    spec = load_spec("quick", ["search.num_samples=6", "asha.max_t=4", "asha.grace_period=1",
                               "asha.reduction_factor=2"]).to_dict()
    rng = random.Random(0)
    trials, rows = [], []
    for i, epochs in enumerate([1, 1, 1, 2, 4, 4]):
        config = {"learning_rate": 10 ** rng.uniform(-4, -2), "optimizer": rng.choice(["adam", "sgd"]),
                  "batch_size": 32, "dropout": rng.uniform(0, 0.4), "width": 128, "depth": 1}
        if i == 5:
            config["learning_rate"] = 0.0098  # the best, at the upper edge of [1e-4, 1e-2]
        tid = f"t_{i:05d}"
        curve = [0.5 + 0.08 * e + 0.01 * i for e in range(1, epochs + 1)]
        rows += [{"trial_id": tid, "epoch": e, "val_accuracy": a, "train_seconds": 2.0, "workers": 2, **config}
                 for e, a in zip(range(1, epochs + 1), curve)]
        trials.append({"trial_id": tid, "config": config, "status": "terminated", "epochs": epochs,
                       "best_val_accuracy": max(curve), "restarts": 0})
    best = trials[-1]
    summary = {"name": name, "command": ["tuner", "tune", "--config", "quick", "--set", "asha.max_t=4"],
               "spec": spec, "finished": "2026-11-26T00:00:00Z", "epochs_spent": 13,
               "best": {"trial_id": best["trial_id"], "config": best["config"], "epoch": 4,
                        "val_accuracy": best["best_val_accuracy"], "test_accuracy": 0.91,
                        "checkpoint_uri": f"{root}/{name}/runs/{best['trial_id']}/epoch-0004"},
               "trials": trials}
    (root / name).mkdir(parents=True)
    (root / name / "summary.json").write_text(json.dumps(summary))
    pq.write_table(pa.Table.from_pylist(rows), root / name / "results.parquet")
    return summary, rows


def test_rungs_ladder_ledger_and_edges(tmp_path):
    summary, rows = make_experiment(tmp_path)
    milestones = rungs.milestones(summary["spec"]["asha"])
    assert milestones == [1, 2, 4]
    assert rungs.rung_ladder(summary["trials"], milestones) == [
        {"rung": 1, "trials": 6}, {"rung": 2, "trials": 3}, {"rung": 4, "trials": 2}]
    ledger = report.cost_ledger(summary, rows)
    assert (ledger["epochs_spent"], ledger["epochs_full_budget"]) == (13, 24)
    assert ledger["training_worker_seconds"] == pytest.approx(13 * 2.0 * 2)
    warnings = report.edge_warnings(summary["spec"]["search"]["space"], summary["best"]["config"])
    assert len(warnings) == 1 and "`learning_rate`" in warnings[0] and "upper edge" in warnings[0]


def test_report_command_writes_a_self_contained_page(tmp_path, capsys):
    make_experiment(tmp_path)
    assert main(["report", "--storage", str(tmp_path), "--name", "exp"]) == 0
    page = tmp_path / "exp" / "report" / "report.html"
    assert capsys.readouterr().out.strip() == str(page)
    text = page.read_text()
    assert text.count('src="data:image/png;base64,') == 4  # curves, rungs, hyperparameters, parallel
    for png in ("curves", "rungs", "hyperparameters", "parallel"):
        assert (tmp_path / "exp" / "report" / f"{png}.png").stat().st_size > 5000
    assert "upper edge" in text and "13</td><td>24 (54% spent)" in text
    assert "tuner tune --config quick --set asha.max_t=4" in text and "0.9100" in text


def test_report_of_a_missing_experiment_is_one_line(tmp_path, capsys):
    assert main(["report", "--storage", str(tmp_path), "--name", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No summary at" in err[0]


def test_report_page_loads_in_headless_chromium(tmp_path):
    import os
    import shutil
    import subprocess

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        if os.environ.get("TUNER_REQUIRE_SERVICES") == "1":
            pytest.fail("chromium is required here (TUNER_REQUIRE_SERVICES=1): apt-get install chromium")
        pytest.skip("chromium not installed (Debian package `chromium`)")
    make_experiment(tmp_path)
    assert main(["report", "--storage", str(tmp_path), "--name", "exp"]) == 0
    url = (tmp_path / "exp" / "report" / "report.html").as_uri()
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--virtual-time-budget=10000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120)
    # The page's own load handler counts figures that loaded and decoded.
    assert 'data-figures="4/4"' in dom.stdout, dom.stdout[:500] + dom.stderr[-2000:]
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, "--window-size=1200,2400", f"--screenshot={shot}", url],
                   capture_output=True, text=True, timeout=120, check=True)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2400, 1200) and pixels.std() > 0.05  # not a blank page


@pytest.mark.parametrize("lo,hi", [(1e-3, 1e-2), (5e-4, 5e-3), (1e-4, 1e-2), (16, 1024), (1e-9, 1.0), (2e-3, 2.5e-3)])
def test_log_axis_labels_do_not_run_into_each_other(lo, hi):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))  # one panel of the hyperparameter figure
    ax.scatter([lo, (lo * hi) ** 0.5, hi], [0.9, 0.95, 0.97])
    report.log_xaxis(ax, lo, hi)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for t in ax.get_xticklabels() + ax.get_xticklabels(minor=True) if t.get_text() and t.get_visible()
              and lo / 1.1 <= t.get_position()[0] <= hi * 1.1]
    boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.x0)
    plt.close(fig)
    assert 2 <= len(boxes) <= 5
    assert all(a.x1 + 2 <= b.x0 for a, b in zip(boxes, boxes[1:])), [t.get_text() for t in labels]


def test_a_report_of_1000_trials_lists_the_best_and_the_failed(tmp_path):
    summary, rows = make_experiment(tmp_path)
    rng = random.Random(1)
    trials = []
    for i in range(1000):
        epochs = rng.choice([1, 1, 1, 2, 4])
        config = {**summary["trials"][0]["config"], "learning_rate": 10 ** rng.uniform(-4, -2)}
        curve = [0.4 + 0.1 * e + 0.0001 * i for e in range(1, epochs + 1)]
        failed = i == 3
        trials.append({"trial_id": f"t_{i:05d}", "config": config, "status": "error" if failed else "terminated",
                       "epochs": epochs, "best_val_accuracy": None if failed else max(curve), "restarts": 0})
        rows += [] if failed else [{"trial_id": f"t_{i:05d}", "epoch": e, "val_accuracy": a, "train_seconds": 2.0,
                                    "workers": 2} for e, a in zip(range(1, epochs + 1), curve)]
    summary["trials"] = trials
    (tmp_path / "exp" / "summary.json").write_text(json.dumps(summary))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "exp" / "results.parquet")
    assert main(["report", "--storage", str(tmp_path), "--name", "exp"]) == 0
    text = (tmp_path / "exp" / "report" / "report.html").read_text()
    listed = [line.split("</td>")[0] for line in text.split("<tr><td>")[1:] if line.startswith("t_")]
    # The best TOP, best first (4 epochs, then the highest index), then the failed trial.
    assert len(listed) == report.TOP + 1 and listed[-1] == "t_00003"
    best4 = sorted((t for t in trials if t["epochs"] == 4), key=lambda t: -t["best_val_accuracy"])
    assert listed[:3] == [t["trial_id"] for t in best4[:3]]
    assert f"The best {report.TOP} and the failed ones of 1000 trials" in text
    assert text.count('src="data:image/png;base64,') == 4


def test_an_epoch_axis_has_whole_epochs_only():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))  # the learning curves of a 3-epoch run
    ax.plot([1, 2, 3], [0.8, 0.9, 0.95])
    report.whole_epochs(ax)
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
    plt.close(fig)
    assert ticks == [1, 2, 3]


def test_a_multi_objective_report_draws_the_front_and_its_hypervolume(tmp_path, capsys):
    from tuner import results

    summary, rows = make_experiment(tmp_path, "mo")
    for i, r in enumerate(rows):
        r.update(params=[8000, 4000, 20000, 1000, 50000, 90000][int(r["trial_id"][-1])], timestamp=100 + i)
    records = [{"trial_id": t["trial_id"], "config": t["config"], "error": None,
                "history": [{**r, "checkpoint_path": f"runs/{r['trial_id']}/e{r['epoch']}"} for r in rows
                            if r["trial_id"] == t["trial_id"]]} for t in summary["trials"]]
    spec = load_spec("quick", ["objective=[{metric: val_accuracy}, {metric: params}]", "asha.max_t=4"])
    mo = results.summarize(spec, summary["command"], records, str, lambda p: True)
    (tmp_path / "mo" / "summary.json").write_text(json.dumps(mo))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mo" / "results.parquet")
    assert main(["report", "--storage", str(tmp_path), "--name", "mo"]) == 0
    text = (tmp_path / "mo" / "report" / "report.html").read_text()
    for png in ("pareto_front", "hypervolume"):
        assert (tmp_path / "mo" / "report" / f"{png}.png").stat().st_size > 5000
    assert f"<h3>Pareto front</h3><p>{len(mo['pareto_front'])} trial(s)" in text
    ends = report.trial_ends(mo, {t["trial_id"]: [r for r in rows if r["trial_id"] == t["trial_id"]]
                                  for t in summary["trials"]})
    curve = report.hypervolume_curve(mo, ends)
    assert curve == sorted(curve) and curve[-1] == pytest.approx(mo["hypervolume"]["value"])  # never shrinks
