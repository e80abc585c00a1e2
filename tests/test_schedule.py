"""Batch arithmetic and the learning-rate schedule in epochs."""

import math

import pytest

from tuner.schedule import BatchPlan, Schedule, check_plan, scale_learning_rate, schedule_for


@pytest.mark.parametrize(
    "workers, batch, rows, global_batch, steps",
    [(1, 32, 55000, 32, 1719), (2, 32, 55000, 64, 860), (4, 32, 55000, 128, 430), (2, 64, 2750, 128, 22), (3, 100, 300, 300, 1)],
)
def test_global_batch_and_steps(workers, batch, rows, global_batch, steps):
    plan = BatchPlan(workers, batch, rows)
    assert plan.global_batch == global_batch
    assert plan.steps_per_epoch == steps == math.ceil(rows / global_batch)


def test_epoch_budget_covers_every_row_whatever_the_workers():
    for workers in (1, 2, 4, 8):
        plan = BatchPlan(workers, 32, 55000)
        assert 55000 <= plan.steps_per_epoch * plan.global_batch < 55000 + plan.global_batch


def test_plan_too_large_for_data():
    assert "exceeds the 100 training rows" in check_plan(BatchPlan(4, 32, 100))
    assert check_plan(BatchPlan(2, 32, 100)) is None


@pytest.mark.parametrize("rule, expected", [("none", 1e-3), ("linear", 4e-3), ("sqrt", 2e-3)])
def test_lr_scaling_rules(rule, expected):
    assert scale_learning_rate(1e-3, 128, rule, 32) == pytest.approx(expected)


def test_exponential_staircase_in_epochs():
    s = Schedule(peak=1e-3, kind="exponential", decay_epochs=0.5, decay_rate=0.5, staircase=True)
    assert s(0.0) == 1e-3
    assert s(0.49) == 1e-3
    assert s(0.5) == 5e-4
    assert s(2.0) == pytest.approx(1e-3 / 16)


def test_exponential_smooth_and_constant():
    smooth = Schedule(peak=1.0, kind="exponential", decay_epochs=2.0, decay_rate=0.25, staircase=False)
    assert smooth(1.0) == pytest.approx(0.5)
    assert Schedule(peak=0.1)(7.3) == 0.1


def test_warmup_is_linear_in_epochs():
    s = Schedule(peak=0.4, warmup_epochs=2.0)
    assert s(0.0) == 0.0 and s(1.0) == pytest.approx(0.2) and s(2.0) == 0.4 and s(5.0) == 0.4


def test_tutorial_decay_in_epochs_is_the_same_for_any_worker_count():
    # The tutorial: 1e-3 halved every 1000 steps at batch 32 on 60,000 images.
    tutorial_epochs = 1000 * 32 / 60000
    s = Schedule(peak=1e-3, kind="exponential", decay_epochs=tutorial_epochs, decay_rate=0.5)
    assert s(3.0) <= 1e-3 / 32  # five halvings by epoch 3
    # The same schedule with 4 workers (global batch 128) means the same thing per epoch.
    params = {"learning_rate": 1e-3, "schedule": "exponential", "decay_epochs": tutorial_epochs,
              "decay_rate": 0.5, "staircase": True}
    one = schedule_for(params, BatchPlan(1, 32, 60000), "none", 32, 0.0)
    four = schedule_for(params, BatchPlan(4, 32, 60000), "none", 32, 0.0)
    assert all(one(e) == four(e) for e in (0.0, 0.6, 1.1, 2.5, 9.9))
