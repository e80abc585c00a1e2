"""Population-based training: the pure core (tuner.population) with plain values, and
its Tune scheduler (tuner.schedulers.PopulationScheduler) driven by a stand-in for Tune's
loop over real checkpoint folders on disk."""

import json
import pickle
import random
from pathlib import Path

import pytest

from tuner import checkpoints, schedule
from tuner import population as pop
from tuner.space import Dim
from tuner.spec import load_spec
from tuner.storage import Location

SPACE = {
    "learning_rate": Dim("loguniform", (1e-4, 1e-2)),
    "batch_size": Dim("choice", (32, 64, 128), int),
    "momentum": Dim("uniform", (0.5, 0.99)),
    "optimizer": Dim("choice", ("adam", "sgd"), str),
    "width": Dim("choice", (64, 128), int),
    "decay_rate": Dim("fixed", (0.5,)),
}


def population(size=4, interval=2, quantile=0.25, resample=0.0, max_t=10, seed=0, mutate=None):
    return pop.Population(SPACE, size, interval, quantile, resample, mutate, max_t, seed=seed)


def config(lr=1e-3, batch=64, width=64):
    return {"learning_rate": lr, "batch_size": batch, "momentum": None, "optimizer": "adam", "width": width,
            "decay_rate": 0.5}


# --- explore -------------------------------------------------------------------------------


def test_perturb_multiplies_a_range_within_its_bounds_and_moves_a_choice_to_a_neighbour():
    rng = random.Random(0)
    lr = SPACE["learning_rate"]
    values = {round(pop.perturb(lr, 1e-3, rng, 0.0), 12) for _ in range(50)}
    assert values == {8e-4, 1.2e-3}
    assert pop.perturb(lr, 1e-2, random.Random(1), 0.0) <= 1e-2  # x1.2 at the top stays at the bound
    assert {pop.perturb(SPACE["batch_size"], 64, rng, 0.0) for _ in range(50)} == {32, 128}
    assert {pop.perturb(SPACE["batch_size"], 32, rng, 0.0) for _ in range(20)} == {64}  # an end has one neighbour
    assert pop.perturb(SPACE["decay_rate"], 0.5, rng, 1.0) == 0.5  # fixed: never changes
    assert pop.perturb(SPACE["momentum"], None, rng, 1.0) is None  # unused (not sgd): stays unused
    resampled = [pop.perturb(lr, 1e-3, rng, 1.0) for _ in range(50)]
    assert all(1e-4 <= v <= 1e-2 for v in resampled) and len(set(resampled)) == 50
    small = Dim("int_uniform", (1, 8), int)
    assert {pop.perturb(small, 2, rng, 0.0) for _ in range(50)} == {1, 3}  # 2 x 0.8 or x 1.2 rounds back to 2


def test_only_searched_training_knobs_are_mutated_by_default():
    assert pop.mutated(SPACE, None) == ["learning_rate", "momentum", "batch_size"]
    assert pop.mutated(SPACE, ["learning_rate"]) == ["learning_rate"]
    assert pop.check_mutate(SPACE, None) == []
    problems = pop.check_mutate(SPACE, ["width", "optimizer", "decay_rate", "depth"])
    assert "a model hyperparameter" in problems[3]  # not in the space yet: the builder's defaults come later
    assert [p.split("`, ")[0] for p in problems] == ["`pbt.mutate` names `width", "`pbt.mutate` names `optimizer",
                                                     "`pbt.mutate` names `decay_rate", "`pbt.mutate` names `depth"]
    assert "a model hyperparameter" in problems[0] and "optimizer's state" in problems[1]
    fixed = {k: Dim("fixed", (d.values[0],)) for k, d in SPACE.items()}
    assert "nothing is mutable" in pop.check_mutate(fixed, None)[0]


# --- decisions -----------------------------------------------------------------------------


def reported(p, trial_id, epoch, score):
    return p.report(trial_id, epoch, score, f"ckpt/{trial_id}/{epoch}")


def test_perturbation_points_come_every_interval_and_never_at_the_budget():
    p = population(interval=2, max_t=6)
    p.add("a", config())
    assert [reported(p, "a", e, 0.5) for e in range(1, 7)] == [False, True, False, True, False, False]
    p = population(interval=1, max_t=3)
    p.add("a", config())
    assert [reported(p, "a", e, 0.5) for e in range(1, 4)] == [True, True, False]


