"""The trial driver builds its TensorflowTrainer without TensorFlow and without extra actors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_experiment_sync_sends_only_changed_files(tmp_path, monkeypatch):
    import os

    import pyarrow.fs as pafs
    from ray.train._internal.storage import _FilesystemSyncer

    from tuner import raycompat

    raycompat.incremental_experiment_sync()
    monkeypatch.setattr(raycompat.experiment_sync, "_CHANGES", {"tracked": False, "pending": False})  # nobody reports changes
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
    # Bytes go up as they are, whatever the name suggests (pyarrow guesses compression from it).
    (local / "trial" / "events.gz").write_bytes(b"raw")
    assert fn(**syncer._sync_up_command(str(local), str(remote))[1]) == 1
    assert (remote / "trial" / "events.gz").read_bytes() == b"raw"
    # What it sent is kept beside the syncer, and it pickles the same after another
    # upload: Tune pickles the syncer into every save of the searcher's state.
    import pickle

    assert "tuner_sent" not in vars(syncer) and raycompat.experiment_sync._SENT[syncer]["files"]
    pickled = pickle.dumps(syncer)
    (local / "trial" / "result.json").write_text("3\n")
    syncer.sync_up(str(local), str(remote))
    syncer.wait()
    assert (remote / "trial" / "result.json").read_text() == "3\n" and pickle.dumps(syncer) == pickled


def test_experiment_sync_waits_for_the_experiment_to_move_on(tmp_path, monkeypatch):
    """Once trials' changes are reported (the keeper does), a save uploads only after one,
    or after the sync period: Tune's state file changes at every save (its step counter)."""
    import pyarrow.fs as pafs
    from ray.train._internal.storage import _FilesystemSyncer

    from tuner import raycompat
    from tuner.resume import Keeper

    raycompat.incremental_experiment_sync()
    monkeypatch.setattr(raycompat.experiment_sync, "_CHANGES", {"tracked": False, "pending": False})
    local, remote = tmp_path / "local", tmp_path / "remote"
    local.mkdir()
    syncer = _FilesystemSyncer(storage_filesystem=pafs.LocalFileSystem(), sync_period=300)

    def save(step: int) -> int:
        (local / "experiment_state.json").write_text(f'{{"_iteration": {step}}}')
        fn, kwargs = syncer._sync_up_command(str(local), str(remote))
        return fn(**kwargs)

    keeper = Keeper(None, None, 1, "slots")
    ended = []
    noted = []
    keeper._slots = type("Slots", (), {"end": type("Method", (), {"remote": staticmethod(ended.append)})(),
                                       "note": type("Method", (), {"remote": staticmethod(noted.append)})(),
                                       "added": type("Method", (), {"remote": staticmethod(noted.append)})()})()
    trial = type("Trial", (), {"trial_id": "t", "status": "RUNNING", "last_result": {}})()
    keeper.on_step_begin(0, [trial])
    assert save(1) == 1
    assert save(2) == 0 and save(3) == 0  # nothing moved on
    keeper.on_step_begin(1, [trial])  # the same statuses
    assert save(4) == 0
    added = type("Trial", (), {"trial_id": "u", "status": "PENDING", "last_result": {}})()
    keeper.on_step_begin(1, [trial, added])  # a trial added
    assert save(4) == 1
    added.status = "RUNNING"
    keeper.on_step_begin(1, [trial, added])  # started: resumed alike, its files change with a result
    assert save(4) == 0
    keeper.on_trial_result(2, [trial], trial, {"epoch": 1})
    assert save(5) == 1 and (remote / "experiment_state.json").read_text() == '{"_iteration": 5}'
    trial.status = "PAUSED"
    keeper.on_step_begin(3, [trial])
    assert save(6) == 1
    keeper.on_trial_complete(4, [trial], trial)
    assert save(7) == 1 and ended == ["t"]
    syncer.sync_period = 0  # the period passed
    assert save(8) == 1


