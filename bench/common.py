"""What every benchmark module uses: the experiment names of this run, the real CLI run
with its driver's peak memory, a finished experiment's results and the staged MNIST."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

# Experiment names unique per run, so a reused --work folder never refuses a rerun.
NAME = {b: f"{b}-{time.strftime('%Y%m%d-%H%M%S')}" for b in ("b1", "b2", "b3", "tuned", "cnn", "economy", "scaling",
                                                             "ckpt", "peers", "searchers", "data", "s3", "scale", "head",
                                                             "pbt", "warm", "pareto")}


def tuner(args: list[str], cwd: Path) -> dict:
    """Run the real CLI; returns its exit code and the driver's peak RSS (MiB)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    log = open(cwd / "tuner.log", "a")
    proc = subprocess.Popen([sys.executable, "-m", "tuner", *args], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    peak = [0]

    def poll():
        # VmHWM is the kernel's own peak-RSS mark for the process (Linux).
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak[0] = max(peak[0], int(line.split()[1]) * 1024)
            except OSError:
                break
            time.sleep(0.5)

    watcher = threading.Thread(target=poll, daemon=True)
    started = time.time()
    watcher.start()
    code = proc.wait()
    watcher.join()
    log.close()
    if code != 0:
        raise SystemExit(f"tuner {' '.join(args)} failed ({code}); see {cwd / 'tuner.log'}")
    return {"seconds": time.time() - started, "driver_peak_rss_mb": peak[0] / 2**20}


def experiment(storage: Path, name: str) -> tuple[dict, list[dict]]:
    import pyarrow.parquet as pq

    summary = json.loads((storage / name / "summary.json").read_text())
    rows = pq.read_table(storage / name / "results.parquet").to_pylist()
    return summary, rows


# `bench/run.py all --smoke --jobs N` stages the subset once, here, for every benchmark.
DATASETS_VAR = "TUNER_BENCH_DATASETS"


def stage(work: Path, mnist: str | None) -> str:
    dest = Path(os.environ.get(DATASETS_VAR) or work / "datasets") / ("mnist" if mnist else "mnist-subset")
    if not (dest / "manifest.json").exists():
        tuner(["stage-data", "--source", mnist or "builtin", "--dest", str(dest)], work)
    return str(dest)