def test_the_bottom_quantile_exploits_the_top_as_rays_pbt_cuts_them():
    p = population(size=4, quantile=0.25)
    for i, t in enumerate("abcd"):
        p.add(t, config(lr=1e-3 * (i + 1)))
    assert p.quantiles() == ([], [])  # nobody ranked yet
    reported(p, "a", 2, 0.9)
    assert p.decide("a") is None  # alone: nobody to exploit
    for t, score in zip("bcd", (0.5, 0.7, 0.8)):
        reported(p, t, 2, score)
    assert p.quantiles() == (["b"], ["a"])  # ceil(4 x 0.25) = 1 each
    assert p.decide("c") is None  # in the middle: goes on
    exploit = p.decide("b")
    assert (exploit.trial, exploit.donor, exploit.epoch, exploit.checkpoint) == ("b", "a", 2, "ckpt/a/2")
    assert exploit.generation == 1 and exploit.config["width"] == 64  # the donor's model, never mutated
    assert exploit.config["learning_rate"] in (pytest.approx(0.8e-3), pytest.approx(1.2e-3))
    assert set(exploit.changes) <= {"learning_rate", "batch_size"}
    p.apply(exploit)
    member = p.members["b"]
    assert (member.generation, member.epoch, member.checkpoint, member.score) == (1, 2, None, None)
    assert p.quantiles() == (["c"], ["a"])  # b is ranked again at its next perturbation point
    assert [reported(p, "b", e, 0.95) for e in (3, 4)] == [False, True]
    # At most half in each quantile; finished members are not ranked (nor copied).
    q = population(size=2, quantile=0.5)
    q.add("a", config()), q.add("b", config())
    reported(q, "a", 2, 0.9), reported(q, "b", 2, 0.1)
    assert q.quantiles() == (["b"], ["a"])
    q.end("a")
    assert q.quantiles() == ([], []) and q.decide("b") is None


def test_a_donor_needs_a_checkpoint_before_the_budget():
    p = population(size=2, quantile=0.5, max_t=10)
    p.add("a", config()), p.add("b", config())
    p.report("a", 2, 0.9, None)  # no checkpoint known
    reported(p, "b", 2, 0.1)
    assert p.decide("b") is None


def test_decisions_are_seeded_and_survive_a_save_and_load_through_json():
    def run(p, steps):
        out = []
        for epoch, t, score in steps:
            if reported(p, t, epoch, score) and (e := p.decide(t)):
                p.apply(e)
                out.append((e.trial, e.donor, e.epoch, json.dumps(e.config, sort_keys=True)))
        return out

    steps = [(e, t, s + e / 100) for e in (2, 4, 6) for t, s in zip("abcdef", (0.9, 0.1, 0.5, 0.8, 0.2, 0.7))]
    whole = population(size=6, quantile=0.34, resample=0.3, seed=3)
    split = population(size=6, quantile=0.34, resample=0.3, seed=3)
    for p in (whole, split):
        for t in "abcdef":
            p.add(t, config())
    expected = run(whole, steps)
    assert expected and expected != run(population(size=6, quantile=0.34, resample=0.3, seed=4), [])
    first = run(split, steps[:8])
    restored = population(size=6, quantile=0.34, resample=0.3, seed=99)
    restored.load(json.loads(json.dumps(split.state())))
    assert first + run(restored, steps[8:]) == expected


# --- lineage -------------------------------------------------------------------------------


def exploit(p, trial, donor, lr):
    member = p.members[donor]
    e = pop.Exploit(trial, donor, member.epoch, member.checkpoint, p.members[trial].generation + 1,
                    {**member.config, "learning_rate": lr}, {})
    p.apply(e)


