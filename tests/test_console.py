"""``tuner.console.Console``: the lines a person sees while Tune runs, driven through
Tune's callback hooks with stand-in trials."""

import pickle
from dataclasses import dataclass, field

import pytest

from tuner import console
from tuner.console import Console


@dataclass
class Trial:
    trial_id: str
    config: dict = field(default_factory=dict)
    status: str = "PENDING"
    last_result: dict = field(default_factory=dict)
    metric_analysis: dict = field(default_factory=dict)
    error_file: str | None = None
    local_path: str | None = None


def make(level="normal"):
    return Console(level, "val_accuracy", "max", max_t=4, budget=12, scheduler="ASHA", rungs=[1, 2],
                   searched=["learning_rate", "optimizer"])


def result(c, trials, t, epoch, acc, done=False, resumed=0, replayed=False):
    r = {"epoch": epoch, "val_accuracy": acc, "resumed_from_epoch": resumed, "done": done,
         **({"replayed": True} if replayed else {})}
    c.on_trial_result(iteration=0, trials=trials, trial=t, result=r)
    t.last_result = r
    best = max(acc, t.metric_analysis.get("val_accuracy", {}).get("max", acc))
    t.metric_analysis = {"val_accuracy": {"max": best, "min": best}}


def test_one_line_per_event_and_a_progress_line(capsys, tmp_path):
    c = make()
    a = Trial("a_00000", {"learning_rate": 0.00123, "optimizer": "adam", "width": 64})
    b = Trial("a_00001", {"learning_rate": 0.02, "optimizer": "sgd", "width": 64})
    d = Trial("a_00002", {"learning_rate": 0.5, "optimizer": "sgd"})
    trials = [a, b, d]
    for t in trials:
        t.status = "RUNNING"
        c.on_trial_start(iteration=0, trials=trials, trial=t)
    result(c, trials, a, 1, 0.91)
    result(c, trials, b, 1, 0.52, done=True)
    b.status = "TERMINATED"
    c.on_trial_complete(iteration=0, trials=trials, trial=b)
    error = tmp_path / "error.txt"
    error.write_text("Failure # 1\nTraceback (most recent call last):\n  File x\nValueError: loss is NaN at epoch 1\n")
    d.status, d.error_file = "ERROR", str(error)
    c.on_trial_error(iteration=0, trials=trials, trial=d)
    result(c, trials, a, 2, 0.95)
    # Epoch 3 was stored but its result lost (the worker group died): the restarted group
    # reports it again from its checkpoint, then trains epoch 4.
    result(c, trials, a, 3, 0.96, replayed=True)
    result(c, trials, a, 4, 0.97, done=True, resumed=3)
    a.status = "TERMINATED"
    c.on_trial_complete(iteration=0, trials=trials, trial=a)
    c.on_experiment_end(trials=trials)
    out = [line.split("] ", 1)[-1] for line in capsys.readouterr().out.splitlines()]
    assert out == [
        "trial a_00000 started: learning_rate=1.23e-03 optimizer=adam",
        "trial a_00001 started: learning_rate=0.02 optimizer=sgd",
        "trial a_00002 started: learning_rate=0.5 optimizer=sgd",
        "trial a_00000 epoch 1: val_accuracy 0.91, promoted past rung 1",
        "trial a_00001 epoch 1: val_accuracy 0.52",
        "trial a_00001 stopped by ASHA at epoch 1, best val_accuracy 0.52",
        out[6],  # progress, checked below
        "trial a_00002 failed: ValueError: loss is NaN at epoch 1",
        f"         (traceback: {error})",
        out[9],
        "trial a_00000 epoch 2: val_accuracy 0.95, promoted past rung 2",
        "trial a_00000 epoch 3: val_accuracy 0.96 (from its checkpoint; its first report was lost)",
        "trial a_00000 resumed from epoch 3",
        "trial a_00000 epoch 4: val_accuracy 0.97",
        "trial a_00000 finished 4 epochs, best val_accuracy 0.97",
        out[15],  # the last progress line, once: the experiment's end repeats nothing
    ]
    assert out[6].startswith("trials: 2 running, 0 finished, 1 stopped, 0 failed | epochs 2 of 12 | "
                             "best val_accuracy 0.91 (trial a_00000) | ")
    assert out[9].startswith("trials: 1 running, 0 finished, 1 stopped, 1 failed | epochs 2 of 12 | ")
    assert out[15].startswith("trials: 0 running, 1 finished, 1 stopped, 1 failed | epochs 5 of 12 | "
                              "best val_accuracy 0.97 (trial a_00000) | ")


def test_asha_promote_trials_wait_at_rungs(capsys, tmp_path):
    c = Console("normal", "val_accuracy", "max", max_t=4, budget=8, scheduler="ASHA", rungs=[1, 2], searched=[],
                waits_at_rungs=True, experiment_uri="s3://b/exp")
    a, b = Trial("a_00000", status="RUNNING"), Trial("a_00001", status="RUNNING")
    trials = [a, b]
    for t in trials:
        c.on_trial_start(iteration=0, trials=trials, trial=t)
    result(c, trials, a, 1, 0.9)
    a.status = "PAUSED"
    c.on_step_end(iteration=0, trials=trials)
    c.on_trial_start(iteration=0, trials=trials, trial=a)  # promoted
    error = tmp_path / "error.txt"
    error.write_text("RuntimeError: worker lost\n")
    b.status, b.error_file, b.local_path = "ERROR", str(error), str(tmp_path / "trial_a_00001_x")
    c.on_trial_error(iteration=0, trials=trials, trial=b)
    out = [line.split("] ", 1)[-1] for line in capsys.readouterr().out.splitlines()]
    assert out[2] == "trial a_00000 epoch 1: val_accuracy 0.9, waits at rung 1"
    assert out[3] == "trial a_00000 promoted past rung 1, continues"
    assert out[5] == "         (traceback: s3://b/exp/trial_a_00001_x/error.txt)"
    assert out[6].startswith("trials: 0 running, 0 finished, 0 stopped, 1 failed, 1 waiting at a rung | ")


