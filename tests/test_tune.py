"""Search-space conversion and resource arithmetic (no cluster)."""

import json

import pytest
from ray import tune

from tuner import tune as tuning
from tuner.search import param_space
from tuner.spec import SpecError, load_spec
from tuner.tune import ResourceError, TrialResources, concurrent_trials


def test_param_space_samplers_and_conditional_values():
    space = param_space(load_spec("quick"))
    assert isinstance(space["learning_rate"], tune.search.sample.Float)
    assert isinstance(space["width"], tune.search.sample.Categorical)
    # schedule fixed to constant: the decay settings are None outright
    fixed = param_space(load_spec("quick", ["search.space.schedule=constant"]))
    assert fixed["decay_epochs"] is fixed["decay_rate"] is fixed["staircase"] is None


def test_a_grid_gives_conditional_hyperparameters_only_where_they_count():
    from ray.tune.search.variant_generator import generate_variants

    spec = load_spec("quick", ["search.algorithm=grid", "search.space.learning_rate=0.01", "search.space.dropout=0.1",
                               "search.space.width=64", "search.space.depth=1", "search.space.batch_size=32",
                               "search.space.optimizer={choice: [adam, sgd]}", "search.space.momentum={choice: [0.8]}"])
    # As Tune's variant generator resolves it: the whole trial spec, config inside.
    configs = [v["config"] for _, v in generate_variants({"config": param_space(spec)})]
    got = sorted((c["optimizer"], c["schedule"], c["momentum"], c["decay_epochs"]) for c in configs)
    assert got == [("adam", "constant", None, None), ("adam", "exponential", None, 1.0),
                   ("sgd", "constant", 0.8, None), ("sgd", "exponential", 0.8, 1.0)]


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


def gpu_trial(*overrides: str) -> TrialResources:
    return TrialResources.of(load_spec("quick", ["scaling.use_gpu=true", "scaling.gpus_per_worker=1", *overrides]))


@pytest.mark.parametrize(
    "overrides, cluster, expected",
    [
        # 2 CPUs a trial would allow 4; 2 GPUs a trial allow 2.
        (["scaling.workers=2"], {"CPU": 8, "GPU": 4}, 2),
        (["scaling.workers=4"], {"CPU": 8, "GPU": 4}, 1),
        (["scaling.workers=2", "scaling.gpus_per_worker=0.5"], {"CPU": 8, "GPU": 4}, 4),
        # Here the CPUs bind: 1 + 2 x 2 = 5 CPUs a trial.
        (["scaling.workers=2", "scaling.cpus_per_worker=2"], {"CPU": 8, "GPU": 4}, 1),
    ],
)
def test_concurrent_gpu_trials(overrides, cluster, expected):
    assert concurrent_trials(gpu_trial(*overrides), cluster, None) == expected


def test_gpu_trial_on_a_cluster_without_gpus_is_an_error():
    with pytest.raises(ResourceError, match=r"needs 2 CPUs .* and 2 GPUs .* but the Ray cluster has 8 CPUs and 0 GPUs"):
        concurrent_trials(gpu_trial("scaling.workers=2"), {"CPU": 8}, None)


def test_driver_takes_no_gpu_and_workers_take_theirs():
    res = gpu_trial("scaling.workers=2", "scaling.driver_cpus=0.5")
    assert res.driver_bundle == {"CPU": 0.5}
    assert res.worker_bundle == {"CPU": 0.5, "GPU": 1}
    # Without use_gpu, gpus_per_worker (default 1) is ignored.
    assert TrialResources.of(load_spec("quick")).worker_bundle == {"CPU": 0.5}


def test_driver_resource_pins_drivers_and_bounds_concurrency():
    res = gpu_trial("scaling.workers=2", "scaling.driver_resource=trial_driver")
    assert res.driver_bundle == {"CPU": 1, "trial_driver": 1}
    assert "trial_driver" not in res.worker_bundle
    assert concurrent_trials(res, {"CPU": 24, "GPU": 8, "trial_driver": 3}, None) == 3
    with pytest.raises(ResourceError, match=r"`scaling.driver_resource` is 'trial_driver', but no node"):
        concurrent_trials(res, {"CPU": 24, "GPU": 8}, None)


@pytest.mark.parametrize("name", ["GPU", "has space", "{}"])
def test_driver_resource_must_be_a_custom_resource_name(name):
    with pytest.raises(SpecError, match="scaling.driver_resource"):
        load_spec("quick", [f"scaling.driver_resource={name}"])


def test_a_submitted_jobs_runtime_env_wins_over_tuners(monkeypatch):
    # Ray refuses a ray.init runtime env that repeats a field or env var of the job's.
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(
        {"runtime_env": {"working_dir": "gcs://pkg.zip", "env_vars": {"AWS_ENDPOINT_URL": "http://minio:9000"}}}))
    ours = {"env_vars": {"AWS_ENDPOINT_URL": "http://minio:9000", "TF_CPP_MIN_LOG_LEVEL": "2"},
            "working_dir": "/here", "py_modules": ["/m"]}
    assert tuning.beside_job_runtime_env(ours) == {"py_modules": ["/m"], "env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2"}}
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    assert tuning.beside_job_runtime_env(ours) == ours