def test_the_schedule_follows_each_exploit_back_to_the_generation_copied():
    p = population(size=3, max_t=10)
    p.add("a", config(lr=1e-3)), p.add("b", config(lr=2e-3)), p.add("c", config(lr=3e-3))
    reported(p, "c", 2, 0.9)
    exploit(p, "a", "c", 4e-3)  # a continues c's epoch 2
    reported(p, "a", 4, 0.9)
    reported(p, "c", 4, 0.1)
    exploit(p, "c", "b", 5e-3)  # later c copies b: a's past still runs through c's first generation
    reported(p, "a", 6, 0.9)
    exploit(p, "b", "a", 6e-3)  # b continues a's epoch 6
    schedule_b = p.schedule("b")
    assert [(s["epoch"], s["trial"], s["config"]["learning_rate"]) for s in schedule_b] == [
        (0, "c", 3e-3), (2, "a", 4e-3), (6, "b", 6e-3)]
    assert [s["generation"] for s in p.lineage("c")] == [0, 1]
    assert p.lineage("b")[1] == {"generation": 1, "start_epoch": 6, "from_trial": "a", "from_generation": 1,
                                 "exploited_at_epoch": 0, "config": config(lr=6e-3)}
    assert p.schedule("b", generation=0) == [{"epoch": 0, "trial": "b", "config": config(lr=2e-3)}]
    assert pop.replay_schedule(schedule_b, ["learning_rate", "batch_size"]) == [
        {"epoch": 2, "learning_rate": 4e-3}, {"epoch": 6, "learning_rate": 6e-3}]


def test_runs_and_generations():
    assert pop.run_name("abc") == "abc" and pop.run_name("abc", 2) == "abc-g2"
    assert pop.generation_of({"x": 1}) == 0 and pop.generation_of({pop.GENERATION_KEY: 3}) == 3
    assert pop.hyperparameters({"x": 1, pop.GENERATION_KEY: 3}) == {"x": 1}


def test_a_hyperparameter_schedule_cuts_the_epochs_into_stretches():
    params = {"learning_rate": 1e-3, "batch_size": 32, "optimizer": "adam", "momentum": None}
    assert schedule.stretches(params, None, 5) == [schedule.Stretch(0, 5, params)]
    parts = schedule.stretches(params, [{"epoch": 2, "learning_rate": 2e-3, "momentum": 0.9},
                                        {"epoch": 4, "batch_size": 64}, {"epoch": 9, "batch_size": 8}], 5)
    assert [(s.start, s.end, s.params["learning_rate"], s.params["batch_size"]) for s in parts] == [
        (0, 2, 1e-3, 32), (2, 4, 2e-3, 32), (4, 5, 2e-3, 64)]
    assert all(s.params["momentum"] is None for s in parts)  # adam: momentum stays unused
    assert schedule.stretch_at(parts, 0).start == 0 and schedule.stretch_at(parts, 3).start == 2
    assert schedule.stretch_at(parts, 5).start == 4


# --- the Tune scheduler over checkpoint folders ------------------------------------------------


class Trial:
    def __init__(self, trial_id):
        self.trial_id, self.status, self.config = trial_id, "PENDING", config(lr=1e-3 * (1 + int(trial_id[1:])))

    def set_config(self, config):
        self.config = config