def test_quiet_prints_failures_only(capsys, tmp_path):
    c = make("quiet")
    t = Trial("a_00000", {"learning_rate": 0.1}, status="RUNNING")
    c.on_trial_start(iteration=0, trials=[t], trial=t)
    result(c, [t], t, 1, 0.5)
    error = tmp_path / "error.txt"
    error.write_text("Traceback (most recent call last):\nRuntimeError: worker 1 lost\n\n")
    t.status, t.error_file = "ERROR", str(error)
    c.on_trial_error(iteration=0, trials=[t], trial=t)
    c.on_experiment_end(trials=[t])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("] ", 1)[-1] for line in lines] == ["trial a_00000 failed: RuntimeError: worker 1 lost"]


def test_a_log_gets_a_progress_line_at_most_once_a_minute(capsys, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(console.time, "time", lambda: now[0])
    c = make()
    t = Trial("a_00000", status="RUNNING")
    for epoch in range(1, 4):
        now[0] += 25
        result(c, [t], t, epoch, 0.9)
        c.on_step_end(iteration=0, trials=[t])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("trials:")]
    assert len(lines) == 1 and "epochs 3 of 12 " in lines[0]  # at 25 s and 50 s none; at 75 s one


class Counted(list):
    """Trials that count the passes over them."""

    passes = 0

    def __iter__(self):
        self.passes += 1
        return super().__iter__()


def test_tune_steps_count_the_trials_at_most_once_a_second(capsys, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(console.time, "time", lambda: now[0])
    c = make()
    trials = Counted(Trial(f"a_{i:05d}", status="RUNNING") for i in range(1000))
    for _ in range(100):  # no line is due in a log before a minute
        now[0] += 0.5
        c.on_step_end(iteration=0, trials=trials)
    assert trials.passes == 0
    now[0] += 60
    for _ in range(100):  # Tune's steps within one second
        now[0] += 0.001
        c.on_step_end(iteration=0, trials=trials)
    assert trials.passes == 1
    assert capsys.readouterr().out.startswith("trials: 1000 running, ")


def test_pickles_without_its_run_state():
    c = make()
    c._seen["x"] = 3
    back = pickle.loads(pickle.dumps(c))
    assert back._seen == {} and back.level == "normal" and back.rungs == [1, 2]


@pytest.mark.parametrize("seconds,text", [(5, "5s"), (75, "1m15s"), (3725, "1h02m")])
def test_duration(seconds, text):
    assert console.duration(seconds) == text


NATIVE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796120354.334349   22361 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders. To "
    "turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.",
    "\x1b[36m(RayTrainWorker pid=8, ip=10.0.0.3)\x1b[0m I0000 00:00:1796120337.873335   21867 cudart_stub.cc:31] "
    "Could not find cuda drivers on your machine, GPU will not be used. [repeated 2x across cluster]",
]
CUINIT = ("(RayTrainWorker pid=9) E0000 00:00:1796120340.017424   21867 cuda_platform.cc:52] failed call to cuInit: "
          "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)")
KEPT = ["(RayTrainWorker pid=9) Traceback (most recent call last):", '  File "x.py", line 1, in <module>',
        "(RayTrainWorker pid=9) ValueError: loss is NaN", "",
        "E0000 00:00:1796120340.017424   21867 collective_ops.cc:12] Collective ops is aborted by: worker 1 lost"]


PG_CLEANER = ("\x1b[36m(PlacementGroupCleaner pid=7)\x1b[0m 2026-12-01 10:41:12,762\tWARNING placement_group_cleaner.py:120 "
              "-- Detected that the Ray Train controller actor (0f16c867062c00fc1f9bb33001000000) is dead. Cleaning up "
              "placement group = [PlacementGroupID(7399328a84235fc701258e1771a001000000)] created by this run.")


def test_stderr_filter_drops_tensorflow_start_up_lines_only():
    import subprocess
    import sys

    from tuner import stderr_filter

    intended = ("\x1b[36m(RayTrainWorker pid=31554)\x1b[0m The actor is dead because its worker process has died. "
                "Worker exit type: INTENDED_SYSTEM_EXIT Worker exit detail: Destroying worker since its placement "
                "group was removed. Placement group id: 15c9b993e6d3bfc8394ab4e8bf1601000000, bundle index: -1")
    lines = NATIVE[:2] + KEPT[:2] + [CUINIT, NATIVE[2], PG_CLEANER, intended] + KEPT[2:] + [
        stderr_filter.KEEP_GPU_ERRORS.decode().rstrip("\n"), NATIVE[1], CUINIT]
    out = subprocess.run([sys.executable, "-S", "-u", stderr_filter.__file__], input="\n".join(lines) + "\n",
                         capture_output=True, text=True, timeout=30).stdout
    # Until the driver says its trials use GPUs, the failed CUDA probe goes too.
    assert out.splitlines() == KEPT + [CUINIT]
