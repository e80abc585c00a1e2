"""Population-based training and warm starts, end to end: real `tuner tune` processes,
real 2-worker trials (MultiWorkerMirroredStrategy), moto S3.

One PBT experiment of 2 members, stopped by Ctrl-C once a member has exploited the other
and resumed by the same command to a complete summary; then a second experiment
warm-started from it (the same space), whose trials follow a replayed hyperparameter
schedule."""

import hashlib
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import boto3
import pyarrow.parquet as pq
import pytest

from tuner import population as pop
from tuner import warm
from tuner.spec import load_spec

pytestmark = pytest.mark.slow

MAX_T = 3
# A terrible and a good learning rate (quasi-random draws take both), nothing else searched
# but the batch size, which the population mutates: whoever ranks last at a perturbation
# point copies the other's checkpoint.
SPACE = ["--set", "search.algorithm=quasi_random", "--set", "search.space.learning_rate={choice: [1.0e-5, 3.0e-3]}",
         "--set", "search.space.schedule=constant", "--set", "search.space.optimizer=adam",
         "--set", "search.space.dropout=0.1", "--set", "search.space.width=64", "--set", "search.space.depth=1",
         "--set", "search.space.batch_size={choice: [32, 64]}", "--set", f"asha.max_t={MAX_T}",
         "--set", f"checkpoint.num_to_keep={MAX_T}", "--set", "scaling.max_concurrent_trials=1"]
PBT = ["tune", "--config", "quick", *SPACE, "--set", "scheduler.kind=pbt", "--set", "search.num_samples=2",
       "--set", "pbt.interval=1", "--set", "pbt.quantile=0.5", "--set", "pbt.mutate=[batch_size]"]


def client(env):
    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def read(s3, key: str) -> bytes:
    return s3.get_object(Bucket="tuner", Key=key)["Body"].read()


def keys(s3, prefix: str) -> list[str]:
    return [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="tuner", Prefix=prefix)
            for o in page.get("Contents", [])]


@pytest.fixture(scope="module")
def pbt_experiment(moto_s3, tmp_path_factory):
    """The PBT experiment, stopped by Ctrl-C after its first exploit and resumed."""
    tmp = tmp_path_factory.mktemp("pbt")
    name = "pbt-" + os.urandom(4).hex()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}, **moto_s3}
    cmd = [sys.executable, "-m", "tuner", *PBT, "--name", name, "--storage", "s3://tuner/pbt"]
    log = tmp / "first.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 600
        while proc.poll() is None and time.time() < deadline and " exploits " not in log.read_text():
            time.sleep(0.3)
        assert proc.poll() is None, "the run ended before it could be stopped:\n" + log.read_text()[-3000:]
        time.sleep(2)  # the member that exploited pauses; the other runs on
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C
        assert proc.wait(timeout=120) == 130, log.read_text()[-3000:]
    first = log.read_text()
    second = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    s3 = client(moto_s3)
    summary = json.loads(read(s3, f"pbt/{name}/summary.json"))
    rows = pq.read_table(io.BytesIO(read(s3, f"pbt/{name}/results.parquet"))).to_pylist()
    return {"name": name, "env": env, "tmp": tmp, "first": first, "second": second.stdout, "summary": summary,
            "rows": rows, "s3": s3}


