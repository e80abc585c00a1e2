"""Population-based training: the pure core (no Ray, no TensorFlow, no storage).

PBT (Jaderberg et al. 2017, https://arxiv.org/abs/1711.09846) trains a population of
``size`` members at once. Every ``interval`` epochs a member reaches a perturbation
point: it is ranked by its objective there against the other members' latest scores;
if it is in the bottom ``quantile`` it **exploits** a member of the top ``quantile``
(it continues from that member's newest checkpoint: weights, optimizer state and
epoch) with **explored** hyperparameters (each mutable one resampled from the space
with ``resample_probability``, else multiplied by 0.8 or 1.2 within its range, or moved
to a neighbouring choice). PB2 (Parker-Holder et al. 2020,
https://arxiv.org/abs/2002.02518) chooses the explored numeric values by a GP bandit
instead (``tuner.schedulers.PB2Explorer``); this module takes any explorer.

The ranking follows Ray Tune's ``PopulationBasedTraining``: a member's score is the one
at its latest perturbation point, members that finished the budget are not ranked, and
with fewer than two ranked members nobody exploits.

Each stretch of a member's training with one configuration is a ``Segment`` (a
generation); an exploit starts the member's next generation from its donor's
checkpoint, in a Train run of its own (``run_name``), so a generation's checkpoints
never mix with an earlier one's. The chain of generations through the donors is the
best model's **schedule** of hyperparameters (``Population.schedule``), which
``tuner train`` can replay from scratch.

Only training knobs that the checkpoint allows to change are mutable (``MUTABLE``):
model hyperparameters shape the weights that are copied, the optimizer's kind its
state, the schedule's kind which knobs count. They stay those of the member copied.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

from tuner.space import KNOBS, Dim, searched, value_at

# In a trial's config from its first exploit on: its generation (0, the first, is absent).
GENERATION_KEY = "pbt_generation"
# Training knobs a member may change when it continues another's checkpoint.
MUTABLE = ("learning_rate", "decay_epochs", "decay_rate", "momentum", "batch_size")
PERTURB_FACTORS = (0.8, 1.2)


def run_name(trial_id: str, generation: int = 0) -> str:
    """The Train run (``runs/<name>/``) that holds a generation's checkpoints."""
    return trial_id if not generation else f"{trial_id}-g{generation}"


def hyperparameters(config: Mapping[str, Any]) -> dict:
    """A trial config without the population's bookkeeping."""
    return {k: v for k, v in config.items() if k != GENERATION_KEY}


def generation_of(config: Mapping[str, Any] | None) -> int:
    return int((config or {}).get(GENERATION_KEY) or 0)


def mutated(space: Mapping[str, Dim], mutate: list[str] | None) -> list[str]:
    """The hyperparameters a population changes: ``mutate``, or every searched one of
    ``MUTABLE``."""
    if mutate is not None:
        return list(mutate)
    return [n for n in searched(space) if n in MUTABLE]


def check_mutate(space: Mapping[str, Dim], mutate: list[str] | None, key: str = "pbt.mutate") -> list[str]:
    """Problems with what a population would change: one line each, naming it and the fix."""
    p = []
    for name in mutate or []:
        if name not in KNOBS:
            p.append(f"`{key}` names `{name}`, a model hyperparameter: it shapes the weights a member copies from "
                     "another, so it cannot change mid-training (it stays that of the member copied); remove it "
                     f"(mutable: {', '.join(MUTABLE)}).")
        elif name not in MUTABLE:
            why = {"optimizer": "the checkpoint holds that optimizer's state",
                   "schedule": "the schedule's kind decides which knobs count; mutate its numbers (decay_epochs, "
                               "decay_rate)",
                   "staircase": "it switches the schedule's shape"}.get(name, "it cannot change mid-training")
            p.append(f"`{key}` names `{name}`, which a member cannot change when it continues another's checkpoint "
                     f"({why}); mutable: {', '.join(MUTABLE)}.")
        elif space[name].is_fixed:
            p.append(f"`{key}` names `{name}`, which is fixed in `search.space`; give it a range or choices, or "
                     "remove it.")
    if mutate is not None and len(set(mutate)) != len(mutate):
        p.append(f"`{key}` names a hyperparameter twice.")
    if not p and not mutated(space, mutate):
        p.append(f"Population-based training changes hyperparameters as it trains, but nothing is mutable: give "
                 f"`search.space` a range or choices for one of {', '.join(MUTABLE)} (or list them in `{key}`).")
    return p


def perturb(dim: Dim, value: Any, rng: random.Random, resample_probability: float) -> Any:
    """PBT's explore step for one hyperparameter: resampled from ``dim`` with
    ``resample_probability`` (or when ``value`` is not among its choices), else a range's
    value times 0.8 or 1.2, kept within the range, or a choice's neighbour."""
    if dim.is_fixed or value is None:
        return value
    if dim.kind == "choice":
        values = list(dim.values)
        if value not in values or rng.random() < resample_probability:
            return values[rng.randrange(len(values))]
        i = values.index(value)
        neighbours = [j for j in (i - 1, i + 1) if 0 <= j < len(values)]
        return values[rng.choice(neighbours)] if neighbours else value
    if rng.random() < resample_probability:
        return value_at("", dim, rng.random())
    low, high = dim.values
    factor = rng.choice(PERTURB_FACTORS)
    new = min(max(value * factor, low), high)
    if dim.is_int:
        new = int(round(new))
        if new == value:  # a small whole number: move by one in the factor's direction
            new = value + (1 if factor > 1 else -1)
        new = int(min(max(new, low), high))
    return new


