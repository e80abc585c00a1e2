"""Your own data and model: `tuner stage-data` from CSV / Parquet, and the checks a user's
builder gets before anything runs. Every bad input is one line, exit 2, nothing written.
Real files, the real CLI in-process; no Ray (each bad `tuner tune` stops before it)."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tuner import data, models
from tuner.cli import main

BUILDERS = '''
import tf_keras


def good(hp, inputs):
    return tf_keras.Sequential([tf_keras.Input(shape=inputs.shape), tf_keras.layers.Flatten(),
                                tf_keras.layers.Dense(hp["units"], activation="relu"),
                                tf_keras.layers.Dense(inputs.num_classes or 1)])


def returns_a_string(hp, inputs):
    return "a model"


def three_logits(hp, inputs):
    return tf_keras.Sequential([tf_keras.Input(shape=inputs.shape), tf_keras.layers.Dense(3)])


def reads_a_missing_one(hp, inputs):
    return good({**hp, "units": hp["units"] + hp["layers"]}, inputs)


def raises(hp, inputs):
    raise ValueError("no such layer size")
'''


def table(rows: int = 60, classes=("a", "b")) -> pa.Table:
    rng = np.random.default_rng(0)
    y = np.array([classes[i % len(classes)] for i in range(rows)])
    return pa.table({"f1": rng.random(rows), "f2": rng.integers(0, 100, rows), "label": y})


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "my_models.py").write_text(BUILDERS)
    return tmp_path


def run(capsys, *args) -> tuple[int, list[str]]:
    code = main(list(args))
    return code, capsys.readouterr().err.strip().splitlines()


def test_stage_a_csv_with_string_classes(here, capsys):
    rows = table(120, ("cat", "dog", "eel"))
    rows.to_pandas().to_csv(here / "t.csv", index=False)
    code, err = run(capsys, "stage-data", "--source", "t.csv", "--dest", "ds", "--label", "label", "--seed", "3")
    assert code == 0, err
    manifest = data.read_manifest(str(here / "ds"))
    assert manifest["label"] == {"column": "label", "task": "classification", "classes": ["cat", "dog", "eel"]}
    assert manifest["features"] == {"columns": ["f1", "f2"], "shape": [2], "dtype": "float32"}
    # Stratified: 1/12 of each class's 40 rows (3) for validation and for test.
    assert {k: v["class_counts"] for k, v in manifest["splits"].items()} == {
        "train": [34, 34, 34], "validation": [3, 3, 3], "test": [3, 3, 3]}
    x, y = data.load_split(str(here / "ds"), "train")
    assert x.shape == (102, 2) and x.dtype == np.float32 and set(y.tolist()) == {0, 1, 2}
    spec = data.input_spec(manifest)
    assert spec.shape == (2,) and spec.num_classes == 3 and spec.classes == ("cat", "dog", "eel")
    assert len(spec.mean) == 2 and spec.std[1] == pytest.approx(np.std(x[:, 1]), rel=1e-4)
    # The same again is a no-op; other settings into the same place are refused.
    assert run(capsys, "stage-data", "--source", "t.csv", "--dest", "ds", "--label", "label", "--seed", "3")[0] == 0
    code, err = run(capsys, "stage-data", "--source", "t.csv", "--dest", "ds", "--label", "label", "--seed", "4")
    assert code == 2 and "Another dataset is staged at ds already" in err[0]
    code, err = run(capsys, "stage-data", "--source", "t.csv", "--dest", "ds", "--label", "label", "--seed", "3",
                    "--features", "f1")
    assert code == 2 and "Another dataset is staged at ds already" in err[0]


def test_stage_parquet_tensors_a_split_column_and_a_float_target(here):
    images = np.arange(30 * 16, dtype=np.float32).reshape(30, 4, 4)
    split = ["train"] * 20 + ["validation"] * 5 + ["test"] * 5
    pq.write_table(pa.table({"img": pa.FixedShapeTensorArray.from_numpy_ndarray(images),
                             "y": pa.array(np.linspace(0, 1, 30)), "split": split}), here / "t.parquet")
    prepared = data.table_dataset(data.TableSource(str(here / "t.parquet")), "y")
    assert prepared.meta["label"] == {"column": "y", "task": "regression", "classes": None}
    assert prepared.meta["split_column"] == "split" and prepared.rows("validation") == 5
    x, y = prepared.splits["test"]
    assert x.shape == (5, 4, 4) and np.array_equal(x, images[25:]) and y.dtype == np.float32
    # A folder of Parquet files, each row a plain list, shaped by feature_shape.
    (here / "parts").mkdir()
    for i in range(2):
        pq.write_table(pa.table({"pixels": pa.array([list(range(16))] * 12, pa.list_(pa.uint8())),
                                 "digit": pa.array([0, 1] * 6)}), here / "parts" / f"p{i}.parquet")
    prepared = data.table_dataset(data.TableSource(str(here / "parts")), "digit", feature_shape=(4, 4),
                                  validation_fraction=0.25, test_fraction=0.25)
    assert prepared.splits["train"][0].shape == (12, 4, 4) and prepared.splits["train"][0].dtype == np.uint8
    assert prepared.input_spec().shape == (4, 4)


def test_a_dataset_staged_before_the_layout_change_still_reads(here):
    # MNIST staged by an older tuner: `image`/`label` columns, no `format` in the manifest.
    images = np.arange(3 * 784, dtype=np.uint8).reshape(3, 28, 28)
    column = pa.FixedSizeBinaryArray.from_buffers(pa.binary(784), 3, [None, pa.py_buffer(images.tobytes())])
    (here / "old").mkdir()
    pq.write_table(pa.table({"image": column, "label": pa.array([1, 2, 3], pa.uint8())}), here / "old" / "test.parquet")
    (here / "old" / "manifest.json").write_text(json.dumps(
        {"dataset": "mnist", "splits": {"test": {"file": "test.parquet", "rows": 3}}}))
    x, y = data.load_split(str(here / "old"), "test")
    assert np.array_equal(x, images) and y.tolist() == [1, 2, 3]
    spec = data.input_spec(data.read_manifest(str(here / "old")))
    assert spec.shape == (28, 28) and spec.num_classes == 10 and spec.task == "classification"


def test_mnist_staged_by_an_older_tuner_is_the_same_dataset(here, capsys):
    (here / "ds").mkdir()
    (here / "ds" / "manifest.json").write_text(json.dumps({
        "dataset": "mnist", "source_sha256": data.subset_checksums(), "validation_fraction": 1 / 12,
        "splits": {"train": {"file": "train.parquet", "rows": 2750}}}))
    code, err = run(capsys, "stage-data", "--source", "builtin", "--dest", "ds")
    assert code == 0, err
    code, err = run(capsys, "stage-data", "--source", "builtin", "--dest", "ds", "--validation-fraction", "0.2")
    assert code == 2 and "Another dataset is staged" in err[0]


def _ragged(here):
    pq.write_table(pa.table({"v": pa.array([[1.0, 2.0], [3.0]] * 10), "label": [0, 1] * 10}), here / "t.parquet")
    return "t.parquet"


def _csv(here, **columns):
    pa.table(columns).to_pandas().to_csv(here / "t.csv", index=False)
    return "t.csv"


@pytest.mark.parametrize("make, extra, message", [
    (lambda h: _csv(h, f1=[1.0, 2.0] * 10, label=[0, 1] * 10), ["--label", "target"],
     "The label column `target` is not in the source; its columns: f1, label."),
    (lambda h: _csv(h, f1=["x", "y"] * 10, label=[0, 1] * 10), ["--label", "label"],
     "The feature column `f1` holds strings, but features must be numbers"),
    (_ragged, ["--label", "label"], "The feature column `v` is ragged: its rows hold 1 to 2 values"),
    (lambda h: _csv(h, f1=[1.0, 2.0] * 10, label=["a"] * 20), ["--label", "label"],
     "The label column `label` has one class ('a'); classification needs at least two."),
    (lambda h: _csv(h, f1=[1.0] * 4, label=[0, 1] * 2), ["--label", "label"],
     "The source's 4 rows leave none for validation"),
    (lambda h: _csv(h, f1=[1.0, 2.0] * 10, label=[0, 1] * 10), [], "needs `--label COLUMN`"),
    (lambda h: _csv(h, f1=[1.0, 2.0] * 10, label=[0, 1] * 10), ["--label", "label", "--feature-shape", "2,x"],
     "The value of `--feature-shape` is '2,x'"),
    (lambda h: _csv(h, f1=[1.0, 2.0] * 10, label=[0, 1] * 10, split=["train", "dev"] * 10), ["--label", "label"],
     "The `split` column holds 'dev'"),
    (lambda h: "builtin", ["--label", "label"], "`--label` applies to CSV and Parquet sources; builtin is MNIST."),
    (lambda h: "nothing.csv", ["--label", "label"], "The source nothing.csv does not exist."),
])
def test_stage_data_refuses_bad_input(here, capsys, make, extra, message):
    code, err = run(capsys, "stage-data", "--source", make(here), "--dest", "ds", *extra)
    assert code == 2 and len(err) == 1 and err[0].startswith("tuner: error: "), err
    assert message in err[0], err
    assert not (here / "ds").exists()


@pytest.fixture
def staged(here, capsys):
    table(60).to_pandas().to_csv(here / "t.csv", index=False)
    assert run(capsys, "stage-data", "--source", "t.csv", "--dest", "ds", "--label", "label",
               "--validation-fraction", "0.2", "--test-fraction", "0.2")[0] == 0
    (here / "spec.yaml").write_text(SPEC)
    return here


SPEC = """
name: mine
model: {builder: my_models:good}
data: {uri: ds}
storage: {uri: store}
search:
  num_samples: 2
  space: {learning_rate: {loguniform: [1.0e-3, 1.0e-2]}, batch_size: 4, units: 4}
