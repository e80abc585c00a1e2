"""Optuna's NSGA-II sampler, picklable: Ray pickles the searcher with the experiment (its
``tuner.pkl`` and every experiment checkpoint), and Optuna's genetic samplers hold a
thread lock. Imports Optuna: load it only for ``search.algorithm: nsga2``."""

from __future__ import annotations

import threading

import optuna


class NSGAIISampler(optuna.samplers.NSGAIISampler):
    """``optuna.samplers.NSGAIISampler`` that leaves its lock out of its pickle and makes
    a new one when loaded."""

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()