class Loop:
    """Tune's part, as much as the scheduler sees: at every step the scheduler's choice is
    staged (PENDING), and PENDING trials start their drivers where there is room (locally
    as many as the trial slots; on a cluster, room for every driver); the first ``slots``
    drivers hold trial slots (``resume.Slots``) and train, an epoch per step, storing a
    checkpoint folder (as Ray Train does) before they report it."""

    def __init__(self, scheduler, runs: Path, scores, slots=1, cluster=False):
        self.scheduler, self.runs, self.scores, self.slots, self.cluster = scheduler, runs, scores, slots, cluster
        self.trials, self.epochs, self.log, self.holders = [], {}, [], []
        self.most_running = 0  # drivers started at once

    def get_trials(self):
        return self.trials

    @property
    def search_alg(self):
        return self

    def is_finished(self):
        return len(self.trials) >= len(self.scores)

    def step(self):
        live = [t for t in self.trials if t.status != "TERMINATED"]
        while len(self.trials) < len(self.scores) and len(live) < self.slots + self.scheduler.waiting():
            trial = Trial(f"t{len(self.trials)}")
            self.scheduler.on_trial_add(self, trial)
            self.trials.append(trial)
            live.append(trial)
        chosen = self.scheduler.choose_trial_to_run(self)
        if chosen is not None:
            chosen.status = "PENDING"
        for trial in self.trials:
            running = sum(t.status == "RUNNING" for t in self.trials)
            if trial.status == "PENDING" and (self.cluster or running < self.slots):
                trial.status = "RUNNING"
                self.epochs[trial.trial_id] = self.scheduler.population.progress(trial.trial_id)
        self.most_running = max(self.most_running, sum(t.status == "RUNNING" for t in self.trials))
        self.holders = [t for t in self.holders if t.status == "RUNNING"]
        self.holders += [t for t in self.trials if t.status == "RUNNING" and t not in self.holders]
        slot_holders = self.holders[:self.slots]
        if not slot_holders:
            return any(t.status != "TERMINATED" for t in self.trials)
        trial = slot_holders[0]
        epoch = self.epochs[trial.trial_id] = self.epochs[trial.trial_id] + 1
        generation = pop.generation_of(trial.config)
        folder = self.runs / pop.run_name(trial.trial_id, generation) / checkpoints.checkpoint_dir_name(epoch)
        folder.mkdir(parents=True)
        (folder / checkpoints.MODEL_FILE).write_bytes(f"{trial.trial_id} {epoch}".encode())
        score = self.scores[int(trial.trial_id[1:])] + epoch / 100
        (folder / checkpoints.STATE_FILE).write_text(json.dumps({"epoch": epoch, "metrics": {"epoch": epoch}}))
        decision = self.scheduler.on_trial_result(self, trial, {"epoch": epoch, "val_accuracy": score,
                                                                 "generation": generation,
                                                                 "checkpoint_path": str(folder)})
        self.log.append((trial.trial_id, epoch, decision))
        if decision == "PAUSE":
            trial.status = "PAUSED"
        elif epoch >= 6:
            self.scheduler.on_trial_complete(self, trial, {})
            trial.status = "TERMINATED"
        return True

    def run(self):
        for _ in range(1000):
            if not self.step():
                return


def scheduler_for(tmp_path, size, slots=1, **over):
    from tuner import schedulers

    spec = load_spec("quick", ["scheduler.kind=pbt", "asha.max_t=6", "pbt.interval=2", f"search.num_samples={size}",
                               "pbt.quantile=0.5", *[f"{k}={v}" for k, v in over.items()]])
    scheduler = schedulers.scheduler_for(spec, True, "epoch", Location(str(tmp_path / "runs")))
    scheduler.set_search_properties("val_accuracy", "max")
    scheduler.max_concurrent = slots
    return scheduler


@pytest.mark.parametrize("slots, cluster", [(1, False), (3, False), (1, True)])
def test_the_population_takes_turns_and_the_worse_half_continues_from_copied_checkpoints(tmp_path, slots, cluster):
    scheduler = scheduler_for(tmp_path, 4, slots)
    loop = Loop(scheduler, tmp_path / "runs", [0.9, 0.1, 0.8, 0.2], slots, cluster)
    loop.run()
    # Never more drivers than slots, even where the cluster has room for every driver.
    assert loop.most_running == slots
    assert all(t.status == "TERMINATED" for t in loop.trials) and len(loop.trials) == 4
    assert {t.trial_id: loop.epochs[t.trial_id] for t in loop.trials} == {f"t{i}": 6 for i in range(4)}
    if slots == 1:  # least progress first: everyone reaches epoch 2 before anyone goes past it
        first = [(t, e) for t, e, _ in loop.log[:8]]
        assert sorted(first) == [(f"t{i}", e) for i in range(4) for e in (1, 2)]
    exploited = {t.trial_id: t for t in loop.trials if pop.generation_of(t.config)}
    assert exploited  # the worse trials copied the better ones
    for trial_id, trial in exploited.items():
        for segment in scheduler.population.lineage(trial_id)[1:]:
            folder = (tmp_path / "runs" / pop.run_name(trial_id, segment["generation"])
                      / checkpoints.checkpoint_dir_name(segment["start_epoch"]))
            donor = (tmp_path / "runs" / pop.run_name(segment["from_trial"], segment["from_generation"])
                     / checkpoints.checkpoint_dir_name(segment["start_epoch"]))
            assert (folder / checkpoints.MODEL_FILE).read_bytes() == (donor / checkpoints.MODEL_FILE).read_bytes()
            state = json.loads((folder / checkpoints.STATE_FILE).read_text())
            assert state["copied_from"] == {"trial": segment["from_trial"], "epoch": segment["start_epoch"],
                                            "path": str(donor)}
            run = Location(str(folder.parent))
            # The copy restores the member, but is never reported as its own epoch.
            assert segment["start_epoch"] in checkpoints.stored_epochs(run)
            assert checkpoints.stored_records(run, [segment["start_epoch"]]) == {}
    # Its saved state comes back whole (Keeper pickles it with the experiment).
    again = pickle.loads(pickle.dumps(scheduler))
    again.load(json.loads(json.dumps(scheduler.state())))
    assert again.population.state() == scheduler.population.state()
    assert again.runs == Location(str(tmp_path / "runs"))
    # One pickled by a tuner before storage.Location keeps its runs folder and endpoint.
    old = scheduler.__getstate__()
    del old["runs"]
    old.update(runs_uri="s3://b/exp/runs", endpoint="http://s3:9")
    again.__setstate__(old)
    assert again.runs == Location("s3://b/exp/runs", "http://s3:9")


