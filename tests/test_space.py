"""The search space's roles and types: training knobs vs model hyperparameters."""

import pytest

from tuner.space import KNOBS, Dim, Invalid, model_hyperparameters, ordered, parse_dim, with_builder_defaults


@pytest.mark.parametrize("name, value, dim", [
    ("units", 64, Dim("fixed", (64,), int)),
    ("activation", {"choice": ["relu", "gelu"]}, Dim("choice", ("relu", "gelu"), str)),
    ("units", {"uniform": [16, 256]}, Dim("uniform", (16, 256), int)),  # whole-number ends: ints
    ("rate", {"uniform": [0.0, 0.5]}, Dim("uniform", (0.0, 0.5), float)),
    ("rate", {"uniform": [0, 0.5]}, Dim("uniform", (0.0, 0.5), float)),
    ("units", {"int_loguniform": [16, 1024]}, Dim("int_loguniform", (16, 1024), int)),
    ("scale", {"loguniform": [1, 100]}, Dim("loguniform", (1, 100), int)),
    ("scale", {"loguniform": [1.0, 100.0]}, Dim("loguniform", (1.0, 100.0), float)),
    # Training knobs keep their declared types.
    ("learning_rate", {"uniform": [1, 2]}, Dim("uniform", (1.0, 2.0), float)),
    ("batch_size", {"loguniform": [16, 256]}, Dim("loguniform", (16, 256), int)),
])
def test_types_follow_the_values_or_the_knob(name, value, dim):
    assert parse_dim(name, value) == dim


def test_the_builders_defaults_fill_and_type_the_space():
    space = {"learning_rate": Dim("fixed", (1e-3,), float), "width": Dim("loguniform", (32.0, 512.0), float),
             "dropout": Dim("uniform", (0, 1), int)}
    out = with_builder_defaults(space, {"width": 128, "depth": 1, "dropout": 0.2})
    assert out["width"] == Dim("loguniform", (32, 512), int)  # the default is an int: so is the range
    assert out["dropout"] == Dim("uniform", (0.0, 1.0), float)  # and a float default makes a float range
    assert out["depth"] == Dim("fixed", (1,), int)  # not in the spec: the default
    assert ordered(out) == ["learning_rate", "width", "dropout", "depth"]
    assert model_hyperparameters({"learning_rate": 1, "width": 2}) == {"width": 2}


def test_a_dim_pickled_by_an_older_tuner_gets_its_type_back():
    # tuner.pkl keeps the searcher's space; older Dims had kind and values only.
    old = Dim.__new__(Dim)
    old.__setstate__({"kind": "loguniform", "values": (16, 256)})
    assert old == Dim("loguniform", (16, 256), int) and old.is_int
    old.__setstate__({"kind": "uniform", "values": (0.0, 0.5)})
    assert old == Dim("uniform", (0.0, 0.5), float)


def test_choices_of_one_type():
    assert parse_dim("rate", {"choice": [1, 0.5]}) == Dim("choice", (1, 0.5), float)
    with pytest.raises(Invalid, match=r"The choices of `search.space.units` mix int and str; give values of one type"):
        parse_dim("units", {"choice": [64, "auto"]})


def test_a_bad_value_is_one_line_naming_the_key():
    with pytest.raises(Invalid, match=r"^The value of `search.space.optimizer` is 'lion', but must be one of"):
        parse_dim("optimizer", "lion")
    assert set(KNOBS) == {"learning_rate", "schedule", "decay_epochs", "decay_rate", "staircase", "optimizer",
                          "momentum", "batch_size"}