def test_checkpoint_upload_to_s3_puts_its_files_and_no_directory_markers(tmp_path, moto_endpoint):
    import pyarrow.fs as pafs
    import ray.train
    from ray.train.v2._internal.execution.storage import StorageContext

    from tuner import raycompat, storage

    endpoint, s3, _ = moto_endpoint
    s3.create_bucket(Bucket="bkt")
    raycompat.marker_free_checkpoint_upload()
    local = tmp_path / "ckpt"
    (local / "sub").mkdir(parents=True)
    (local / "model.keras").write_bytes(b"m" * 1000)
    (local / "sub" / "state.json").write_text("{}")
    (local / "sub" / "log.gz").write_bytes(b"raw")  # not compressed again on the way
    fs = storage.s3_filesystem(endpoint)
    context = StorageContext("bkt/store", "exp", storage_filesystem=fs)

    def keys():
        return {o["Key"] for o in s3.list_objects_v2(Bucket="bkt")["Contents"]}

    before = keys()
    saved = context.persist_current_checkpoint(ray.train.Checkpoint.from_directory(str(local)), "epoch-0001")
    assert keys() - before == {"store/exp/epoch-0001/model.keras", "store/exp/epoch-0001/sub/state.json",
                               "store/exp/epoch-0001/sub/log.gz"}
    assert s3.get_object(Bucket="bkt", Key="store/exp/epoch-0001/model.keras")["Body"].read() == b"m" * 1000
    assert s3.get_object(Bucket="bkt", Key="store/exp/epoch-0001/sub/log.gz")["Body"].read() == b"raw"
    assert saved.path == "bkt/store/exp/epoch-0001" and isinstance(saved.filesystem, pafs.S3FileSystem)
    # The folder is found by listing, as restores look for it.
    found = fs.get_file_info(pafs.FileSelector("bkt/store/exp"))
    assert ("bkt/store/exp/epoch-0001", pafs.FileType.Directory) in [(i.path, i.type) for i in found]

    # The Train controller, where the trainer's config unpickles, deletes checkpoints
    # num_to_keep drops by listing and deleting their files: no probes, no markers.
    import pickle

    from ray.train.v2._internal.execution.checkpoint import checkpoint_manager

    pickle.loads(pickle.dumps(raycompat.Config()))
    context.persist_current_checkpoint(ray.train.Checkpoint.from_directory(str(local)), "epoch-0002")
    before = keys()
    sent = []
    client = storage.boto3_client(fs)
    client.meta.events.register("before-send.s3", lambda request, **_: sent.append(request.method))
    checkpoint_manager.delete_fs_path(fs=fs, fs_path=saved.path)
    assert before - keys() == {"store/exp/epoch-0001/model.keras", "store/exp/epoch-0001/sub/state.json",
                               "store/exp/epoch-0001/sub/log.gz"} and keys() <= before
    assert sent == ["GET", "DELETE", "DELETE", "DELETE"]
    assert [i.path for i in fs.get_file_info(pafs.FileSelector("bkt/store/exp")) if "epoch-" in i.path] == \
        ["bkt/store/exp/epoch-0002"]


def test_storage_check_on_s3_puts_one_marker_file_per_experiment_and_none_per_trial(tmp_path, moto_endpoint):
    """Tune's check puts its marker and no directory markers; a trial's Train run, in
    the experiment's folder, puts nothing."""
    from ray.train._internal.storage import StorageContext as TuneStorage
    from ray.train.v2._internal.execution.storage import StorageContext as TrainStorage

    from tuner import raycompat, storage

    raycompat.marker_free_storage_check()
    endpoint, s3, server = moto_endpoint
    s3.create_bucket(Bucket="bkt-check")
    fs = storage.s3_filesystem(endpoint)
    TrainStorage("bkt-check/store/exp/runs", "trial1", storage_filesystem=fs)
    TuneStorage("bkt-check/store", "exp", storage_filesystem=fs)
    assert {o["Key"] for o in s3.list_objects_v2(Bucket="bkt-check")["Contents"]} == {
        "store/exp/.validate_storage_marker"}
    # Elsewhere, Ray's own check: the folder made, the marker written and found.
    TrainStorage(str(tmp_path / "local"), "trial1")
    assert (tmp_path / "local" / "trial1" / ".validate_storage_marker").is_file()
    server.stop()
    with pytest.raises(OSError):  # a PUT that fails raises, as Ray's read-back would
        TuneStorage("bkt-check/store", "exp2", storage_filesystem=storage.s3_filesystem(endpoint, quick_fail=True))


def test_the_experiment_state_period_starts_at_2_s_and_grows_with_the_state(monkeypatch):
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    from tuner import raycompat

    raycompat.adaptive_experiment_state_period(2.0)
    monkeypatch.setitem(raycompat.experiment_sync._LAST_UPLOAD, "bytes", 0)
    auto = _ExperimentCheckpointManager(storage=None, checkpoint_period="auto")
    assert auto._checkpoint_period == 2.0
    auto._update_auto_checkpoint_time(5.0)  # however slow the machine
    assert auto._checkpoint_period == 2.0
    monkeypatch.setitem(raycompat.experiment_sync._LAST_UPLOAD, "bytes", 100 * 20_000)  # ~100 trials' state
    auto._update_auto_checkpoint_time(0.01)
    assert auto._checkpoint_period == 2.0
    monkeypatch.setitem(raycompat.experiment_sync._LAST_UPLOAD, "bytes", 1000 * 20_000)  # ~1,000 trials'
    auto._update_auto_checkpoint_time(0.01)
    assert auto._checkpoint_period == pytest.approx(19.07, abs=0.01)
    fixed = _ExperimentCheckpointManager(storage=None, checkpoint_period=5)  # a user's number stands
    fixed._update_auto_checkpoint_time(1.0)
    assert fixed._checkpoint_period == 5.0


