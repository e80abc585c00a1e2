"""Searchers, schedulers and the plateau stopper (pure parts: no cluster)."""

import importlib.util
import math
import os
from collections import Counter

import numpy as np
import pytest
import ray.cloudpickle as pickle
from hypothesis import given, settings
from hypothesis import strategies as st
from ray.tune.callback import CallbackList
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter

from tuner import schedulers, search
from tuner.resume import Keeper
from tuner.schedulers import ResumableASHA
from tuner.spec import Dim, SpecError, load_spec, missing_dependency

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP
ALGORITHMS = ("random", "quasi_random", "tpe", "bayesian")


def need_torch(algorithm):
    if algorithm == "bayesian" and importlib.util.find_spec("torch") is None:
        if os.environ.get("TUNER_REQUIRE_SERVICES") == "1":
            pytest.fail("PyTorch is required here (TUNER_REQUIRE_SERVICES=1); .ci/run installs it")
        pytest.skip("search.algorithm bayesian needs PyTorch: pip install 'tuner[bayesian]'")


SPACE = [
    "search.space.learning_rate={loguniform: [1.0e-4, 1.0e-1]}",
    "search.space.dropout={uniform: [0.0, 0.5]}",
    "search.space.width={loguniform: [16, 1024]}",
    "search.space.depth={uniform: [1, 3]}",
    "search.space.optimizer={choice: [adam, rmsprop, adagrad, sgd]}",
    "search.space.momentum={uniform: [0.5, 0.99]}",
    "search.space.schedule={choice: [constant, exponential]}",
    "search.space.decay_epochs={choice: [1.0, 2.0, 4.0]}",
    "search.space.batch_size={choice: [32, 64]}",
]


def spec_for(algorithm, *overrides, seed=0):
    return load_spec("quick", [f"search.algorithm={algorithm}", f"search.seed={seed}", *SPACE, *overrides])


def searcher(spec, max_concurrent=1):
    alg, space = search.searcher_for(spec, max_concurrent, "val_accuracy", "max")
    assert space == {}
    alg.set_search_properties("val_accuracy", "max", {})
    return alg


def objective(config):
    """A deterministic score with an optimum inside the space."""
    return 1 - abs(math.log10(config["learning_rate"]) + 2.5) / 3 - abs(config["dropout"] - 0.2)


def drive(alg, n, start=0):
    """Suggest and complete n trials one at a time; returns their configs."""
    out = []
    for i in range(start, start + n):
        config = alg.suggest(f"t{i}")
        out.append(config)
        alg.on_trial_complete(f"t{i}", {"val_accuracy": objective(config), "epoch": 1})
    return out


def in_bounds(spec, config):
    for name, dim in spec.search.space.items():
        value = config[name]
        if value is None:
            continue
        if dim.kind in ("fixed", "choice"):
            assert value in dim.values, (name, value)
        else:
            low, high = dim.values
            assert low <= value <= high, (name, value)
            if name in ("width", "depth"):
                assert isinstance(value, int), (name, value)


# --- the space ----------------------------------------------------------------------


def test_unit_cube_maps_onto_the_ranges_and_choices():
    log_f, uni_f = Dim("loguniform", (1e-4, 1e-2)), Dim("uniform", (0.0, 0.5))
    log_i, uni_i = Dim("int_loguniform", (16, 1024), int), Dim("int_uniform", (1, 3), int)
    choice = Dim("choice", ("a", "b", "c"), str)
    assert search.value_at("learning_rate", log_f, 0.0) == pytest.approx(1e-4)
    assert search.value_at("learning_rate", log_f, 0.5) == pytest.approx(1e-3)  # the geometric middle
    assert search.value_at("dropout", uni_f, 0.5) == pytest.approx(0.25)
    assert [search.value_at("depth", uni_i, u) for u in (0.0, 0.34, 0.67, 0.999999)] == [1, 2, 3, 3]
    assert search.value_at("width", log_i, 0.0) == 16 and search.value_at("width", log_i, 0.999999) == 1024
    assert [search.value_at("optimizer", choice, u) for u in (0.0, 0.4, 0.9)] == ["a", "b", "c"]


