"""Ray Train's storage requests on S3, made fewer: checkpoints uploaded and deleted
without folder markers or probes, one storage marker per experiment, and the
checkpoint list looked for in one request. Any other filesystem takes Ray's path."""

from __future__ import annotations

import logging
import posixpath

from tuner.raycompat.patches import _replace, patch
from tuner.storage import upload_files


@patch("each checkpoint costs about 8 more S3 requests (folder markers)",
       "ray.train.v2._internal.execution.storage:StorageContext.persist_current_checkpoint"
       "(self, checkpoint, checkpoint_dir_name)",
       "ray.train.v2._internal.execution.storage:StorageContext.build_checkpoint_path_from_name")
def marker_free_checkpoint_upload() -> None:
    """Make a Train worker upload a checkpoint to S3 as one PUT per file.

    Ray Train 2.60 checks its storage marker (a HEAD), then ``create_dir``s the
    checkpoint folder and ``pyarrow.fs.copy_files`` it: on S3, pyarrow looks for and puts
    a directory marker at each level of the path, about 8 requests per checkpoint besides
    its files (``bench/run.py data``: 19.3 -> 11.3 requests per extra trial-epoch). S3
    has no directories (a listing finds the folder by its files' keys, as Ray's and
    ``tuner``'s restores do), so on an ``S3FileSystem`` the files are streamed to their
    keys and nothing else; any other filesystem takes Ray's path.
    """
    import pyarrow.fs as pafs
    from ray.train.v2._internal.execution.storage import StorageContext

    if getattr(StorageContext, "tuner_marker_free", False):
        return
    persist = StorageContext.persist_current_checkpoint

    def persist_current_checkpoint(self, checkpoint, checkpoint_dir_name: str):
        if (self.read_only or not isinstance(self.storage_filesystem, pafs.S3FileSystem)
                or not isinstance(checkpoint.filesystem, pafs.LocalFileSystem)):
            return persist(self, checkpoint, checkpoint_dir_name)
        from ray.train import Checkpoint

        path = self.build_checkpoint_path_from_name(checkpoint_dir_name)
        upload_files(checkpoint.path, self.storage_filesystem, path)
        return Checkpoint(filesystem=self.storage_filesystem, path=path)

    _replace(StorageContext, persist_current_checkpoint=persist_current_checkpoint, tuner_marker_free=True)


@patch("each trial costs about 6 more S3 requests (Train's storage marker and folder markers)",
       "ray.train._internal.storage:_VALIDATE_STORAGE_MARKER_FILENAME",
       "ray.train._internal.storage:StorageContext._create_validation_file(self)",
       "ray.train._internal.storage:StorageContext._check_validation_file(self)",
       "ray.train.v2._internal.constants:VALIDATE_STORAGE_MARKER_FILENAME",
       "ray.train.v2._internal.execution.storage:StorageContext._create_validation_file(self)",
       "ray.train.v2._internal.execution.storage:StorageContext._check_validation_file(self)")
def marker_free_storage_check() -> None:
    """Make Ray Tune's storage check put one marker file on S3, and only that, and Ray
    Train's put none there.

    Each ``StorageContext`` (Tune's per experiment run, Train's per trial) checks its
    storage when it is made: it ``create_dir``s its folder, which on S3 puts a directory
    marker at each level of the path (4 for a trial's Train run), puts a marker file and
    reads it back (a HEAD): 6 requests per trial (``bench/run.py s3``). On S3 every node
    reads the same bucket, so the read-back in the writing process finds what the PUT
    stored, and S3 has no directories to make. On an ``S3FileSystem``, Tune's check puts
    the marker file (a PUT that fails raises, as Ray's check would) and nothing else.
    Train's run folder is inside the experiment's, on the bucket that check (and
    ``tuner``'s pre-flight) has just written to: there it puts nothing, and a node that
    cannot write fails its trial at the first checkpoint, with the server's error. Any
    other filesystem (a local path, where the check finds a head-node-only folder) takes
    Ray's path.
    """
    import pyarrow.fs as pafs
    from ray.train._internal.storage import _VALIDATE_STORAGE_MARKER_FILENAME
    from ray.train._internal.storage import StorageContext as TuneStorage
    from ray.train.v2._internal.constants import VALIDATE_STORAGE_MARKER_FILENAME
    from ray.train.v2._internal.execution.storage import StorageContext as TrainStorage

    for cls, marker in ((TuneStorage, _VALIDATE_STORAGE_MARKER_FILENAME),
                        (TrainStorage, VALIDATE_STORAGE_MARKER_FILENAME)):
        if getattr(cls, "tuner_marker_free_check", False):
            continue
        create, check = cls._create_validation_file, cls._check_validation_file

        def _create_validation_file(self, create=create, marker=marker, put=cls is TuneStorage):
            if not isinstance(self.storage_filesystem, pafs.S3FileSystem):
                return create(self)
            if put:
                with self.storage_filesystem.open_output_stream(posixpath.join(self.experiment_fs_path, marker)):
                    pass  # closed here: a failed PUT raises
            self.tuner_marker_put = True

        def _check_validation_file(self, check=check):
            # Set where the check was made the way above; the flag travels with pickled
            # copies, whose filesystem Tune may swap.
            put = getattr(self, "tuner_marker_put", False)
            if not (put and isinstance(self.storage_filesystem, pafs.S3FileSystem)):
                return check(self)

        _replace(cls, _create_validation_file=_create_validation_file, _check_validation_file=_check_validation_file,
                 tuner_marker_free_check=True)


