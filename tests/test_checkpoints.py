"""A checkpoint torn by a crash is never the one a trial resumes from."""

import json

import pytest

from tuner import checkpoints
from tuner.storage import Location


def _save(folder, epoch, net):
    folder.mkdir(parents=True)
    net.save(folder / checkpoints.MODEL_FILE)
    (folder / checkpoints.STATE_FILE).write_text(json.dumps({"epoch": epoch, "metrics": {"epoch": epoch}}))


@pytest.mark.parametrize("tear", ["truncated model", "no state", "no model"])
def test_restore_skips_a_torn_checkpoint(tmp_path, tear):
    tf_keras = pytest.importorskip("tf_keras")
    from tuner import models, training

    net = models.mnist_mlp({"width": 8, "depth": 1, "dropout": 0.0}, models.InputSpec((28, 28), num_classes=10))
    training.compile_model(net, tf_keras.optimizers.SGD(0.1))
    run = tmp_path / "run"
    _save(run / checkpoints.checkpoint_dir_name(1), 1, net)
    torn = run / checkpoints.checkpoint_dir_name(2)
    _save(torn, 2, net)
    if tear == "truncated model":
        data = (torn / checkpoints.MODEL_FILE).read_bytes()
        (torn / checkpoints.MODEL_FILE).write_bytes(data[: len(data) // 2])
    else:
        (torn / (checkpoints.STATE_FILE if tear == "no state" else checkpoints.MODEL_FILE)).unlink()

    restored = checkpoints.restore_latest(Location(str(run)))
    assert restored is not None and restored[1] == 1
    assert checkpoints.stored_epochs(Location(str(run))) == [2, 1]


def test_restore_tries_the_epochs_it_is_given(tmp_path):
    """Workers restore from rank 0's listing (one listing per trial start): the epochs
    given are the ones tried, newest first, without listing again."""
    tf_keras = pytest.importorskip("tf_keras")
    from tuner import models, training

    net = models.mnist_mlp({"width": 8, "depth": 1, "dropout": 0.0}, models.InputSpec((28, 28), num_classes=10))
    training.compile_model(net, tf_keras.optimizers.SGD(0.1))
    run = tmp_path / "run"
    for epoch in (1, 2):
        _save(run / checkpoints.checkpoint_dir_name(epoch), epoch, net)
    assert checkpoints.restore_latest(Location(str(run)), [1])[1] == 1
    assert checkpoints.restore_latest(Location(str(run)), [3, 2, 1])[1] == 2  # 3: listed, gone since
    assert checkpoints.restore_latest(Location(str(run)), []) is None


def test_a_resumed_trial_reports_again_the_stored_epochs_its_driver_never_took_in():
    """The driver took in epoch 2; epochs 3 and 5 are stored (4 dropped by
    checkpoint.num_to_keep) and training resumes from 5: 3 and 5 are reported again,
    oldest first, before epoch 6 trains."""
    assert checkpoints.replayed_epochs([5, 3, 2, 1], reported=2, start_epoch=5) == [3, 5]
    assert checkpoints.replayed_epochs([5, 3], reported=5, start_epoch=5) == []  # it had them all
    # A listed checkpoint that does not load: training starts from an older one, and
    # only epochs up to it are reported again.
    assert checkpoints.replayed_epochs([6, 5, 3], reported=0, start_epoch=5) == [3, 5]
    assert checkpoints.replayed_epochs([], reported=0, start_epoch=0) == []


def test_records_to_report_again_are_read_whole_or_skipped(tmp_path):
    """Rank 0 reads the records of the epochs to report again before the others restore:
    a record that does not read, or names another epoch, is skipped, not a failed trial."""
    run = tmp_path / "run"
    for epoch, text in ((1, json.dumps({"epoch": 1, "metrics": {"epoch": 1, "val_accuracy": 0.9}})),
                        (2, "{torn"), (3, json.dumps({"epoch": 2, "metrics": {"epoch": 2}}))):
        (run / checkpoints.checkpoint_dir_name(epoch)).mkdir(parents=True)
        (run / checkpoints.checkpoint_dir_name(epoch) / checkpoints.STATE_FILE).write_text(text)
    records = checkpoints.stored_records(Location(str(run)), [1, 2, 3, 4])
    assert list(records) == [1] and records[1]["val_accuracy"] == 0.9
    assert records[1]["checkpoint_path"].endswith("epoch-0001")