def test_inactive_conditional_hyperparameters_are_none():
    spec = spec_for("random")
    names = search.searched(spec.search.space)
    assert names.index("optimizer") < names.index("momentum") and "decay_rate" not in names
    u = {name: 0.0 for name in names}  # adam, constant
    config = search.config_from_unit(spec.search.space, [u[n] for n in names])
    assert config["optimizer"] == "adam" and config["momentum"] is None
    assert config["schedule"] == "constant" and config["decay_epochs"] is config["decay_rate"] is None
    u.update(optimizer=0.99, schedule=0.99)  # sgd, exponential
    config = search.config_from_unit(spec.search.space, [u[n] for n in names])
    assert config["momentum"] == 0.5 and config["decay_epochs"] == 1.0 and config["decay_rate"] == 0.7


def test_quasi_random_covers_a_choice_evenly():
    quasi = Counter(c["optimizer"] for c in drive(searcher(spec_for("quasi_random")), 16))
    assert set(quasi.values()) == {4}, quasi  # a Sobol prefix of 2^k points is stratified


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_suggestions_stay_in_bounds_and_conditionals_follow_their_parent(algorithm):
    need_torch(algorithm)
    spec = spec_for(algorithm)
    configs = drive(searcher(spec), 40 if algorithm in ("random", "quasi_random") else 14)
    for config in configs:
        in_bounds(spec, config)
        assert (config["momentum"] is None) == (config["optimizer"] != "sgd")
        assert (config["decay_epochs"] is None) == (config["schedule"] != "exponential")
    assert len({c["learning_rate"] for c in configs}) == len(configs)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_same_seed_gives_the_same_suggestions_and_another_seed_others(algorithm):
    need_torch(algorithm)
    first, again = drive(searcher(spec_for(algorithm)), 12), drive(searcher(spec_for(algorithm)), 12)
    other = drive(searcher(spec_for(algorithm, seed=1)), 12)
    assert first == again
    assert [c["learning_rate"] for c in first] != [c["learning_rate"] for c in other]


def test_optuna_asks_for_a_conditional_hyperparameter_only_when_it_counts():
    alg = searcher(spec_for("tpe"))
    drive(alg, 20)
    study = alg.searcher._ot_study
    for trial in study.trials:
        assert ("momentum" in trial.params) == (trial.params["optimizer"] == "sgd")
        assert ("decay_epochs" in trial.params) == (trial.params["schedule"] == "exponential")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_restored_searcher_continues_the_same_search(algorithm, tmp_path):
    need_torch(algorithm)
    spec = spec_for(algorithm)
    whole = drive(searcher(spec), 14)
    first = searcher(spec)
    assert drive(first, 11) == whole[:11]
    first.save(str(tmp_path / "searcher.pkl"))  # what Tune's experiment checkpoint calls
    restored = searcher(spec)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert drive(restored, 3, start=11) == whole[11:]
    # Without the state, the search would start over.
    assert drive(searcher(spec), 1)[0] != whole[11]


def test_asking_for_a_searcher_that_is_not_installed_is_one_line_with_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("optuna", "torch") else real(name, *a))
    assert missing_dependency(spec_for("random")) is None
    line = missing_dependency(spec_for("tpe"))
    assert line.startswith("`search.algorithm: tpe` needs optuna") and "pip install 'tuner[tpe]'" in line
    line = missing_dependency(spec_for("bayesian"))
    assert "needs optuna and torch, which are not installed" in line and "pip install 'tuner[bayesian]'" in line
    assert "\n" not in line
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else real(name, *a))
    pb2 = load_spec("quick", ["scheduler.kind=pb2"])
    assert missing_dependency(pb2) == ("`scheduler.kind: pb2` needs scikit-learn, which is not installed; run: "
                                       "pip install 'tuner[pb2]'")


@pytest.mark.parametrize("overrides, message", [
    (["search.space.optimizer=adam"],
     "`search.space.momentum` is searched, but only optimizer `sgd` uses it and `search.space.optimizer` never is `sgd`"),
    (["search.space.schedule={choice: [constant]}"],
     "`search.space.decay_epochs` is searched, but only schedule `exponential` uses it"),
])
def test_specs_that_would_make_a_searcher_ignore_part_of_the_space_are_refused(overrides, message):
    with pytest.raises(SpecError) as e:
        load_spec("quick", [*SPACE, *overrides])
    assert any(p.startswith(message) for p in e.value.problems), e.value.problems