def test_an_upload_of_the_experiment_folder_records_what_it_sent(tmp_path):
    import pyarrow.fs as pafs

    from tuner import raycompat

    (tmp_path / "src" / "trial").mkdir(parents=True)
    (tmp_path / "src" / "experiment_state.json").write_bytes(b"x" * 1000)
    (tmp_path / "src" / "trial" / "result.json").write_bytes(b"y" * 10)
    sent = {"files": {}, "dirs": set(), "at": 0}
    dest = str(tmp_path / "dest")
    assert raycompat.upload_changed(str(tmp_path / "src"), pafs.LocalFileSystem(), dest, sent) == 2
    assert raycompat.experiment_sync._LAST_UPLOAD["bytes"] == 1010
    (tmp_path / "src" / "experiment_state.json").write_bytes(b"z" * 500)
    assert raycompat.upload_changed(str(tmp_path / "src"), pafs.LocalFileSystem(), dest, sent) == 1
    assert raycompat.experiment_sync._LAST_UPLOAD["bytes"] == 500


def test_an_upload_sends_the_state_of_one_save_while_the_next_is_written(tmp_path):
    """Tune writes its next save while the last one uploads (in its sync thread): the
    upload sends the state files as they were read at the save, trials' files as they are
    when it reaches them; the next upload sends what changed since."""
    import pyarrow.fs as pafs

    from tuner import raycompat

    src, dest = tmp_path / "src", tmp_path / "dest"
    (src / "trial").mkdir(parents=True)
    (src / "callback-states-s.pkl").write_bytes(b"rungs 1")
    (src / "experiment_state-x.json").write_bytes(b"trials 1")
    (src / "trial" / "result.json").write_bytes(b"epoch 1")
    state = raycompat.read_state(str(src))
    (src / "callback-states-s.pkl").write_bytes(b"rungs 2")  # the next save, written meanwhile
    (src / "experiment_state-x.json").write_bytes(b"trials 2")
    (src / "trial" / "result.json").write_bytes(b"epoch 1 epoch 2")
    sent = {"files": {}, "dirs": set(), "at": 0}
    assert raycompat.upload_changed(str(src), pafs.LocalFileSystem(), str(dest), sent, state) == 3
    assert (dest / "callback-states-s.pkl").read_bytes() == b"rungs 1"
    assert (dest / "experiment_state-x.json").read_bytes() == b"trials 1"
    assert (dest / "trial" / "result.json").read_bytes() == b"epoch 1 epoch 2"
    assert raycompat.upload_changed(str(src), pafs.LocalFileSystem(), str(dest), sent) == 2
    assert (dest / "experiment_state-x.json").read_bytes() == b"trials 2"


@pytest.mark.slow
def test_a_restore_reads_no_trial_results_until_fit(tmp_path, monkeypatch):
    """Tune's restore would read every trial's results (an ExperimentAnalysis) for a
    get_results() before fit; `tuner`'s restore skips that, and fit still finds them."""
    import ray
    from ray import tune
    from ray.tune.analysis.experiment_analysis import ExperimentAnalysis

    from tuner import raycompat

    def trainable(config):
        tune.report({"score": config["x"]})

    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        run_config = tune.RunConfig(name="exp", storage_path=str(tmp_path), verbose=0)
        tune.Tuner(trainable, param_space={"x": tune.grid_search([1, 2])}, run_config=run_config).fit()
        reads = []
        fetch = ExperimentAnalysis._fetch_trial_dataframes
        monkeypatch.setattr(ExperimentAnalysis, "_fetch_trial_dataframes",
                            lambda self: reads.append(1) or fetch(self))
        restored = raycompat.restore_tuner(str(tmp_path / "exp"), trainable, resume_unfinished=True)
        assert reads == []
        from ray.tune.impl import tuner_internal

        assert tuner_internal.ExperimentAnalysis is ExperimentAnalysis  # put back
        grid = restored.fit()
        assert reads == [1] and sorted(r.metrics["score"] for r in grid) == [1, 2]
    finally:
        ray.shutdown()


