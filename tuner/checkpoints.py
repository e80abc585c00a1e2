"""A trial's checkpoints in storage: their layout, listing, restore, stored records, and
the copy a PBT member continues from. TensorFlow-free to import (``restore_latest``
imports tf_keras when it runs).

``<run>/epoch-NNNN/``: ``model.keras`` (rank 0's save: weights and optimizer state) and
``state.json`` (the epoch, its metrics and every worker's weight digest; a copied one also
``copied_from``). A run is a trial's Ray Train run (``runs/<trial id>``, a PBT member's
later generations ``runs/<trial id>-gN``).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuner.storage import Location

RUNS_DIR = "runs"  # <storage>/<name>/runs/<run>/: each trial's (PBT: generation's) Ray Train run
MODEL_FILE = "model.keras"
STATE_FILE = "state.json"
# A restore tries at most this many of the newest checkpoints (the list goes from rank 0 to
# the other workers through Ray Train's broadcast, which takes under 1 KB).
RESTORE_CANDIDATES = 32


def checkpoint_dir_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}"


def stored_epochs(run: Location) -> list[int]:
    """Epochs with a checkpoint folder under the trial's run, newest first."""
    import pyarrow.fs as pafs

    fs, root = run.filesystem()
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    epochs = []
    for info in infos:
        name = posixpath.basename(info.path)
        if info.type == pafs.FileType.Directory and name.startswith("epoch-") and name[6:].isdigit():
            epochs.append(int(name[6:]))
    return sorted(epochs, reverse=True)


def restore_latest(run: Location, epochs: list[int] | None = None):
    """(model, epoch) from the newest checkpoint in storage that loads whole, or None.
    ``epochs``: the run's checkpoints, newest first, as ``stored_epochs`` lists them
    (listed here when not given).

    Read from storage rather than from ``ray.train.get_checkpoint()``: the controller
    registers a reported checkpoint only when it next polls the workers, so after a worker
    dies it may not know the newest checkpoints that are already safely stored. A folder
    torn by the crash fails to load and the one before it is used. Every rank of a worker
    group gets the same ``epochs`` (rank 0's listing), so every rank picks the same epoch.
    """
    import tf_keras

    for epoch in stored_epochs(run) if epochs is None else epochs:
        folder = run.join(checkpoint_dir_name(epoch))
        try:
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp, MODEL_FILE)
                local.write_bytes(folder.join(MODEL_FILE).read_bytes())
                state = folder.join(STATE_FILE).read_json()
                net = tf_keras.models.load_model(local)
            if state["epoch"] == epoch:
                return net, epoch
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped alike
            print(f"tuner: skipping checkpoint {folder}: {type(e).__name__}: {e}", flush=True)
    return None


def replayed_epochs(recorded: list[int], reported: int, start_epoch: int) -> list[int]:
    """The epochs with a readable stored record (``recorded``) after the driver's newest
    (``reported``), up to the one training starts from, oldest first. Checkpoints that
    ``checkpoint.num_to_keep`` dropped are not among them."""
    return sorted(e for e in recorded if reported < e <= start_epoch)


def stored_metrics(run: Location, epoch: int) -> dict | None:
    """The metrics a trial's run stored with its checkpoint of ``epoch``; None for a
    checkpoint copied in from another trial (a PBT exploit: not this run's epoch)."""
    state = run.join(checkpoint_dir_name(epoch), STATE_FILE).read_json()
    return None if "copied_from" in state else state["metrics"]


def copy_checkpoint(source: str, run: Location, epoch: int, copied_from: dict) -> None:
    """Put the checkpoint at ``source`` (a folder of the storage's filesystem, as Ray
    Train reports it) into the run ``run`` as its epoch ``epoch``: the model by the
    filesystem's own copy (on S3 a server-side CopyObject: the bytes never pass through
    this process), and a ``state.json`` that says where it came from (``copied_from``), so
    it is restored from but never reported as the run's own epoch. ``run`` is a new run:
    whatever an earlier copy that was cut short left there goes first."""
    import pyarrow.fs as pafs

    from tuner import storage

    fs, root = run.filesystem()
    with fs.open_input_file(posixpath.join(source, STATE_FILE)) as f:
        state = json.loads(f.read())
    if state.get("epoch") != epoch:
        raise ValueError(f"the checkpoint at {source} holds epoch {state.get('epoch')}, not {epoch}")
    storage.clear_folder(fs, root)
    target = posixpath.join(root, checkpoint_dir_name(epoch))
    if not isinstance(fs, pafs.S3FileSystem):
        fs.create_dir(target, recursive=True)
    fs.copy_file(posixpath.join(source, MODEL_FILE), posixpath.join(target, MODEL_FILE))
    state["copied_from"] = {**copied_from, "path": source}
    with fs.open_output_stream(posixpath.join(target, STATE_FILE), compression=None) as f:
        f.write(json.dumps(state, indent=2).encode())


def stored_records(run: Location, epochs: list[int]) -> dict[int, dict]:
    """{epoch: the metrics stored with its checkpoint, and the checkpoint's path} for the
    ``epochs`` whose record reads whole and names its epoch; others are skipped."""
    records = {}
    for epoch in epochs:
        folder = run.join(checkpoint_dir_name(epoch))
        try:
            metrics = stored_metrics(run, epoch)
            if metrics is not None and metrics.get("epoch") == epoch:
                records[epoch] = {**metrics, "checkpoint_path": folder.filesystem()[1]}
        except Exception as e:  # noqa: BLE001 - an unreadable record is not reported again
            print(f"tuner: skipping the record of {folder}: {type(e).__name__}: {e}", flush=True)
    return records


def weights_digest(net) -> str:
    """sha256 over every weight of ``net``: equal on all workers when replicas agree."""
    h = hashlib.sha256()
    for w in net.get_weights():
        h.update(w.tobytes())
    return h.hexdigest()
