"""The register of ``tuner``'s changes to Ray's internals (``Patch``): each is an
optimisation Ray can do without, checked against the shape of its targets in this
process before it is applied, and left off, with one line saying what the run loses,
where they changed, on a Ray release it was not written for, or with
``TUNER_RAY_PATCHES=off``."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
from dataclasses import dataclass

RAY_VERSION = "2.60"  # what this package was written against

# `TUNER_RAY_PATCHES=off`: run on Ray as it ships, every patch left out.
PATCHES_VAR = "TUNER_RAY_PATCHES"
OFF = ("off", "0", "false", "no")
TESTED_RAY = ("2.60",)  # the Ray releases (major.minor) each patch was written against

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Patch:
    """A change to Ray's internals that saves time or S3 requests and that nothing needs:
    without it, Ray does the same work its own way (``loses`` says what that costs).
    ``targets``: what it replaces or reads, as ``module:Name.attr`` or, where the
    parameters matter, ``module:Name.attr(a, b)``; ``?module``: a module that must be
    there, not imported to check."""

    name: str
    loses: str
    targets: tuple[str, ...]


PATCHES: dict[str, Patch] = {}
_USABLE: dict[str, str | None] = {}  # patch -> its problem here (None: usable)


def declare(name: str, loses: str, *targets: str) -> None:
    """Register a patch that its caller applies itself where ``usable(name)``."""
    PATCHES[name] = Patch(name, loses, targets)


def patch(loses: str, *targets: str):
    """Register the decorated function as a patch: it runs only where ``usable`` says its
    targets still have the shape it was written for, and returns whether it did."""
    def register(fn):
        PATCHES[fn.__name__] = Patch(fn.__name__, loses, targets)

        @functools.wraps(fn)
        def guarded(*args, **kwargs) -> bool:
            if not usable(fn.__name__):
                return False
            fn(*args, **kwargs)
            return True

        return guarded

    return register


def _replace(owner, **attributes) -> None:
    """Set ``attributes`` on ``owner`` (a Ray class or module): what every patch does."""
    for name, value in attributes.items():
        setattr(owner, name, value)


def switched_off() -> bool:
    return os.environ.get(PATCHES_VAR, "").strip().lower() in OFF


def problem(p: Patch) -> str | None:
    """Why patch ``p`` cannot be used in this process (None: it can)."""
    if switched_off():
        return f"{PATCHES_VAR}={os.environ[PATCHES_VAR]}"
    import ray

    if not ray.__version__.startswith(tuple(v + "." for v in TESTED_RAY)):
        return f"Ray {ray.__version__} is not one it was tested on ({', '.join(TESTED_RAY)})"
    for target in p.targets:
        missing = _missing(target)
        if missing:
            return missing
    return None


def _missing(target: str) -> str | None:
    """What of ``target`` (``module:Name.attr(params)``) is not as expected, or None."""
    if target.startswith("?"):
        return None if _module_file(target[1:]) else f"{target[1:]} is gone"
    where, _, params = target.partition("(")
    module, _, path = where.partition(":")
    try:
        obj = importlib.import_module(module)
    except ImportError:
        return f"{module} is gone"
    for part in path.split(".") if path else ():
        if not hasattr(obj, part):
            return f"{where} is gone"
        obj = getattr(obj, part)
    if params:
        import inspect

        want = [n.strip() for n in params.rstrip(")").split(",") if n.strip()]
        try:
            have = list(inspect.signature(obj).parameters)  # type: ignore[arg-type]  # a callable, or TypeError
        except (TypeError, ValueError):
            return f"{where} has no signature to check"
        if have != want:
            return f"{where} takes ({', '.join(have)}), not ({', '.join(want)})"
    return None


def _module_file(name: str) -> bool:
    """Whether module ``name`` is there, found without importing it or its package
    (``find_spec`` of a submodule would run the package's ``__init__``)."""
    parent, _, leaf = name.rpartition(".")
    try:
        spec = importlib.util.find_spec(parent)
    except ImportError:
        return False
    places = (spec and spec.submodule_search_locations) or []
    return any(os.path.exists(os.path.join(p, leaf + ".py")) or os.path.isdir(os.path.join(p, leaf)) for p in places)


def checked(name: str) -> str | None:
    """``problem`` of patch ``name``, found once per process, before it is applied (the
    patched target no longer has Ray's shape)."""
    if name not in _USABLE:
        _USABLE[name] = problem(PATCHES[name])
        if _USABLE[name] is not None:
            log.debug("Ray patch %s is off (%s)", name, _USABLE[name])
    return _USABLE[name]


def usable(name: str) -> bool:
    """Whether patch ``name`` can be applied in this process."""
    return checked(name) is None


def report() -> list[str]:
    """One line per patch that stays off, for the experiment's driver to show once: its
    name, why, and what the run loses; a single line when all are switched off."""
    if switched_off():
        return [f"Ray patches are off ({PATCHES_VAR}={os.environ[PATCHES_VAR]}): S3 requests per trial are higher "
                "and trial start-up is slower; results are the same."]
    return [f"Ray patch {p.name} is off ({why}): {p.loses}." for p in PATCHES.values()
            if (why := checked(p.name)) is not None]
