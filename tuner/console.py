"""What ``tuner tune`` and ``tuner train`` print while Tune runs: one line per trial event
and a progress line, for a person reading a terminal or a log.

Ray Tune's own reporter (``RunConfig(verbose=...)``) prints a table of every trial, over
and over (verbose 1), or each result as a multi-line table (verbose 2); neither has a line
per event. ``Console`` is a Tune callback that prints:

- ``trial <id> started: <hyperparameters>``;
- ``trial <id> epoch N: <metric> V`` (with ``promoted past rung R`` at an ASHA rung);
- ``trial <id> exploits <id> at epoch E: learning_rate 1.2e-03 -> 9.6e-04`` (PBT: it
  continues from the other's checkpoint of epoch E with the explored hyperparameters;
  ``a -> b``: the copied trial's value and the explored one);
- ``trial <id> resumed from epoch E`` (a restarted worker group, or a resumed experiment);
- ``trial <id> finished`` / ``stopped by <scheduler> at epoch E`` / ``failed: <reason>``;
- a progress line: trials running, finished, stopped and failed, epochs spent of the
  full budget, the best so far, elapsed time. On a terminal it is redrawn in place; in a
  log (CI, ``kubectl logs``, ``ray job logs``) it is a plain line after each trial's end
  and at most once a minute otherwise.

Everything it shows comes from Tune's trial objects (status, last result, metric
analysis), which a resumed experiment restores: nothing of its own needs saving.
"""

from __future__ import annotations

import math
import os
import sys
import time

from ray import tune

LEVELS = ("quiet", "normal", "verbose")
LOG_PROGRESS_SECONDS = 60  # in a log: a progress line at most this often between trial ends
TTY_PROGRESS_SECONDS = 1.0  # on a terminal: redraws at most this often


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


def value(v) -> str:
    """A hyperparameter or metric, short: 0.00123 -> 1.23e-03, 0.25 -> 0.25."""
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e5):
            return f"{v:.2e}"
        return f"{v:.4g}"
    return str(v)