GRID = ["search.algorithm=grid", "search.space.learning_rate=0.01", "search.space.dropout=0.1", "search.space.width=64",
        "search.space.depth={choice: [1, 2]}", "search.space.schedule=constant", "search.space.decay_epochs=1.0",
        "search.space.batch_size=32", "search.space.momentum={choice: [0.5, 0.9]}"]


def test_a_grid_over_conditional_hyperparameters_runs_each_active_combination_once(tmp_path):
    # momentum counts for sgd alone: 3 + 2 optimizer combinations; width_2 only at depth 2: 1 + 2 depth
    # combinations; each twice.
    spec = load_spec("quick", [*SPACE, *GRID, "search.num_samples=2",
                               "search.space.width_2={choice: [16, 32], when: {depth: [2]}}"])
    alg = searcher(spec, max_concurrent=3)
    assert search.trial_count(spec) == search.tune_num_samples(spec) == 5 * 3 * 2
    configs = drive(alg, 30)
    assert alg.suggest("t30") == "FINISHED"
    keys = [tuple(sorted(c.items())) for c in configs]
    assert all(keys.count(k) == 2 and keys[i] == keys[i + 1] for i, k in enumerate(keys) if i % 2 == 0)
    for c in configs:
        assert (c["momentum"] is None) == (c["optimizer"] != "sgd")
        assert (c["width_2"] is None) == (c["depth"] != 2)
    alg.save(str(tmp_path / "grid.pkl"))  # a resumed run goes on after the last given
    again = searcher(spec, max_concurrent=3)
    again.restore(str(tmp_path / "grid.pkl"))
    assert again.suggest("t31") == "FINISHED"


def test_a_grid_without_conditions_that_vary_stays_tunes_variant_generator():
    spec = load_spec("quick", [*SPACE, *GRID, "search.space.optimizer={choice: [adam, sgd]}",
                               "search.space.momentum=0.9"])
    alg, space = search.searcher_for(spec, 1, "val_accuracy", "max")
    assert type(alg).__name__ == "BasicVariantGenerator" and isinstance(space["momentum"].func, search._IfActive)
    assert search.trial_count(spec) == 4 * spec.search.num_samples and search.tune_num_samples(spec) == spec.search.num_samples


CONDITIONAL = [*SPACE, "search.space.depth={choice: [1, 2, 3]}",
               "search.space.width_2={int_uniform: [16, 64], when: {depth: [2, 3]}}",
               "search.space.activation={choice: [relu, tanh], when: {depth: [3]}}",
               "search.space.slope={uniform: [0.0, 0.5], when: {activation: [tanh], optimizer: [sgd, adam]}}"]


def respects_conditions(spec, config):
    space = spec.search.space
    for name in space:
        assert (config[name] is not None) == search.active(name, config, space), (name, config)
    assert (config["width_2"] is None) == (config["depth"] == 1)
    assert (config["slope"] is not None) == (config["activation"] == "tanh" and config["optimizer"] in ("sgd", "adam"))


@pytest.mark.parametrize("algorithm", [*ALGORITHMS, "grid"])
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_every_suggestion_respects_every_condition(algorithm, seed):
    need_torch(algorithm)
    if algorithm == "grid":
        spec = load_spec("quick", [*CONDITIONAL, *GRID, f"search.seed={seed}",
                                   "search.space.depth={choice: [1, 2, 3]}", "search.space.width_2={choice: [16, 64], "
                                   "when: {depth: [2, 3]}}", "search.space.slope={choice: [0.0, 0.5], when: "
                                   "{activation: [tanh], optimizer: [sgd, adam]}}"])
    else:
        spec = load_spec("quick", [f"search.algorithm={algorithm}", f"search.seed={seed}", *CONDITIONAL])
    configs = drive(searcher(spec), 12)
    for config in configs:
        in_bounds(spec, config)
        respects_conditions(spec, config)


def test_optuna_asks_for_a_when_hyperparameter_only_where_it_counts():
    alg = searcher(load_spec("quick", ["search.algorithm=tpe", *CONDITIONAL]))
    drive(alg, 16)
    for trial in alg.searcher._ot_study.trials:
        assert ("width_2" in trial.params) == (trial.params["depth"] >= 2)
        assert ("activation" in trial.params) == (trial.params["depth"] == 3)