def test_an_upload_sends_the_trials_files_before_the_experiment_state(tmp_path):
    """An upload cut short (the driver killed mid-way) leaves no stored experiment state
    that counts on trial results not yet stored."""
    from tuner import storage

    (tmp_path / "trial_a").mkdir()
    for name in ("experiment_state-x.json", "trial_a/result.json", "tuner.pkl"):
        (tmp_path / name).write_text("{}")
    order = [rel for _, rel in storage.files_under(str(tmp_path))]
    assert order == ["trial_a/result.json", "experiment_state-x.json", "tuner.pkl"]


def test_the_end_of_run_analysis_reads_results_where_the_driver_wrote_them(tmp_path):
    """What ``local_results`` has (no storage requests); from storage, as Ray does, where
    it has nothing."""
    import json
    from types import SimpleNamespace

    import pyarrow.fs as pafs
    from ray.tune.analysis.experiment_analysis import ExperimentAnalysis

    from tuner import raycompat

    local = {"here": [{"epoch": 1}, {"epoch": 2}], "silent": []}
    raycompat.local_trial_results(lambda trial: local.get(trial.trial_id))
    (tmp_path / "stored").mkdir()
    (tmp_path / "stored" / "result.json").write_text(json.dumps({"epoch": 1}) + "\n")

    def epochs(trial_id):
        trial = SimpleNamespace(trial_id=trial_id, last_result={"trial_id": trial_id},
                                storage=SimpleNamespace(trial_fs_path=str(tmp_path / "stored"),
                                                        storage_filesystem=pafs.LocalFileSystem()))
        frame = ExperimentAnalysis._fetch_trial_dataframe(None, trial)
        return list(frame["epoch"]) if "epoch" in frame else []

    assert epochs("here") == [1, 2]
    assert epochs("silent") == []
    assert epochs("elsewhere") == [1]


def test_a_new_train_run_looks_for_its_checkpoint_list_with_one_request(moto_endpoint):
    """One request when the list is not there (a new trial); a list that is there is
    loaded as Ray loads it."""
    import importlib.util

    from ray.train import CheckpointConfig
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import CheckpointManager
    from ray.train.v2._internal.execution.storage import StorageContext as TrainStorage

    from tuner import raycompat, storage

    spec = importlib.util.spec_from_file_location("s3count", Path(__file__).parents[1] / "bench" / "s3count.py")
    s3count = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(s3count)
    raycompat.marker_free_storage_check()
    raycompat.one_request_snapshot_probe()
    endpoint, s3, _ = moto_endpoint
    s3.create_bucket(Bucket="bkt-probe")
    proxy = s3count.CountingProxy(endpoint).start()
    try:
        context = TrainStorage("bkt-probe/exp/runs", "trial1", storage_filesystem=storage.s3_filesystem(proxy.url))
        proxy.take()
        manager = CheckpointManager(CheckpointConfig(), context)
        assert [m for m, _ in proxy.take_log()[1]] == ["HEAD"]
        manager._current_report_index = 3
        manager._write_state_to_storage()
        proxy.take()
        assert CheckpointManager(CheckpointConfig(), context)._current_report_index == 3
        assert [m for m, _ in proxy.take_log()[1]] == ["HEAD", "GET"]
    finally:
        proxy.stop()


COUNTED = """
import json, sys
from ray.air._internal import usage
from ray.tune import Callback
from ray.tune.logger import JsonLoggerCallback, LoggerCallback
from tuner import raycompat

class Mine(Callback): pass
class MyLogger(LoggerCallback): pass
callbacks = [JsonLoggerCallback(), JsonLoggerCallback(), Mine(), MyLogger(), object()]
raycompat.install("driver")
counted = usage._count_callbacks(callbacks)
print(json.dumps({"mlflow_imported": "mlflow" in sys.modules, "counted": counted}))
"""


def test_rays_usage_count_of_callbacks_is_the_same_without_importing_mlflow():
    import os

    def probe(patches: str) -> dict:
        out = subprocess.run([sys.executable, "-c", COUNTED], capture_output=True, text=True, check=True,
                             env={**os.environ, "TUNER_RAY_PATCHES": patches})
        return json.loads(out.stdout.strip().splitlines()[-1])

    patched, as_ray_ships = probe("on"), probe("off")
    assert not patched["mlflow_imported"] and as_ray_ships["mlflow_imported"]
    assert patched["counted"] == as_ray_ships["counted"] == {"JsonLoggerCallback": 2, "CustomCallback": 1,
                                                             "CustomLoggerCallback": 1}