@dataclass
class Segment:
    """One generation of a member: a stretch of training with one configuration."""

    start: int  # the epoch its training starts from (0, or the copied checkpoint's)
    config: dict  # its hyperparameters
    parent: str | None = None  # the member whose checkpoint it continued (None: trained from scratch)
    parent_generation: int | None = None  # that member's generation when it was copied
    at: int | None = None  # this member's own epoch when it exploited


@dataclass
class Member:
    segments: list[Segment]
    epoch: int = 0  # the newest epoch reported
    checkpoint: str | None = None  # that epoch's checkpoint (None until the generation reports)
    score: float | None = None  # reward (higher is better) at its latest perturbation point
    last_perturbation: int = 0  # the epoch of its latest perturbation point (or copied checkpoint)
    done: bool = False

    @property
    def generation(self) -> int:
        return len(self.segments) - 1

    @property
    def config(self) -> dict:
        return self.segments[-1].config


@dataclass(frozen=True)
class Exploit:
    """A member's decision to continue another's checkpoint with explored hyperparameters."""

    trial: str
    donor: str
    epoch: int  # the donor's newest epoch: where the member continues from
    checkpoint: str  # the donor's checkpoint of that epoch
    generation: int  # the member's new generation
    config: dict  # its explored hyperparameters
    changes: dict  # name -> (the donor's value, the explored value), for those that differ