@patch("each checkpoint that num_to_keep drops costs about 5 more S3 requests",
       "ray.train.v2._internal.execution.checkpoint.checkpoint_manager:delete_fs_path(fs, fs_path)")
def marker_free_checkpoint_delete() -> None:
    """Make Ray Train's controller delete an old checkpoint from S3 with one listing and
    a DELETE per file.

    Ray Train 2.60 deletes a checkpoint that ``num_to_keep`` drops through pyarrow: it
    probes whether the path is a folder (a HEAD and a listing), and pyarrow's
    ``delete_dir`` probes again, lists, deletes, deletes the folder's marker and puts
    one for its parent: 7 requests for a checkpoint of 2 files, one per epoch once
    ``num_to_keep`` checkpoints exist. On an ``S3FileSystem`` the files are listed and
    deleted with boto3 instead (one request per file: a batch delete needs a checksum
    header not every S3 server accepts); errors are logged, as Ray does.
    """
    from ray.train.v2._internal.execution.checkpoint import checkpoint_manager

    if getattr(checkpoint_manager, "tuner_marker_free", False):
        return
    delete = checkpoint_manager.delete_fs_path

    def delete_fs_path(fs, fs_path: str):
        import pyarrow.fs as pafs

        if not isinstance(fs, pafs.S3FileSystem):
            return delete(fs=fs, fs_path=fs_path)
        from tuner.storage import delete_s3_folder

        try:
            delete_s3_folder(fs, fs_path)
        except Exception:  # noqa: BLE001 - as Ray's: a checkpoint left behind is not an error
            logging.getLogger(__name__).exception("Could not delete the checkpoint at %s", fs_path)

    _replace(checkpoint_manager, delete_fs_path=delete_fs_path, tuner_marker_free=True)


@patch("each trial start costs 1 more S3 request",
       "ray.train.v2._internal.execution.checkpoint.checkpoint_manager:CheckpointManager"
       "._maybe_load_state_from_storage(self)",
       "ray.train.v2._internal.execution.checkpoint.checkpoint_manager:CheckpointManager._load_state")
def one_request_snapshot_probe() -> None:
    """Make Ray Train's controller look for its checkpoint list on S3 with one request.

    A Train run's checkpoint manager starts by looking for the list it keeps
    (``checkpoint_manager_snapshot.json``, which a run with the same name left): Ray
    2.60 probes for it (on S3 a HEAD, then a listing when it is not there, as it could
    be a folder) and then reads it (a HEAD and a GET). Every new trial pays the 2
    requests of a miss. On an ``S3FileSystem`` it is read straight away here: one
    request when it is not there (the read's HEAD), two when it is. Any other
    filesystem takes Ray's path.
    """
    import pyarrow.fs as pafs
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import CheckpointManager

    if getattr(CheckpointManager, "tuner_one_request_probe", False):
        return
    load = CheckpointManager._maybe_load_state_from_storage

    def _maybe_load_state_from_storage(self):
        storage = self._storage_context
        if not isinstance(storage.storage_filesystem, pafs.S3FileSystem):
            return load(self)
        try:
            with storage.storage_filesystem.open_input_stream(storage.checkpoint_manager_snapshot_path) as f:
                state = f.read().decode("utf-8")
        except FileNotFoundError:
            return
        self._load_state(state)

    _replace(CheckpointManager, _maybe_load_state_from_storage=_maybe_load_state_from_storage, tuner_one_request_probe=True)
