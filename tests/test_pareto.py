"""Pareto dominance, non-dominated sorting, MO-ASHA's rung rule and the hypervolume,
checked against brute force on plain values."""

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuner import pareto

MODES = ("max", "min")  # accuracy up, parameters down

points_2d = st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=14)


def brute_front(points, modes):
    return [i for i, p in enumerate(points) if not any(pareto.dominates(q, p, modes) for q in points)]


def test_dominance_follows_each_objectives_mode():
    assert pareto.dominates((0.9, 100), (0.8, 200), MODES)
    assert pareto.dominates((0.9, 100), (0.9, 200), MODES)
    assert not pareto.dominates((0.9, 100), (0.9, 100), MODES)  # equal: neither
    assert not pareto.dominates((0.9, 300), (0.8, 200), MODES)  # a trade-off: neither
    assert pareto.dominates((0.1, 1), (0.2, 2), ("min", "min"))


@settings(max_examples=200, deadline=None)
@given(points_2d)
def test_the_first_front_is_the_brute_force_non_dominated_set_and_fronts_partition(points):
    layers = pareto.fronts(points, MODES)
    assert sorted(itertools.chain(*layers)) == list(range(len(points)))
    assert layers[0] == brute_front(points, MODES) == pareto.front(points, MODES)
    for k, layer in enumerate(layers[1:], 1):  # each point of front k is dominated by one of front k-1
        for i in layer:
            assert any(pareto.dominates(points[j], points[i], MODES) for j in layers[k - 1])
        rest = [points[j] for later in layers[k:] for j in later]
        assert sorted(layer) == [i for i in layer if not any(pareto.dominates(q, points[i], MODES) for q in rest)]


def test_a_nan_point_goes_last_and_is_never_on_the_front():
    points = [(0.9, 10), (math.nan, 1), (0.8, 5)]
    assert pareto.fronts(points, MODES) == [[0, 2], [1]]
    assert pareto.front([(math.nan, 1)], MODES) == []


def test_crowding_prefers_the_ends_then_the_isolated():
    points = [(0.0, 10.0), (0.5, 5.2), (0.55, 4.8), (1.0, 0.0), (0.9, 0.5)]
    distance = pareto.crowding(points, [0, 1, 2, 3, 4])
    assert distance[0] == distance[3] == math.inf
    assert distance[1] > distance[4]  # (0.5, 5.2) has more room around it than (0.9, 0.5)
    # Maximising both: (1.0, 0.0), (0.9, 0.5), (0.55, 4.8), (0.5, 5.2) and (0.0, 10.0) are one front.
    order = pareto.ranked(points, ("max", "max"))
    assert set(order[:2]) == {0, 3} and order[2] == 1


def test_the_rung_rule_keeps_the_top_fraction_of_the_ranking():
    # Four points at a rung, reduction factor 2: the two of the first front go on.
    points = [(0.90, 500), (0.85, 100), (0.80, 600), (0.70, 700)]
    assert [pareto.goes_on(points, i, MODES, 2) for i in range(4)] == [True, True, False, False]
    assert pareto.goes_on([(0.1, 9)], 0, MODES, 3)  # the first at a rung goes on
    # One objective: the same as keeping the top quantile.
    one = [(v,) for v in (0.5, 0.9, 0.7, 0.6, 0.8, 0.4)]
    assert [i for i in range(6) if pareto.goes_on(one, i, ("max",), 3)] == [1, 4]


def test_hypervolume_of_known_fronts():
    ref = (0.0, 10.0)  # accuracy >= 0, parameters <= 10
    assert pareto.hypervolume([(1.0, 0.0)], MODES, ref) == pytest.approx(10.0)
    # Two rectangles: 0.5 x 10 (0..0.5 accuracy at 0 params is covered by the second) ...
    assert pareto.hypervolume([(1.0, 5.0), (0.5, 0.0)], MODES, ref) == pytest.approx(1.0 * 5 + 0.5 * 5)
    assert pareto.hypervolume([(1.0, 5.0), (0.5, 0.0), (0.4, 6.0)], MODES, ref) == pytest.approx(7.5)  # dominated
    assert pareto.hypervolume([(-1.0, 5.0)], MODES, ref) == 0.0  # outside the reference
    cube = pareto.hypervolume([(1, 1, 1)], ("max", "max", "max"), (0, 0, 0))
    assert cube == pytest.approx(1.0)
    assert pareto.hypervolume([(2, 1, 1), (1, 2, 1), (1, 1, 2)], ("max",) * 3, (0, 0, 0)) == pytest.approx(4.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(0, 4)), min_size=1, max_size=8))
def test_hypervolume_equals_counting_unit_cells(points):
    ref = (5, 5, 5)
    modes = ("min", "min", "min")
    cells = sum(1 for c in itertools.product(range(5), repeat=3)
                if any(all(p[k] <= c[k] for k in range(3)) for p in points))
    assert pareto.hypervolume(points, modes, ref) == pytest.approx(cells)


def test_the_reference_point_lies_beyond_the_worst_values():
    points = [(0.9, 100.0), (0.8, 50.0), (0.95, 400.0)]
    ref = pareto.reference_point(points, MODES)
    assert ref[0] < 0.8 and ref[1] > 400
    assert pareto.hypervolume(points, MODES, ref) > 0