def test_grid_over_a_conditional_hyperparameter_is_fine_where_it_always_counts():
    spec = load_spec("quick", ["search.algorithm=grid", "search.space.optimizer=sgd", "search.space.schedule=constant",
                               "search.space.learning_rate=0.01", "search.space.dropout=0.1",
                               "search.space.momentum={choice: [0.5, 0.9]}"])
    assert spec.search.space["momentum"].values == (0.5, 0.9)


# --- schedulers and the plateau stopper ------------------------------------------------


class FakeTrial:
    def __init__(self, trial_id, status="PENDING"):
        self.trial_id, self.status, self.last_result = trial_id, status, {}

    def set_status(self, status):
        self.status = status

    def __repr__(self):
        return self.trial_id


def test_each_scheduler_kind_and_its_budget():
    kinds = {}
    for kind in ("asha", "asha_promote", "hyperband", "median_stopping", "fifo"):
        kinds[kind] = schedulers.scheduler_for(load_spec("quick", [f"scheduler.kind={kind}", "asha.max_t=10",
                                                                "asha.reduction_factor=3"]), True, "epoch")
    assert isinstance(kinds["asha"], ResumableASHA) and len(kinds["asha"]._brackets) == 1
    assert isinstance(kinds["hyperband"], ResumableASHA) and len(kinds["hyperband"]._brackets) == 3
    assert [[m for m, _ in b._rungs] for b in kinds["hyperband"]._brackets] == [[9, 3, 1], [9, 3], [9]]
    assert isinstance(kinds["asha_promote"], schedulers.PromotingASHA)
    assert [m for m, _ in kinds["asha_promote"]._rungs] == [9, 3, 1]
    assert isinstance(kinds["median_stopping"], schedulers.ResumableMedian)
    assert type(kinds["fifo"]) is FIFOScheduler
    # A single training run (`tuner train`) never stops early.
    assert type(schedulers.scheduler_for(load_spec("quick"), False, "epoch")) is FIFOScheduler
    assert schedulers.hyperband_brackets(81, 1, 3) == 5 and schedulers.hyperband_brackets(9, 1, 3) == 3
    assert schedulers.hyperband_brackets(10, 4, 3) == 1


class FakeSearch:
    def __init__(self, total):
        self.total, self.made = total, 0

    def is_finished(self):
        return self.made >= self.total


class FakeController:
    """Just enough of Tune's loop for a scheduler that pauses: a searcher that makes
    trials while fewer than ``slots`` plus the waiting ones are live (as ``Keeper``
    lets it), the scheduler's choice first, trials that train one epoch per event."""

    def __init__(self, scheduler, curves, slots):
        self.scheduler, self.curves, self.slots = scheduler, curves, slots
        self.trials, self.search_alg, self.epochs = [], FakeSearch(len(curves)), {}
        self.trained = 0

    def get_trials(self):
        return self.trials

    def stop_trial(self, trial):
        self.scheduler.on_trial_remove(self, trial)
        trial.status = "TERMINATED"

    def new_trials(self):
        live = [t for t in self.trials if t.status != "TERMINATED"]
        while not self.search_alg.is_finished() and len(live) < self.slots + self.scheduler.waiting():
            trial = FakeTrial(f"t{self.search_alg.made:02d}")
            self.search_alg.made += 1
            self.scheduler.on_trial_add(self, trial)
            self.trials.append(trial)
            live.append(trial)

    def start(self):
        while sum(t.status == "RUNNING" for t in self.trials) < self.slots:
            trial = self.scheduler.choose_trial_to_run(self)
            if trial is None:
                return
            trial.status = "RUNNING"

    def train(self, trial):
        epoch = self.epochs[trial.trial_id] = self.epochs.get(trial.trial_id, 0) + 1
        self.trained += 1
        decision = self.scheduler.on_trial_result(
            self, trial, {"epoch": epoch, "val_accuracy": self.curves[int(trial.trial_id[1:])][epoch - 1]})
        if decision == "PAUSE":
            trial.status = "PAUSED"
        elif epoch == self.scheduler.max_t:
            self.scheduler.on_trial_complete(self, trial, {})
            trial.status = "TERMINATED"

    def run(self, steps=10_000):
        for _ in range(steps):
            self.new_trials()
            self.start()
            running = [t for t in self.trials if t.status == "RUNNING"]
            if not running:
                return
            self.train(running[0])