asha: {max_t: 1, grace_period: 1}
scaling: {workers: 2, cpus_per_worker: 0.5}
"""


@pytest.mark.parametrize("sets, message", [
    (["search.space.batch_size=32"], "The global batch 64 (32 per worker x 2 workers) exceeds the 36 training rows"),
    (["model.builder=my_models.good"], "The value of `model.builder` is 'my_models.good', but must be `module:function`"),
    (["model.builder=their_models:good"], "The model builder's module `their_models` cannot be imported: no such module"),
    (["model.builder=my_models:nothing"], "The module `my_models` has no function `nothing`"),
    (["model.builder=my_models:returns_a_string"], "returned a builtins.str, not a tf_keras.Model"),
    (["model.builder=my_models:three_logits"],
     "outputs shape (batch, 3) for a classification task, but must output (batch, 2): one logit per class"),
    (["model.builder=my_models:reads_a_missing_one"],
     "reads the model hyperparameter `layers`, which `search.space` does not have"),
    (["model.builder=my_models:reads_a_missing_one", "search.space.units={choice: [4, 8]}",
      "search.space.layers={choice: [1], when: {units: [8]}}"],
     "reads the model hyperparameter `layers`, which does not count in this trial (its `when` in `search.space` "
     "does not hold); read it only where it holds, or with hp.get('layers', DEFAULT)"),
    (["model.builder=my_models:raises"], "raised ValueError with units=4: no such layer size"),
    (["objective.metric=val_mae", "objective.mode=min"],
     "The value of `objective.metric` is 'val_mae', but the trials of this classification dataset report "
     "val_loss and val_accuracy"),
    (["model.loss=no_such_loss"], "The loss 'no_such_loss' does not apply to the model"),
    (["data.uri=elsewhere"], "No staged dataset at"),
    (["data.uri=null"], "`data.uri` is not set, but the model `my_models:good` needs your dataset"),
])
def test_tune_refuses_a_bad_model_or_objective_before_anything_runs(staged, capsys, sets, message):
    overrides = [a for s in sets for a in ("--set", s)]
    code, err = run(capsys, "tune", "--config", "spec.yaml", *overrides)
    assert code == 2 and len(err) == 1 and err[0].startswith("tuner: error: "), err
    assert message in err[0], err
    assert not (staged / "store").exists() and not (staged / "elsewhere").exists()


def test_the_builder_check_passes_a_good_model_and_names_unread_hyperparameters(staged):
    builder = models.load_builder("my_models:good", str(staged))
    inputs = data.input_spec(data.read_manifest(str(staged / "ds")))
    assert models.check_builder(builder, [{"units": 4, "colour": 1}], inputs, None) == {"units"}
    from tuner import experiment
    from tuner.spec import load_spec

    spec = load_spec(str(staged / "spec.yaml"), ["search.space.units={choice: [4, 8]}",
                                                 "search.space.colour={choice: [1, 2]}"])
    assert experiment.check_builder(builder, spec, inputs) == [
        "`search.space.colour` is never read by the builder `my_models:good` (a typo?); it only multiplies trials."]


def test_the_conditional_example_builds_where_each_of_its_hyperparameters_counts():
    from pathlib import Path

    from tuner import experiment
    from tuner.spec import load_spec

    here = Path(__file__).resolve().parents[1] / "examples" / "conditional"
    spec = load_spec(str(here / "spec.yaml"))
    builder = models.load_builder(spec.model.builder, str(here))
    # depth 1, then 3 with leaky ReLU, then 2: every units_* and the slope built once.
    assert experiment.check_builder(builder, spec, data.mnist_input_spec()) == []
    broken = models.Builder(builder.path, lambda hp, inputs: (hp["units_2"], builder.function(hp, inputs))[1], None)
    with pytest.raises(experiment.UsageError, match="reads the model hyperparameter `units_2`, which does not count"):
        experiment.check_builder(broken, spec, data.mnist_input_spec())