# --- patches are optional: each checks its targets, and all can be switched off ----------


def test_every_patch_fits_the_ray_it_was_written_for():
    from tuner import raycompat

    assert {name: raycompat.checked(name) for name in raycompat.PATCHES} == dict.fromkeys(raycompat.PATCHES)
    assert len(raycompat.PATCHES) == 12 and raycompat.report() == []


def test_a_patch_whose_target_changed_stays_off_and_says_what_is_lost(monkeypatch):
    import ray

    from tuner import raycompat

    monkeypatch.setattr(raycompat.patches, "PATCHES", dict(raycompat.PATCHES))
    monkeypatch.setattr(raycompat.patches, "_USABLE", dict(raycompat.patches._USABLE))
    applied = []

    @raycompat.patch("nothing at all", "ray.tune:NoSuchThing")
    def gone():
        applied.append("gone")

    @raycompat.patch("a second thing",
                     "ray.train.v2._internal.execution.checkpoint.checkpoint_manager:delete_fs_path(path)")
    def reshaped():
        applied.append("reshaped")

    assert gone() is False and reshaped() is False and applied == []
    assert raycompat.report() == [
        "Ray patch gone is off (ray.tune:NoSuchThing is gone): nothing at all.",
        "Ray patch reshaped is off (ray.train.v2._internal.execution.checkpoint.checkpoint_manager:delete_fs_path "
        "takes (fs, fs_path), not (path)): a second thing."]
    monkeypatch.setattr(ray, "__version__", "2.61.0")
    assert raycompat.problem(raycompat.PATCHES["lazy_tensorflow"]) == "Ray 2.61.0 is not one it was tested on (2.60)"


SWITCHED_OFF = """
import json, sys
from tuner import raycompat, tensorboard
from ray.train._internal.storage import _FilesystemSyncer
from ray.train.v2._internal.execution.checkpoint import checkpoint_manager
for role in ("driver", "trial", "controller", "worker"):
    raycompat.install(role, local_results=tensorboard.local_results)
trainer = raycompat.trainer(train_loop_per_worker=print, tensorflow_config=raycompat.Config())
print(json.dumps({
    "tensorflow_imported": "tensorflow" in sys.modules,
    "patched": [name for name in ("tuner_incremental", "tuner_marker_free") if hasattr(_FilesystemSyncer, name)
                or hasattr(checkpoint_manager, name)],
    "trainer": type(trainer).__name__,
    "report": raycompat.report(),
}))
"""


def test_tuner_ray_patches_off_leaves_ray_as_it_ships():
    import os

    out = subprocess.run([sys.executable, "-c", SWITCHED_OFF], capture_output=True, text=True, check=True,
                         env={**os.environ, "TUNER_RAY_PATCHES": "off"})
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe == {
        "tensorflow_imported": True,  # Ray Train's tensorflow package, imported the usual way
        "patched": [],
        "trainer": "TensorflowTrainer",
        "report": ["Ray patches are off (TUNER_RAY_PATCHES=off): S3 requests per trial are higher and trial "
                   "start-up is slower; results are the same."],
    }


def test_the_job_carries_the_switch_to_every_process(monkeypatch):
    from tuner import tune
    from tuner.spec import load_spec

    monkeypatch.setenv("TUNER_RAY_PATCHES", "off")
    assert tune.runtime_env_for(load_spec("quick"))["env_vars"]["TUNER_RAY_PATCHES"] == "off"
    monkeypatch.delenv("TUNER_RAY_PATCHES")
    assert "TUNER_RAY_PATCHES" not in tune.runtime_env_for(load_spec("quick"))["env_vars"]


def test_the_job_polls_its_workers_every_half_second_unless_told_otherwise(monkeypatch):
    from tuner import tune
    from tuner.spec import load_spec

    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    assert tune.runtime_env_for(load_spec("quick"))["env_vars"]["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.5"
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2")
    assert tune.runtime_env_for(load_spec("quick"))["env_vars"]["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "2"


def test_a_run_stops_its_ray_without_waiting_on_the_autoscalers_monitor():
    import signal

    import ray

    from tuner import raycompat

    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        monitor = ray._private.worker._global_node.all_processes["monitor"][0].process
        raylet = ray._private.worker._global_node.all_processes["raylet"][0].process
        raycompat.shutdown()
    finally:
        ray.shutdown()
    assert not ray.is_initialized()
    assert monitor.poll() == -signal.SIGKILL and raylet.poll() is not None