def test_a_member_goes_on_while_a_slot_is_free(tmp_path):
    scheduler = scheduler_for(tmp_path, 2, slots=2)
    loop = Loop(scheduler, tmp_path / "runs", [0.9, 0.8], slots=2)
    loop.run()
    assert [d for _, _, d in loop.log].count("PAUSE") == 0  # nobody waits, nobody exploits (0.9 vs 0.8: a tie-free pair)
    assert all(loop.epochs[t.trial_id] == 6 for t in loop.trials)


def test_a_copy_that_fails_leaves_the_member_as_it_is(tmp_path, caplog):
    scheduler = scheduler_for(tmp_path, 2, slots=2)
    scheduler.population.add("a", config()), scheduler.population.add("b", config())
    scheduler.population.report("a", 2, 0.9, str(tmp_path / "gone"))
    scheduler.population.report("b", 2, 0.1, str(tmp_path / "b2"))
    exploit = scheduler.population.decide("b")
    assert exploit.donor == "a" and scheduler._copy(exploit) is False
    assert "could not copy trial a's checkpoint" in caplog.text


def test_pb2_chooses_within_the_ranges_learns_from_every_member_and_falls_back_to_pbt():
    pytest.importorskip("sklearn")
    from tuner.schedulers import PB2Explorer

    space = {**SPACE, "batch_size": Dim("fixed", (64,), int)}
    explorer = PB2Explorer(space, ["learning_rate", "momentum"], 0.0)
    p = pop.Population(space, 4, 1, 0.25, 0.0, ["learning_rate", "momentum"], 10, seed=0, explorer=explorer)
    rng = random.Random(0)
    members = {"a": "sgd", "b": "sgd", "c": "adam", "d": "sgd"}
    for t, optimizer in members.items():
        p.add(t, {**config(lr=10 ** rng.uniform(-4, -2)), "optimizer": optimizer,
                  "momentum": rng.uniform(0.5, 0.99) if optimizer == "sgd" else None})
    for epoch in range(1, 5):
        for t in members:
            p.report(t, epoch, 0.5 + epoch / 10 + rng.random() / 20, f"ckpt/{t}/{epoch}")
    assert all("momentum" in r for r in explorer.rows) and len(explorer.rows) == 16
    sgd = explorer(p, "b", "a")  # learning rate and momentum by the GP bandit
    assert 1e-4 <= sgd["learning_rate"] <= 1e-2 and 0.5 <= sgd["momentum"] <= 0.99
    assert len(explorer.rows) == 17 and all("momentum" in r for r in explorer.rows)
    adam = explorer(p, "d", "c")  # momentum does not count for adam: the learning rate alone
    assert adam["momentum"] is None and 1e-4 <= adam["learning_rate"] <= 1e-2
    assert all("momentum" in r for r in explorer.rows)
    # Its records go with the population's saved state.
    again = PB2Explorer(space, ["learning_rate", "momentum"], 0.0)
    again.load(json.loads(json.dumps(explorer.state())))
    assert again.rows == explorer.rows
    # Nothing of the donor's configuration to learn from: PBT's explore.
    fresh = PB2Explorer(space, ["learning_rate"], 0.0)
    q = pop.Population(space, 2, 1, 0.5, 0.0, ["learning_rate"], 10, explorer=fresh)
    q.add("a", config()), q.add("b", config())
    assert round(fresh(q, "b", "a")["learning_rate"], 12) in (8e-4, 1.2e-3)
