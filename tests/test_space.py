"""The search space's roles and types: training knobs vs model hyperparameters."""

import pytest

from tuner.space import (
    KNOBS,
    Dim,
    Invalid,
    active,
    check_conditions,
    conditional_grid,
    config_from_unit,
    corner_configs,
    grid_points,
    model_hyperparameters,
    ordered,
    parse_dim,
    parse_space,
    searched,
    with_builder_defaults,
)


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


# --- conditions ---------------------------------------------------------------------------

COND = {
    "depth": {"choice": [1, 2, 3, 4]},
    "units_3": {"int_uniform": [16, 512], "when": {"depth": [3, 4]}},
    "activation": {"choice": ["relu", "tanh"], "when": {"depth": [2, 3, 4]}},
    "slope": {"uniform": [0.0, 0.5], "when": {"activation": "tanh", "optimizer": ["sgd"]}},  # a chain, and a knob
    "optimizer": {"choice": ["adam", "sgd"]},
}


def cond_space(**changes):
    problems = []
    space = parse_space({**COND, **changes}, problems)
    assert not problems, problems
    return space


def test_when_parses_and_round_trips_through_yaml():
    space = cond_space()
    assert space["units_3"] == Dim("int_uniform", (16, 512), int, when=(("depth", (3, 4)),))
    assert space["slope"].when == (("activation", ("tanh",)), ("optimizer", ("sgd",)))
    assert space["units_3"].to_yaml() == {"int_uniform": [16, 512], "when": {"depth": [3, 4]}}
    assert parse_dim("units_3", space["units_3"].to_yaml()) == space["units_3"]
    one = parse_dim("tail", {"choice": [8], "when": {"depth": [4]}})
    assert parse_dim("tail", one.to_yaml()) == one


def test_a_condition_comes_after_what_it_names():
    space = cond_space(slope={"uniform": [0.0, 0.5], "when": {"activation": ["tanh"]}})
    names = ordered({"slope": space["slope"], **space})  # the dependant first in the spec
    assert names.index("depth") < names.index("activation") < names.index("slope")
    assert names.index("depth") < names.index("units_3")


@pytest.mark.parametrize("changes, message", [
    ({"units_3": {"int_uniform": [16, 512], "when": {"detph": [3]}}},
     "`search.space.units_3.when.detph` names `detph`, which `search.space` does not have; name one of"),
    ({"units_3": {"int_uniform": [16, 512], "when": {"depth": [3, 5]}}},
     "`search.space.units_3.when.depth` has 5, which `depth` never takes (it is 1, 2, 3, 4); give values it takes."),
    ({"depth": {"choice": [1, 2], "when": {"units_3": [16]}}},
     "The `when` conditions of `search.space` go in a circle (depth -> units_3 -> depth)"),
    ({"slope": {"uniform": [0.0, 0.5], "when": {"slope": [0.1]}}},
     "The `when` conditions of `search.space` go in a circle (slope -> slope)"),
    # Through a hyperparameter's second condition: depth names units_3 after tail.
    ({"depth": {"choice": [1, 2], "when": {"tail": [8], "units_3": [16]}}, "tail": {"choice": [8, 16]}},
     "The `when` conditions of `search.space` go in a circle (depth -> units_3 -> depth)"),
    ({"units_3": {"int_uniform": [16, 512], "when": {"slope": [0.7]}}},
     "`search.space.units_3.when.slope` has 0.7, which `slope` never takes (a uniform range [0.0, 0.5])"),
])
def test_conditions_that_cannot_work_are_refused(changes, message):
    problems = check_conditions(cond_space(**changes))
    assert any(p.startswith(message) for p in problems), problems


@pytest.mark.parametrize("value, message", [
    ({"loguniform": [1e-4, 1e-2], "when": {"depth": [2]}}, "`search.space.learning_rate` has `when`, but learning_rate is a training knob"),
])
def test_a_knob_takes_no_when(value, message):
    with pytest.raises(Invalid, match=message.replace("`", ".")):
        parse_dim("learning_rate", value)


@pytest.mark.parametrize("value, message", [
    ({"when": {"depth": [2]}}, "`search.space.tail` has `when`; beside it give exactly one of"),
    ({"choice": [1], "when": []}, "The value of `search.space.tail.when` must map hyperparameters"),
    ({"choice": [1], "when": {"depth": []}}, "The value of `search.space.tail.when.depth` must be a value or a non-empty"),
])
def test_a_malformed_when_is_one_line(value, message):
    with pytest.raises(Invalid) as e:
        parse_dim("tail", value)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_chain_of_conditions_sets_each_inactive_one_to_none():
    space = cond_space()
    names = searched(space)
    at = lambda **u: config_from_unit(space, [u.get(n, 0.0) for n in names])  # noqa: E731
    assert at() == {**at(), "depth": 1, "units_3": None, "activation": None, "slope": None}
    deep = at(depth=0.99, activation=0.99, optimizer=0.99)  # depth 4, tanh, sgd
    assert deep["units_3"] == 16 and deep["activation"] == "tanh" and deep["slope"] == 0.0
    # tanh drawn, but inactive at depth 1: its dependant is inactive too.
    assert at(activation=0.99, optimizer=0.99)["slope"] is None
    assert model_hyperparameters(at()) == {"depth": 1}


def test_a_grid_has_only_the_active_combinations():
    space = cond_space(units_3={"choice": [16, 64], "when": {"depth": [3, 4]}}, slope={"choice": [0.0, 0.1],
                       "when": {"activation": ["tanh"]}})
    points = grid_points(space)
    # depth 1: 1; depth 2: relu + tanh x 2 slopes = 3; depth 3 and 4: 2 units x 3 = 6 each; x 2 optimizers.
    assert len(points) == (1 + 3 + 6 + 6) * 2
    assert len({tuple(sorted(p.items())) for p in points}) == len(points)
    assert all(active(n, p, space) == (p[n] is not None) for p in points for n in space)
    assert conditional_grid(space) and not conditional_grid(cond_space(depth={"choice": [4]}, optimizer="sgd",
                                                                       activation={"choice": ["tanh"]}))


def test_a_builder_is_checked_where_each_conditional_hyperparameter_counts():
    space = cond_space(units_3={"int_uniform": [16, 512], "when": {"depth": [2]}})
    configs = corner_configs(space)
    assert [c["depth"] for c in configs] == [1, 4, 2]  # the corners, then one where units_3 counts
    assert configs[0]["activation"] is None and configs[1]["units_3"] is None
    assert (configs[1]["activation"], configs[1]["optimizer"], configs[1]["slope"]) == ("tanh", "sgd", 0.5)
    assert configs[2]["units_3"] == 16 and configs[2]["activation"] == "relu" and configs[2]["slope"] is None
    only_tanh = cond_space(activation={"choice": ["relu", "tanh", "gelu"], "when": {"depth": [2, 3, 4]}})
    assert corner_configs(only_tanh)[-1] | {"depth": 2, "activation": "tanh"} == corner_configs(only_tanh)[-1]