class Population:
    """The members, their scores and lineage; decides exploits and explores.

    Args:
        space: the search space (its dims bound what explore may choose).
        size: members (``search.num_samples``).
        interval: epochs between a member's perturbation points.
        quantile: the bottom and top fraction of the ranked members.
        resample_probability: explore resamples a hyperparameter with this probability.
        mutate: the hyperparameters explore changes (``mutated``).
        max_t: the epoch budget: no member exploits at or past it.
        seed: seeds the donor choice and the perturbations.
        explorer: ``(population, trial, donor) -> config`` that replaces PBT's
            perturbation (PB2); it may also implement ``observe(trial, epoch, config, reward)``
            for every perturbation point, and ``state()`` / ``load(state)``.
    """

    def __init__(self, space: Mapping[str, Dim], size: int, interval: int, quantile: float,
                 resample_probability: float, mutate: list[str] | None, max_t: int, seed: int = 0,
                 explorer: Callable | None = None):
        self.space = dict(space)
        self.size, self.interval, self.quantile = size, interval, quantile
        self.resample_probability = resample_probability
        self.mutate = mutated(self.space, mutate)
        self.max_t = max_t
        self.rng = random.Random(seed)
        self.explorer = explorer
        self.members: dict[str, Member] = {}

    # --- bookkeeping ------------------------------------------------------------------

    def add(self, trial_id: str, config: Mapping[str, Any]) -> None:
        """A member joins with its first configuration (a known one is left as it is)."""
        if trial_id not in self.members:
            self.members[trial_id] = Member([Segment(0, hyperparameters(config))])

    @property
    def complete(self) -> bool:
        return len(self.members) >= self.size

    def progress(self, trial_id: str) -> int:
        member = self.members.get(trial_id)
        return member.epoch if member else 0

    def report(self, trial_id: str, epoch: int, reward: float, checkpoint: str | None) -> bool:
        """A member reported ``epoch`` (``reward``: its objective, higher is better;
        ``checkpoint``: where that epoch is stored). True when the epoch is a perturbation
        point, whose score then counts in the ranking."""
        member = self.members[trial_id]
        member.epoch, member.checkpoint = epoch, checkpoint
        if epoch >= self.max_t or epoch // self.interval <= member.last_perturbation // self.interval:
            return False
        member.score = reward if math.isfinite(reward) else -math.inf
        member.last_perturbation = epoch
        if (observe := getattr(self.explorer, "observe", None)) is not None:
            observe(trial_id, epoch, member.config, member.score)
        return True

    def reconcile(self, trial_id: str, generation: int, config: Mapping[str, Any], epoch: int) -> None:
        """Match a member to its trial as a resumed run finds it (the trial's own saved
        configuration: ``generation``, ``config``; its newest ``epoch``): a generation the
        trial never reached is dropped, one the population never recorded is added
        without a donor."""
        member = self.members.get(trial_id)
        if member is None or member.generation == generation:
            return
        if member.generation > generation:
            del member.segments[generation + 1:]
            member.epoch, member.checkpoint, member.score = epoch, None, None
            member.last_perturbation = epoch
        else:
            while member.generation < generation:
                member.segments.append(Segment(member.epoch, hyperparameters(config)))

    def end(self, trial_id: str) -> None:
        if trial_id in self.members:
            self.members[trial_id].done = True

    # --- decisions --------------------------------------------------------------------

    def quantiles(self) -> tuple[list[str], list[str]]:
        """(bottom, top) of the ranked members, as Ray's PBT cuts them: ceil(n x quantile)
        each, at most half; none when fewer than two are ranked."""
        ranked = sorted((t for t, m in self.members.items() if m.score is not None and not m.done),
                        key=lambda t: (self.members[t].score, t))
        if len(ranked) < 2:
            return [], []
        n = min(math.ceil(len(ranked) * self.quantile), len(ranked) // 2)
        return ranked[:n], ranked[-n:]

    def decide(self, trial_id: str) -> Exploit | None:
        """The exploit of ``trial_id`` at its perturbation point, or None: it is in the
        bottom quantile and a top member has a checkpoint before the budget's end."""
        bottom, top = self.quantiles()
        if trial_id not in bottom:
            return None
        donors = [t for t in top if t != trial_id and self.members[t].checkpoint
                  and self.members[t].epoch < self.max_t]
        if not donors:
            return None
        donor_id = self.rng.choice(donors)
        donor = self.members[donor_id]
        config = self.explore(trial_id, donor_id)
        changes = {k: (donor.config.get(k), v) for k, v in config.items() if donor.config.get(k) != v}
        assert donor.checkpoint is not None  # donors have one
        return Exploit(trial_id, donor_id, donor.epoch, donor.checkpoint, self.members[trial_id].generation + 1,
                       config, changes)

    def explore(self, trial_id: str, donor_id: str) -> dict:
        """The donor's configuration with the mutable hyperparameters explored."""
        if self.explorer is not None:
            return self.explorer(self, trial_id, donor_id)
        config = dict(self.members[donor_id].config)
        for name in self.mutate:
            config[name] = perturb(self.space[name], config.get(name), self.rng, self.resample_probability)
        return config

    def apply(self, exploit: Exploit) -> None:
        """Record an exploit whose checkpoint is in place: the member's next generation
        starts from the donor's epoch."""
        member, donor = self.members[exploit.trial], self.members[exploit.donor]
        member.segments.append(Segment(exploit.epoch, dict(exploit.config), exploit.donor, donor.generation,
                                       member.epoch))
        member.epoch, member.checkpoint, member.score = exploit.epoch, None, None
        member.last_perturbation = exploit.epoch

    # --- lineage ----------------------------------------------------------------------

    def lineage(self, trial_id: str) -> list[dict]:
        """The member's generations: start epoch, where it came from, its hyperparameters."""
        return [{"generation": g, "start_epoch": s.start, "from_trial": s.parent,
                 "from_generation": s.parent_generation, "exploited_at_epoch": s.at, "config": dict(s.config)}
                for g, s in enumerate(self.members[trial_id].segments)]

    def schedule(self, trial_id: str, generation: int | None = None) -> list[dict]:
        """The hyperparameters that trained a generation's model from scratch, oldest
        first: ``{"epoch": the first epoch they trained (from 0), "trial": whose training
        it was, "config": ...}``, following each exploit back to the donor's generation
        that was copied."""
        out: list[dict] = []
        segments = self.members[trial_id].segments
        trial, g = trial_id, len(segments) - 1 if generation is None else min(generation, len(segments) - 1)
        while True:
            segment = self.members[trial].segments[min(g, len(self.members[trial].segments) - 1)]
            out.insert(0, {"epoch": segment.start, "trial": trial, "config": dict(segment.config)})
            if segment.parent is None or segment.parent not in self.members:
                return out
            trial, g = segment.parent, segment.parent_generation or 0

    # --- saved state ------------------------------------------------------------------

    def state(self) -> dict:
        members = {t: {**{k: v for k, v in asdict(m).items() if k != "segments"},
                       "segments": [asdict(s) for s in m.segments]} for t, m in self.members.items()}
        out = {"members": members, "rng": self.rng.getstate()}
        if (explorer_state := getattr(self.explorer, "state", None)) is not None:
            out["explorer"] = explorer_state()
        return out

    def load(self, state: dict) -> None:
        self.members = {t: Member(**{**{k: v for k, v in m.items() if k != "segments"},
                                     "segments": [Segment(**s) for s in m["segments"]]})
                        for t, m in state["members"].items()}
        rng = state.get("rng")
        if rng is not None:
            self.rng.setstate(_as_tuples(rng))
        if (load := getattr(self.explorer, "load", None)) is not None and state.get("explorer") is not None:
            load(state["explorer"])


def _as_tuples(value):
    """``random.Random.getstate()`` after a trip through JSON (lists for tuples)."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def replay_schedule(schedule: list[dict], names: list[str]) -> list[dict]:
    """A ``Population.schedule`` as ``training.hyperparameter_schedule`` entries: from
    the second generation on, ``{"epoch": E, name: value}`` for the ``names`` that change."""
    out, previous = [], schedule[0]["config"] if schedule else {}
    for step in schedule[1:]:
        changed = {n: step["config"].get(n) for n in names if step["config"].get(n) != previous.get(n)}
        if changed:
            out.append({"epoch": step["epoch"], **changed})
        previous = step["config"]
    return out