def reason(error_text: str | None) -> str:
    """The one line that says what went wrong: the last non-empty line of a traceback."""
    lines = [line.strip() for line in (error_text or "").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "unknown error (see the trial's error.txt)"


class Console(tune.Callback):
    """Prints trial events and progress (see the module's docstring).

    Args:
        level: ``quiet`` (failures only; the CLI prints the final result), ``normal`` or
            ``verbose`` (the same lines; Tune's and the libraries' own output are on too).
        metric, mode: the objective.
        max_t: the epoch budget of one trial.
        budget: epochs of the whole experiment if no trial stopped early.
        scheduler: the spec's ``scheduler.kind``.
        rungs: ASHA's milestones in epochs, for ``asha`` and ``asha_promote``; else empty.
        searched: the hyperparameters the search varies (printed at a trial's start).
        waits_at_rungs: ``asha_promote``: a trial that reaches a rung waits there, paused,
            until it is promoted (else ASHA decides at once).
        experiment_uri: where the experiment is stored (a failed trial's ``error.txt``
            is in its trial folder there).
        population: with PBT, the run's ``schedulers.PopulationScheduler`` (its exploits
            are printed; members pause between perturbation points to share the slots).
    """

    def __init__(self, level: str, metric: str, mode: str, max_t: int, budget: int, scheduler: str,
                 rungs: list[int], searched: list[str], waits_at_rungs: bool = False, experiment_uri: str = "",
                 population=None):
        self.level = level
        self.metric, self.mode = metric, mode
        self.max_t, self.budget = max_t, budget
        self.scheduler = scheduler
        self.rungs = list(rungs)
        self.searched = list(searched)
        self.waits_at_rungs = waits_at_rungs
        self.experiment_uri = experiment_uri
        self.population = population
        self._fresh()

    def _fresh(self) -> None:
        self._started_at = time.time()
        self._seen: dict[str, int | None] = {}  # trial id -> the resumed_from_epoch last seen
        self._last_progress = self._last_counted = self._started_at
        self._progress_shown: str | None = None
        self._redrawn = False

    def __getstate__(self) -> dict:  # Tune pickles its callbacks with the experiment
        state = dict(self.__dict__)
        for k in ("_started_at", "_seen", "_last_progress", "_last_counted", "_progress_shown", "_redrawn"):
            state.pop(k, None)
        state["population"] = None  # the scheduler: the run that restores it hands it over again
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._fresh()

    # --- output -------------------------------------------------------------------------

    @property
    def _tty(self) -> bool:
        return sys.stdout.isatty()

    def _line(self, text: str, always: bool = False) -> None:
        if self.level == "quiet" and not always:
            return
        if self._redrawn:  # clear the progress line drawn in place
            sys.stdout.write("\r\x1b[K")
            self._redrawn = False
        stamp = duration(time.time() - self._started_at)
        print(f"[{stamp:>6}] {text}", flush=True)

    def _progress(self, trials: list, force: bool = False, ending=None) -> None:
        if self.level == "quiet":
            return
        now = time.time()
        text = self.progress(trials, now - self._started_at, ending)
        if self._tty:
            if force or now - self._last_progress >= TTY_PROGRESS_SECONDS:
                sys.stdout.write(f"\r\x1b[K{text}")
                sys.stdout.flush()
                self._redrawn, self._last_progress = True, now
            return
        counts = text.rsplit("|", 1)[0]  # without the elapsed time
        if (force and counts != self._progress_shown) or (
                counts != self._progress_shown and now - self._last_progress >= LOG_PROGRESS_SECONDS):
            print(text, flush=True)
            self._progress_shown, self._last_progress = counts, now

    def progress(self, trials: list, elapsed: float, ending=None) -> str:
        """``trials: 2 running, 1 finished, 3 stopped, 0 failed | epochs 9 of 24 | best
        val_accuracy 0.9712 (trial ab_00001) | 1m20s``. ``ending``: (trial, status) of a
        trial that ends now (Tune sets its status after calling the callbacks)."""
        running = finished = stopped = failed = pending = waiting = 0
        epochs = 0
        best, best_id = None, None
        pick = max if self.mode == "max" else min
        for t in trials:
            last = t.last_result or {}
            epochs += int(last.get("epoch") or 0)
            status = ending[1] if ending and t is ending[0] else t.status
            if status == "ERROR":
                failed += 1
            elif status == "TERMINATED":
                if int(last.get("epoch") or 0) >= self.max_t:
                    finished += 1
                else:
                    stopped += 1
            elif status == "RUNNING":
                running += 1
            elif status == "PAUSED":  # at a rung until promoted, or a PBT member between its turns
                waiting += 1
            else:
                pending += 1
            score = t.metric_analysis.get(self.metric, {}).get(self.mode)
            if score is not None and not math.isnan(score) and (best is None or pick(best, score) != best):
                best, best_id = score, t.trial_id
        paused = "paused" if getattr(self, "population", None) is not None else "waiting at a rung"
        parts = [f"trials: {running} running, {finished} finished, {stopped} stopped, {failed} failed"
                 + (f", {waiting} {paused}" if waiting else "") + (f", {pending} pending" if pending else ""),
                 f"epochs {epochs} of {self.budget}"]
        if best is not None:
            parts.append(f"best {self.metric} {value(best)} (trial {best_id})")
        parts.append(duration(elapsed))
        return " | ".join(parts)

    # --- Tune's hooks -------------------------------------------------------------------

    def on_trial_start(self, iteration, trials, trial, **info):
        population = getattr(self, "population", None)
        if trial.trial_id in self._seen and population is not None:  # a PBT member's next turn
            epoch = population.population.progress(trial.trial_id)
            self._seen[trial.trial_id] = epoch or None  # its workers resume from there
            self._line(f"trial {trial.trial_id} continues from epoch {epoch}")
            return
        if trial.trial_id in self._seen:  # a trial paused at a rung was promoted (asha_promote)
            epoch = (trial.last_result or {}).get("epoch")
            self._line(f"trial {trial.trial_id} promoted past rung {epoch}, continues" if epoch
                       else f"trial {trial.trial_id} continues")
            return
        self._seen[trial.trial_id] = None
        config = trial.config or {}
        # A conditional hyperparameter that does not count in this trial (None) is left out.
        params = " ".join(f"{k}={value(config[k])}" for k in self.searched if config.get(k) is not None)
        self._line(f"trial {trial.trial_id} started: {params}" if params else f"trial {trial.trial_id} started")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        epoch = result.get("epoch")
        if epoch is None:
            return
        replayed = result.get("replayed")
        resumed = result.get("resumed_from_epoch")
        if not replayed:
            if resumed and resumed != self._seen.get(trial.trial_id):
                self._line(f"trial {trial.trial_id} resumed from epoch {resumed}")
            self._seen[trial.trial_id] = resumed
        score = result.get(self.metric)
        text = f"trial {trial.trial_id} epoch {epoch}: {self.metric} {value(score)}"
        if epoch in self.rungs and not result.get("done") and epoch < self.max_t:
            text += f", waits at rung {epoch}" if self.waits_at_rungs else f", promoted past rung {epoch}"
        # A stored epoch whose first report never reached this driver (a stop, or a worker
        # group that died, in between), reported again from its checkpoint.
        self._line(text + " (from its checkpoint; its first report was lost)" if replayed else text)
        population = getattr(self, "population", None)
        exploit = population.exploits.pop(trial.trial_id, None) if population is not None else None
        if exploit is not None:
            changes = ", ".join(f"{k} {value(a)} -> {value(b)}" for k, (a, b) in exploit.changes.items())
            self._line(f"trial {trial.trial_id} exploits {exploit.donor} at epoch {exploit.epoch}: "
                       + (changes or "the same hyperparameters"))
        # No progress line here: Tune records the result in the trial after its callbacks.

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        epoch = int(last.get("epoch") or 0)
        best = trial.metric_analysis.get(self.metric, {}).get(self.mode)
        tail = f", best {self.metric} {value(best)}" if best is not None else ""
        if epoch >= self.max_t:
            self._line(f"trial {trial.trial_id} finished {epoch} epochs{tail}")
        else:
            self._line(f"trial {trial.trial_id} stopped by {self.scheduler} at epoch {epoch}{tail}")
        self._progress(trials, force=True, ending=(trial, "TERMINATED"))

    def on_trial_error(self, iteration, trials, trial, **info):
        text = None
        if trial.error_file:
            try:
                with open(trial.error_file) as f:
                    text = f.read()
            except OSError:
                pass
        self._line(f"trial {trial.trial_id} failed: {reason(text)}", always=True)
        if self.level != "quiet" and text:
            # Where the experiment is stored: the driver's own copy may be in a pod.
            where = "/".join([self.experiment_uri.rstrip("/"), os.path.basename(trial.local_path),
                              os.path.basename(trial.error_file)]) if self.experiment_uri else trial.error_file
            print(f"         (traceback: {where})", flush=True)
        self._progress(trials, force=True, ending=(trial, "ERROR"))

    def on_step_end(self, iteration, trials, **info):
        # A progress line counts every trial, and Tune steps many times a second: counted
        # once a second at most (each step would make a run's counting grow with the
        # square of its trials), and in a log only once a line may be due.
        now = time.time()
        due = TTY_PROGRESS_SECONDS if self._tty else LOG_PROGRESS_SECONDS
        if now - self._last_counted < TTY_PROGRESS_SECONDS or now - self._last_progress < due:
            return
        self._last_counted = now
        self._progress(trials)

    def on_experiment_end(self, trials, **info):
        if self.level == "quiet":
            return
        if self._redrawn:
            sys.stdout.write("\n")
            self._redrawn = False
        text = self.progress(trials, time.time() - self._started_at)
        if text.rsplit("|", 1)[0] != self._progress_shown:
            print(text, flush=True)