def test_members_exploit_each_other_through_storage_and_resume_after_ctrl_c(pbt_experiment):
    e = pbt_experiment
    s3, name, summary, rows = e["s3"], e["name"], e["summary"], e["rows"]
    assert "Interrupted; run the same command to resume" in e["first"]
    assert "Resuming the interrupted experiment" in e["second"]
    exploit_lines = [line for line in e["first"].splitlines() + e["second"].splitlines() if " exploits " in line]
    assert exploit_lines, e["first"][-2000:]
    print("\n".join(exploit_lines))
    assert [(t["status"], t["epochs"]) for t in summary["trials"]] == [("terminated", MAX_T)] * 2
    exploited = [(t, segment) for t in summary["trials"] for segment in t["lineage"][1:]]
    assert exploited, summary["trials"]
    for trial, segment in exploited:
        runs = f"pbt/{name}/runs"
        folder = f"{runs}/{pop.run_name(trial['trial_id'], segment['generation'])}/epoch-{segment['start_epoch']:04d}"
        donor = (f"{runs}/{pop.run_name(segment['from_trial'], segment['from_generation'])}"
                 f"/epoch-{segment['start_epoch']:04d}")
        # The copy holds the donor's weights and optimizer state: the same model file.
        assert hashlib.sha256(read(s3, f"{folder}/model.keras")).digest() == \
            hashlib.sha256(read(s3, f"{donor}/model.keras")).digest()
        state = json.loads(read(s3, f"{folder}/state.json"))
        assert state["copied_from"]["trial"] == segment["from_trial"]
        donor_state = json.loads(read(s3, f"{donor}/state.json"))
        assert state["replica_weights_sha256"] == donor_state["replica_weights_sha256"]
        # The member's next epochs continued from there, with its generation's batch size.
        mine = sorted((r for r in rows if r["trial_id"] == trial["trial_id"] and r["generation"] == segment["generation"]),
                      key=lambda r: r["epoch"])
        assert mine and mine[0]["epoch"] == segment["start_epoch"] + 1
        assert mine[0]["resumed_from_epoch"] == segment["start_epoch"]
        assert {r["pbt_from_trial"] for r in mine} == {segment["from_trial"]}
        assert {r["per_worker_batch"] for r in mine} == {r["config/batch_size"] for r in mine} == \
            {segment["config"]["batch_size"]}
    # Every epoch of every generation in the results, once.
    per_run = {}
    for r in rows:
        per_run.setdefault((r["trial_id"], r["generation"]), []).append(r["epoch"])
    assert all(len(epochs) == len(set(epochs)) for epochs in per_run.values()), per_run
    best = summary["best"]
    assert best["schedule"][0]["epoch"] == 0 and best["replay"]["command"].startswith("tuner train ")
    # The replay command is a valid `tuner train` of the schedule: a fixed space, the schedule.
    args = shlex.split(best["replay"]["command"])[2:]
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    replay = load_spec("quick", sets)
    assert all(d.is_fixed for d in replay.search.space.values())
    assert replay.training.hyperparameter_schedule == best["replay"]["hyperparameter_schedule"]
    shown = subprocess.run([sys.executable, "-m", "tuner", "best", "--storage", "s3://tuner/pbt", "--name", name],
                           env=e["env"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and best["replay"]["command"] in shown.stdout, shown.stdout + shown.stderr


def test_an_exploit_replayed_from_scratch_trains_the_same_model(pbt_experiment):
    """The first exploit (a member continuing another's first generation at epoch E with
    another batch size), replayed by `tuner train` from scratch with
    `training.hyperparameter_schedule`: the same validation accuracy at every epoch. So the
    copy carried the weights, the optimizer state and the epoch, and the worker retuned
    the batch size and the schedule as the replay does."""
    e = pbt_experiment
    summary, rows = e["summary"], e["rows"]
    trial, segment = next((t, s) for t in summary["trials"] for s in t["lineage"][1:] if s["from_generation"] == 0)
    donor = next(t for t in summary["trials"] if t["trial_id"] == segment["from_trial"])
    base, start = donor["lineage"][0]["config"], segment["start_epoch"]
    name = e["name"] + "-replay"
    sets = [f"search.space.{k}={json.dumps(v)}" for k, v in base.items() if v is not None]
    cmd = [sys.executable, "-m", "tuner", "train", "--config", "quick", *SPACE, *(a for s in sets for a in ("--set", s)),
           "--set", f"training.hyperparameter_schedule=[{{epoch: {start}, batch_size: {segment['config']['batch_size']}}}]",
           "--name", name, "--storage", "s3://tuner/pbt"]
    run = subprocess.run(cmd, env=e["env"], cwd=e["tmp"], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    replayed = {r["epoch"]: r for r in pq.read_table(io.BytesIO(read(e["s3"], f"pbt/{name}/results.parquet"))).to_pylist()}
    original = {r["epoch"]: r for r in rows if (r["trial_id"], r["generation"]) == (donor["trial_id"], 0)
                and r["epoch"] <= start}
    original |= {r["epoch"]: r for r in rows if (r["trial_id"], r["generation"]) == (trial["trial_id"], 1)}
    assert sorted(original) == list(range(1, max(original) + 1))
    for epoch, row in original.items():
        assert replayed[epoch]["per_worker_batch"] == row["per_worker_batch"]
        assert replayed[epoch]["val_accuracy"] == pytest.approx(row["val_accuracy"], abs=0.02), (epoch, row)
    print({e: (original[e]["val_accuracy"], replayed[e]["val_accuracy"]) for e in original})


def test_a_warm_started_run_gets_the_earlier_points(pbt_experiment):
    """Warm-started from the PBT experiment: each member's first configuration (its own
    training before any exploit) is a point; the best runs first, and no other point the
    earlier experiment ran is drawn again."""
    e = pbt_experiment
    name = e["name"] + "-warm"
    cmd = [sys.executable, "-m", "tuner", "tune", "--config", "quick", *SPACE, "--set", "search.num_samples=2",
           "--set", "asha.max_t=1", "--set", "asha.grace_period=1",
           "--set", f"search.warm_start.experiments=[{e['name']}]", "--set", "search.warm_start.top=1",
           "--name", name, "--storage", "s3://tuner/pbt"]
    before = sorted(keys(e["s3"], f"pbt/{e['name']}/"))
    run = subprocess.run(cmd, env=e["env"], cwd=e["tmp"], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert sorted(keys(e["s3"], f"pbt/{e['name']}/")) == before  # the earlier experiment is only read
    summary = json.loads(read(e["s3"], f"pbt/{name}/summary.json"))
    rows = pq.read_table(io.BytesIO(read(e["s3"], f"pbt/{name}/results.parquet"))).to_pylist()
    earlier = e["summary"]["trials"]
    first_generation = {t["trial_id"]: t["lineage"][0]["config"] for t in earlier}
    scores = {}
    for r in e["rows"]:
        if r["generation"] == 0:
            scores[r["trial_id"]] = max(scores.get(r["trial_id"], 0), r["val_accuracy"])
    best = max(scores, key=scores.get)
    started = sorted(summary["trials"], key=lambda t: min(r["timestamp"] for r in rows if r["trial_id"] == t["trial_id"]))
    # The best earlier configuration ran first; then none the earlier experiment had run.
    assert started[0]["config"] == first_generation[best]
    assert warm.key(started[1]["config"]) not in {warm.key(c) for c in first_generation.values()}