def promoting(**kw):
    return schedulers.PromotingASHA(time_attr="epoch", metric="val_accuracy", mode="max", max_t=9, grace_period=1,
                                reduction_factor=3, **kw)


def curves(n, seed=0):
    rng = np.random.default_rng(seed)
    quality = rng.uniform(0.9, 0.99, n)
    return [[q - 0.05 / e + rng.normal(0, 0.002) for e in range(1, 10)] for q in quality]


@pytest.mark.parametrize("slots", [1, 3])
def test_promoting_asha_sends_on_a_third_per_rung_and_takes_the_best_to_the_budget(slots):
    runs = curves(27)
    sim = FakeController(promoting(max_concurrent=slots), runs, slots)
    sim.run()
    assert all(t.status == "TERMINATED" for t in sim.trials) and len(sim.trials) == 27
    reached = Counter()
    for epochs in sim.epochs.values():
        reached.update(m for m in (1, 3, 9) if epochs >= m)
    # Synchronous halving: 27, 9, 3. Promotion decided early may send on a few more.
    assert reached[1] == 27 and 9 <= reached[3] <= 11 and 3 <= reached[9] <= 5, reached
    assert sim.trained <= 0.30 * 27 * 9
    best = max(range(27), key=lambda i: runs[i][-1])
    assert sim.epochs[f"t{best:02d}"] == 9


def test_the_first_trial_at_a_rung_waits_instead_of_going_on():
    sim = FakeController(promoting(), curves(3), 1)
    sim.new_trials()
    sim.start()
    first = sim.trials[0]
    sim.train(first)
    assert first.status == "PAUSED" and sim.scheduler.waiting() == 1
    sim.new_trials()  # its slot goes to a new trial: nothing is promotable yet
    assert len(sim.trials) == 2


def test_promoting_asha_resumes_where_it_stopped_after_a_restore():
    runs = curves(27, seed=1)
    whole = FakeController(promoting(), runs, 1)
    whole.run()
    half = FakeController(promoting(), runs, 1)
    half.run(steps=40)
    state = pickle.loads(pickle.dumps(half.scheduler.state()))
    # A restored run: Tune re-adds unfinished trials as PENDING; waiting ones go back to waiting.
    restored = promoting()
    restored.load(state)
    again = FakeController(restored, runs, 1)
    again.search_alg.made, again.epochs, again.trained = half.search_alg.made, dict(half.epochs), half.trained
    for t in half.trials:
        trial = FakeTrial(t.trial_id, "TERMINATED" if t.status == "TERMINATED" else "PENDING")
        restored.on_trial_add(again, trial)
        again.trials.append(trial)
    assert [t.status for t in again.trials] == [t.status.replace("RUNNING", "PENDING") for t in half.trials]
    again.run()
    assert again.epochs == whole.epochs
    # Tune saves trials ended while waiting as they were (PAUSED): restored after the end,
    # they stay ended rather than run on.
    final = promoting()
    final.load(pickle.loads(pickle.dumps(whole.scheduler.state())))
    ended = [FakeTrial(t, "PENDING") for t, e in whole.epochs.items() if e < 9]
    for t in ended:
        final.on_trial_add(None, t)
    assert ended and all(t.status == "TERMINATED" for t in ended)


def hyperband(seed):
    s = ResumableASHA(time_attr="epoch", metric="val_accuracy", mode="max", max_t=27, grace_period=1,
                      reduction_factor=3, brackets=4, seed=seed)
    return s


def test_hyperband_spreads_trials_over_brackets_reproducibly_and_keeps_them_across_a_restore():
    a, b = hyperband(0), hyperband(0)
    trials = [FakeTrial(f"t{i}") for i in range(40)]
    for t in trials:
        a.on_trial_add(None, t)
        b.on_trial_add(None, t)
    assert a._bracket_of == b._bracket_of
    assert len(set(a._bracket_of.values())) == 4
    restored = pickle.loads(pickle.dumps(hyperband(5)))
    restored.load(pickle.loads(pickle.dumps(a.state())))
    more = FakeTrial("t40")
    for t in [*trials, more]:
        restored.on_trial_add(None, t)
    a.on_trial_add(None, more)
    assert restored._bracket_of == a._bracket_of  # the same brackets, and the same draw for a new trial


