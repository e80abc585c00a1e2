"""Search-space conversion and resource arithmetic (no cluster)."""

import pytest
from ray import tune

from tuner.spec import load_spec
from tuner.tune import ResourceError, TrialResources, concurrent_trials, param_space


def test_param_space_random():
    space = param_space(load_spec("quick"))
    assert isinstance(space["learning_rate"], tune.search.sample.Float)
    assert isinstance(space["width"], tune.search.sample.Categorical)
    assert space["momentum"] == 0.9


def test_param_space_grid_uses_grid_search():
    spec = load_spec("quick", ["search.algorithm=grid", "search.space.learning_rate={choice: [0.01, 0.001]}",
                               "search.space.dropout=0.1"])
    space = param_space(spec)
    assert space["learning_rate"] == {"grid_search": [0.01, 0.001]}


def test_int_ranges_sample_ints():
    spec = load_spec("quick", ["search.space.width={loguniform: [32, 512]}"])
    sampler = param_space(spec)["width"]
    assert isinstance(sampler, tune.search.sample.Integer)
    assert all(32 <= v <= 512 for v in sampler.sample(size=50))


@pytest.mark.parametrize(
    "res, cluster, requested, expected",
    [
        (TrialResources(1, 2, 1, 0), {"CPU": 8}, None, 2),
        (TrialResources(1, 2, 0.5, 0), {"CPU": 2}, None, 1),
        (TrialResources(1, 2, 1, 1), {"CPU": 16, "GPU": 4}, None, 2),
        (TrialResources(1, 4, 1, 1), {"CPU": 16, "GPU": 8}, 1, 1),
    ],
)
def test_concurrent_trials(res, cluster, requested, expected):
    assert concurrent_trials(res, cluster, requested) == expected


def test_trial_that_cannot_fit_is_an_error():
    with pytest.raises(ResourceError, match="A trial needs 3 CPUs .* but the Ray cluster has 2 CPUs"):
        concurrent_trials(TrialResources(1, 2, 1, 0), {"CPU": 2}, None)
    with pytest.raises(ResourceError, match="has 16 CPUs and 1 GPUs"):
        concurrent_trials(TrialResources(1, 2, 1, 1), {"CPU": 16, "GPU": 1}, None)
    with pytest.raises(ResourceError, match="only 2 trials"):
        concurrent_trials(TrialResources(1, 2, 1, 0), {"CPU": 6}, 3)
