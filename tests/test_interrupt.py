"""The signal contract of `tuner tune` / `tuner train`, with real signals and a stand-in
for Tune's SIGUSR1 handler (the integration tests run it with Tune)."""

import os
import signal
import sys

import pytest

from tuner.interrupt import TUNE_SIGINT_SETTING, Interrupted, StopOnSignal, resume_command


def test_a_signal_outside_tune_stops_at_once():
    with StopOnSignal() as stop:
        with pytest.raises(Interrupted) as raised:
            os.kill(os.getpid(), signal.SIGTERM)
    assert stop.signum == signal.SIGTERM and raised.value.exit_code == 143
    assert isinstance(raised.value, KeyboardInterrupt)  # what Ray's C++ calls let through


def test_the_first_signal_in_tune_asks_tune_to_stop_and_the_second_stops_at_once():
    asked = []
    with StopOnSignal() as stop:
        with pytest.raises(Interrupted) as raised:
            with stop.tune_running():
                signal.signal(signal.SIGUSR1, lambda signum, frame: asked.append(signum))  # as Tune's loop does
                os.kill(os.getpid(), signal.SIGINT)
                assert asked == [signal.SIGINT]  # Tune was asked; nothing raised yet
        assert raised.value.exit_code == 130  # raised once Tune returned

        with pytest.raises(Interrupted) as raised:
            with stop.tune_running():
                signal.signal(signal.SIGUSR1, lambda signum, frame: asked.append(signum))
                os.kill(os.getpid(), signal.SIGINT)  # a second signal
        assert asked == [signal.SIGINT] and raised.value.exit_code == 130


def test_a_signal_before_tunes_loop_started_stops_at_once():
    with StopOnSignal() as stop:
        with pytest.raises(Interrupted):
            with stop.tune_running():  # Tune's SIGUSR1 handler is not installed yet
                os.kill(os.getpid(), signal.SIGTERM)


def test_handlers_and_tunes_setting_are_put_back():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    os.environ.pop(TUNE_SIGINT_SETTING, None)
    with StopOnSignal():
        assert os.environ[TUNE_SIGINT_SETTING] == "1"
    assert TUNE_SIGINT_SETTING not in os.environ
    assert {s: signal.getsignal(s) for s in before} == before


@pytest.mark.parametrize("argv0, shown", [
    ("/usr/local/bin/tuner", "tuner"),
    ("/repo/tuner/__main__.py", f"{os.path.basename(sys.executable)} -m tuner"),
])
def test_resume_command(monkeypatch, argv0, shown):
    monkeypatch.setattr(sys, "argv", [argv0])
    assert resume_command(["tune", "--name", "a b", "--set", "search.space.width={choice: [64, 128]}"]) == (
        f"{shown} tune --name 'a b' --set 'search.space.width={{choice: [64, 128]}}'")
