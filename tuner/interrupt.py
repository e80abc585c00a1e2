"""Stopping a run by signal, resumably: SIGINT (Ctrl-C) and SIGTERM (what Kubernetes sends
on pod deletion, ``ray job stop`` and ``timeout``).

The first signal while Ray Tune runs asks Tune to stop: it stops stepping, saves the
experiment state once more and stops the trials (every one of them keeps its newest
checkpoint in storage). ``tuner`` then writes no summary, so the same command resumes the
experiment, prints one line saying so and exits with 128 + the signal's number (130, 143).
Anywhere else, and on a second signal, the run stops at once: ``Interrupted`` is raised in
the main thread. That is as resumable: Tune saves its state every 2 s while it runs, and
nothing but the final summary marks an experiment finished.

Tune's own SIGINT handler is turned off (``TUNE_DISABLE_SIGINT_HANDLER``): it would print
a hint at a Python API (``Tuner.restore``) and let the run end as if it had finished.
Tune still stops on SIGUSR1, through a handler it installs when its loop starts; that
handler is what the first signal calls.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import sys

SIGNALS = (signal.SIGINT, signal.SIGTERM)
TUNE_SIGINT_SETTING = "TUNE_DISABLE_SIGINT_HANDLER"
# Tune's own lines on a stop, which point at its Python API instead of the command.
TUNE_HINTS = ("Stop signal received", "has been interrupted, but the most recent state was saved")


class _DropTuneHints(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(h in record.getMessage() for h in TUNE_HINTS)


class Interrupted(KeyboardInterrupt):
    """The run stops now because of signal ``signum``. A KeyboardInterrupt: no ``except
    Exception`` on the way out swallows it, and Ray's C++ calls, which check for
    signals while they wait, turn any other exception raised by a handler into a
    SystemError (and this one into a plain KeyboardInterrupt: ``StopOnSignal.signum``
    still tells which signal it was)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopOnSignal:
    """Installed for a ``tuner tune`` or ``tuner train`` run (main thread only)."""

    def __init__(self):
        self.signum: int | None = None
        self._in_tune = False
        self._previous: dict = {}

    def __enter__(self) -> "StopOnSignal":
        self._tune_setting = os.environ.get(TUNE_SIGINT_SETTING)
        os.environ[TUNE_SIGINT_SETTING] = "1"
        self._previous = {s: signal.getsignal(s) for s in SIGNALS}
        self.install()
        return self

    def install(self) -> None:
        """(Re)install the handlers: ``ray.init`` replaces SIGTERM's with ``sys.exit``
        (and Ray's C++ core its own that logs a stack), so call this after it too."""
        for s in SIGNALS:
            signal.signal(s, self._handle)

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            # Stopped by a signal: the process is on its way out with 128 + that signal's
            # number. Another signal during the exit (Ray's shutdown) ends it at once, with
            # the same code, rather than by the default action (killed by the signal).
            signal.signal(s, handler if self.signum is None else self._exit_now)
        if self._tune_setting is None:
            os.environ.pop(TUNE_SIGINT_SETTING, None)
        else:
            os.environ[TUNE_SIGINT_SETTING] = self._tune_setting

    @contextlib.contextmanager
    def tune_running(self):
        """Around ``Tuner.fit()``: a first signal in here stops Tune gracefully."""
        if hasattr(signal, "SIGUSR1"):
            signal.signal(signal.SIGUSR1, signal.SIG_DFL)  # Tune installs its own once its loop starts
        self._in_tune = True
        tune_log, hints = logging.getLogger("ray.tune.tune"), _DropTuneHints()
        tune_log.addFilter(hints)
        try:
            yield
        finally:
            self._in_tune = False
            tune_log.removeFilter(hints)
        self.raise_if_stopped()

    def raise_if_stopped(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)

    def _exit_now(self, signum: int, frame) -> None:
        os._exit(128 + (self.signum or signum))

    def _handle(self, signum: int, frame) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        tune_stop = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
        if first and self._in_tune and callable(tune_stop):
            # os.write: a print here could re-enter a write the signal interrupted.
            os.write(2, f"tuner: {signal.Signals(signum).name} received: stopping the trials and saving the "
                        "experiment state (send it again to stop at once).\n".encode())
            tune_stop(signum, frame)
            return
        raise Interrupted(self.signum or signum)


def resume_command(argv: list[str]) -> str:
    """The command that ran this process, as a user would type it again."""
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "tuner"
    if program in ("__main__.py", "-c", "") or program.startswith("python"):
        program = f"{os.path.basename(sys.executable)} -m tuner"
    return " ".join([program, *(shlex.quote(a) for a in argv)])