def median():
    return schedulers.ResumableMedian(time_attr="epoch", metric="val_accuracy", mode="max", grace_period=1,
                                  min_samples_required=2)


def test_the_median_rule_stops_a_laggard_and_keeps_its_records_across_a_restore():
    rule = median()
    trials = {n: FakeTrial(n) for n in "abcd"}
    for t in trials.values():
        rule.on_trial_add(None, t)
    for n, acc in (("a", 0.9), ("b", 0.8)):
        for epoch in (1, 2):
            assert rule.on_trial_result(None, trials[n], {"epoch": epoch, "val_accuracy": acc}) == CONTINUE
    state = pickle.loads(pickle.dumps(rule.state()))
    # A restored rule, with the same trials re-added, decides as the first one would.
    restored = median()
    restored.load(state)
    for t in trials.values():
        restored.on_trial_add(None, FakeTrial(t.trial_id))
    for r in (rule, restored):
        laggard = FakeTrial("c")
        r.on_trial_add(None, laggard)
        assert r.on_trial_result(None, laggard, {"epoch": 1, "val_accuracy": 0.5}) == STOP
        good = FakeTrial("d")
        r.on_trial_add(None, good)
        assert r.on_trial_result(None, good, {"epoch": 1, "val_accuracy": 0.95}) == CONTINUE
    # Without the records there are too few trials to judge: the laggard would go on.
    fresh = median()
    laggard = FakeTrial("c")
    fresh.on_trial_add(None, laggard)
    assert fresh.on_trial_result(None, laggard, {"epoch": 1, "val_accuracy": 0.5}) == CONTINUE


def test_plateau_stops_after_patience_epochs_without_an_improvement_above_min_delta():
    stop = schedulers.Plateau("val_accuracy", "epoch", patience=2, min_delta=0.01)
    curve = [(1, 0.90), (2, 0.95), (3, 0.955), (4, 0.958)]  # +0.005 and +0.008 are not improvements
    assert [stop("t", {"epoch": e, "val_accuracy": v}) for e, v in curve] == [False, False, False, True]
    # Epochs, not reports: a resumed trial that reports epoch 2 again is not a step further.
    stop = schedulers.Plateau("val_accuracy", "epoch", patience=2)
    assert [stop("u", {"epoch": e, "val_accuracy": v}) for e, v in [(1, 0.9), (2, 0.9), (2, 0.9), (3, 0.91)]] == \
        [False, False, False, False]
    assert stop("nan", {"epoch": 1, "val_accuracy": float("nan")}) is False and not stop.stop_all()
    restored = schedulers.Plateau("val_accuracy", "epoch", patience=2)
    restored.load(pickle.loads(pickle.dumps(stop.state())))
    assert restored("u", {"epoch": 5, "val_accuracy": 0.91}) is True  # best 0.91 at epoch 3


def test_the_plateau_rule_comes_from_the_spec():
    assert schedulers.stopper_for(load_spec("quick"), "val_accuracy", "max", "epoch") is None
    stop = schedulers.stopper_for(load_spec("quick", ["scheduler.plateau_patience=3", "scheduler.plateau_min_delta=0.001"]),
                                  "val_accuracy", "max", "epoch")
    assert (stop.patience, stop.min_delta) == (3, 0.001)
    with pytest.raises(SpecError, match=r"`scheduler.plateau_patience` is 0, but must be >= 1"):
        load_spec("quick", ["scheduler.plateau_patience=0"])
    with pytest.raises(SpecError, match=r"`scheduler.kind` is 'pbs', but must be one of: asha, asha_promote, hyperband"):
        load_spec("quick", ["scheduler.kind=pbs"])


