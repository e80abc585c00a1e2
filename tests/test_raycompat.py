"""The trial driver builds its TensorflowTrainer without TensorFlow and without extra actors."""

import json
import subprocess
import sys

PROBE = """
import json, sys
from tuner import raycompat, worker
from ray.train.v2._internal.callbacks import DatasetsCallback
trainer = raycompat.trainer(train_loop_per_worker=worker.train_loop_per_worker, tensorflow_config=raycompat.Config())
callbacks = trainer._create_default_callbacks()
print(json.dumps({
    "tensorflow_imported": "tensorflow" in sys.modules,
    "datasets_callback": any(isinstance(c, DatasetsCallback) for c in callbacks),
}))
"""


def test_trainer_needs_no_tensorflow_and_no_dataset_manager():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe == {"tensorflow_imported": False, "datasets_callback": False}


def test_pinned_to_the_ray_it_was_written_for():
    import ray

    from tuner import raycompat

    # Every private attribute below changes without notice between Ray releases:
    # moving the pin means re-reading these accessors against the new Ray.
    assert ray.__version__.startswith(raycompat.RAY_VERSION + "."), ray.__version__


def test_the_private_attributes_it_reaches_exist():
    from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from tuner import raycompat, search
    from tuner.spec import load_spec

    asha = ASHAScheduler(time_attr="epoch", metric="m", mode="max", max_t=9, grace_period=1, reduction_factor=3,
                         brackets=2)
    brackets = raycompat.asha_brackets(asha)
    assert len(brackets) == 2
    rungs = raycompat.bracket_rungs(brackets[0])
    assert [m for m, _ in rungs] == [9, 3, 1] and all(r == {} for _, r in rungs)
    raycompat.set_bracket_rungs(brackets[0], [(9, {}), (3, {"a": 0.5}), (1, {"a": 0.4})])
    assert raycompat.bracket_rungs(brackets[0])[1] == (3, {"a": 0.5})
    raycompat.put_in_bracket(asha, "a", brackets[1])
    assert asha._trial_info["a"] is brackets[1]

    rule = MedianStoppingRule(time_attr="epoch", metric="m", mode="max")
    assert raycompat.median_results(rule) == {} and raycompat.median_keys(rule) == ("epoch", "m")

    generator = BasicVariantGenerator(max_concurrent=2)
    raycompat.count_as_live(generator, {"a"})
    assert generator._live_trials == {"a"}
    limiter, _ = search.searcher_for(load_spec("quick"), 2, "val_accuracy", "max")
    assert isinstance(limiter, ConcurrencyLimiter)
    raycompat.count_as_live(limiter, {"a", "b"})
    raycompat.count_as_live(limiter, {"b"})
    assert limiter.live_trials == {"a", "b"} and limiter.num_unfinished_live_trials == 2


def test_experiment_sync_sends_only_changed_files(tmp_path):
    import os

    import pyarrow.fs as pafs
    from ray.train._internal.storage import _FilesystemSyncer

    from tuner import raycompat

    raycompat.incremental_experiment_sync()
    local, remote = tmp_path / "local", tmp_path / "remote"
    (local / "trial").mkdir(parents=True)
    (local / "experiment_state.json").write_text("{}")
    (local / "trial" / "result.json").write_text("1\n")
    syncer = _FilesystemSyncer(storage_filesystem=pafs.LocalFileSystem())
    fn, kwargs = syncer._sync_up_command(str(local), str(remote))
    assert fn(**kwargs) == 2
    assert (remote / "trial" / "result.json").read_text() == "1\n"
    assert fn(**syncer._sync_up_command(str(local), str(remote))[1]) == 0  # nothing changed
    with open(local / "trial" / "result.json", "a") as f:
        f.write("2\n")
    (local / "experiment_state.json").write_text("{}")  # rewritten, same bytes
    os.utime(local / "experiment_state.json", ns=(1, 1))
    assert fn(**syncer._sync_up_command(str(local), str(remote))[1]) == 1
    assert (remote / "trial" / "result.json").read_text() == "1\n2\n"
    # Ray's own upload where Tune excludes files.
    assert syncer._sync_up_command(str(local), str(remote), exclude=["*.json"])[0] is not fn
