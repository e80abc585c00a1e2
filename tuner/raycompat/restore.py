"""A ``Tuner.restore`` of an interrupted experiment, and what ``tuner`` reads back from the
restored ``Tuner``."""

from __future__ import annotations

from tuner.raycompat.patches import _replace, declare, usable

declare("restore_tuner", "a resumed run first reads every trial's results from storage (12.7 s for 300 trials on S3)",
        "ray.tune.impl.tuner_internal:ExperimentAnalysis")


def restore_tuner(path: str, trainable, **kwargs):
    """``tune.Tuner.restore(path, trainable, **kwargs)`` without first reading every
    trial's results.

    Tune 2.60's restore builds an ``ExperimentAnalysis`` of the interrupted run (every
    trial's ``result.json`` read from storage and parsed into a DataFrame) for a
    ``Tuner.get_results()`` before ``fit``, which `tuner` never calls; ``fit`` builds its
    own at the end. With 300 stub trials on S3 (150 finished) that took 12.7 s of the
    restore's 18.1 s, and it grows with every trial the experiment has had. Here Tune's
    restore finds no analysis to build, which it takes as an unreadable one (None).
    """
    from ray import tune

    if not usable("restore_tuner"):
        return tune.Tuner.restore(path, trainable, **kwargs)
    from ray.tune.impl import tuner_internal

    analysis = tuner_internal.ExperimentAnalysis

    def skipped(*args, **kw):
        raise LookupError("tuner: results are read after fit, not on restore")

    _replace(tuner_internal, ExperimentAnalysis=skipped)
    try:
        return tune.Tuner.restore(path, trainable, **kwargs)
    finally:
        _replace(tuner_internal, ExperimentAnalysis=analysis)


def restored_run_config(tuner):
    """The ``RunConfig`` a ``Tuner.restore`` unpickled (its callbacks included)."""
    return tuner._local_tuner.get_run_config()


def restored_search_alg(tuner):
    return tuner._local_tuner._tune_config.search_alg