def test_the_keeper_saves_the_median_rule_and_the_stopper_and_counts_resumed_trials(tmp_path):
    rule, stop = median(), schedulers.Plateau("val_accuracy", "epoch", patience=2)
    limiter = searcher(spec_for("quasi_random"), max_concurrent=2)
    keeper = Keeper(rule, limiter, 2, "slots", stop)
    tuner_pkl = pickle.dumps({"scheduler": rule, "searcher": limiter, "stop": stop, "callbacks": [keeper]})
    a = FakeTrial("a")
    rule.on_trial_add(None, a)
    rule.on_trial_result(None, a, {"epoch": 1, "val_accuracy": 0.9})
    stop("a", {"epoch": 1, "val_accuracy": 0.9})
    CallbackList([keeper]).save_to_dir(str(tmp_path), session_str="s")

    restored = pickle.loads(tuner_pkl)
    keeper2 = restored["callbacks"][0]
    assert keeper2.scheduler is restored["scheduler"] and keeper2.stopper is restored["stop"]
    keeper2.this_run(1, "slots-2")
    CallbackList([keeper2]).restore_from_dir(str(tmp_path))
    restored["scheduler"].on_trial_add(None, FakeTrial("a"))
    assert [r["val_accuracy"] for t, rs in restored["scheduler"]._results.items() for r in rs] == [0.9]
    assert restored["stop"].best == {"a": [0.9, 1]}
    # Before the first step: this run's limit, and the re-added trials count against it.
    keeper2.on_step_begin(0, [FakeTrial("a", "PENDING"), FakeTrial("b", "TERMINATED")])
    assert isinstance(keeper2.searcher, ConcurrencyLimiter)
    assert keeper2.searcher.max_concurrent == 1 and keeper2.searcher.live_trials == {"a"}
    assert keeper2.searcher.suggest("c") is None  # the limit is taken by the resumed trial


def test_mo_asha_keeps_the_non_dominated_trials_at_a_rung_and_resumes_its_rungs():
    spec = load_spec("quick", ["objective=[{metric: val_accuracy}, {metric: params}]", "asha.max_t=4",
                               "asha.grace_period=1", "asha.reduction_factor=2"])
    mo = schedulers.scheduler_for(spec, True, "epoch")
    assert isinstance(mo, schedulers.MultiObjectiveASHA) and [m for m, _ in mo._rungs] == [2, 1]
    at_rung_1 = {"a": (0.90, 500), "b": (0.85, 100), "c": (0.80, 600), "d": (0.70, 700), "e": (float("nan"), 50)}
    decisions = {t: mo.on_trial_result(None, FakeTrial(t), {"epoch": 1, "val_accuracy": acc, "params": params})
                 for t, (acc, params) in at_rung_1.items()}
    # a goes on (the first); b is on the front with a; c (dominated by a) is not in the top half of 3;
    # d and the NaN one e rank last.
    assert decisions == {"a": CONTINUE, "b": CONTINUE, "c": STOP, "d": STOP, "e": STOP}
    assert mo.on_trial_result(None, FakeTrial("a"), {"epoch": 4, "val_accuracy": 0.95, "params": 500}) == STOP  # budget
    again = schedulers.scheduler_for(spec, True, "epoch")
    again.load(mo.state())
    # repr: NaN equals itself there.
    assert repr(again.state()) == repr(mo.state())
    assert repr(again.rungs()) == repr([[(2, {}), (1, {t: v[0] for t, v in at_rung_1.items()})]])
    assert again.on_trial_result(None, FakeTrial("f"), {"epoch": 1, "val_accuracy": 0.99, "params": 10}) == CONTINUE


@pytest.mark.parametrize("algorithm", ["tpe", "nsga2"])
def test_a_multi_objective_searcher_pickles_and_a_restored_one_continues_the_same_search(algorithm, tmp_path):
    spec = load_spec("quick", [f"search.algorithm={algorithm}", "search.num_samples=12", *SPACE,
                               "objective=[{metric: val_accuracy}, {metric: params}]"])

    def drive_two(alg, n, start=0):
        out = []
        for i in range(start, start + n):
            config = alg.suggest(f"t{i}")
            out.append(config)
            alg.on_trial_complete(f"t{i}", {"val_accuracy": objective(config), "params": config["width"], "epoch": 1})
        return out

    whole = drive_two(searcher(spec), 14)
    first = searcher(spec)
    assert drive_two(first, 11) == whole[:11]
    pickle.loads(pickle.dumps(first))  # as Tune saves it with the experiment
    first.save(str(tmp_path / "searcher.pkl"))
    restored = searcher(spec)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert drive_two(restored, 3, start=11) == whole[11:]
    study = restored.searcher._ot_study
    assert len(study.directions) == 2 and len(study.trials) == 14
