"""Drops TensorFlow's native start-up lines from the ``tuner`` driver's stderr: ``start``
runs this file as a process that reads what the driver writes to stderr (file descriptor
2, which its children inherit and where Ray prints the workers' forwarded stderr) and
writes every other line to the real stderr.

TensorFlow writes these through absl before its logging reads ``TF_CPP_MIN_LOG_LEVEL``,
so no setting hides them all (at level 2 the CUDA probing lines still print, at level 3
the oneDNN note does); every Train worker prints them, and Ray forwards them to the
driver. On a machine without a GPU, ``failed call to cuInit: UNKNOWN ERROR (303)`` reads
like a failure and is none: it goes too, unless ``keep_gpu_errors`` (trials that ask for
GPUs) says otherwise. Every other line passes, errors included, and the filter reads
until the driver and all it started have closed the stream, so it outlives a driver that
crashes.

No library does this: absl offers no setting for it, Ray no filter of forwarded lines.
Standard library only: the filter starts in ~20 ms.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import subprocess
import sys

# Ray's prefix on a forwarded worker line, "(RayTrainWorker pid=12, ip=10.0.0.3) ",
# coloured on a terminal.
_PREFIX = r"(?:\x1b\[[0-9;]*m)*(?:\([^()]*\)(?:\x1b\[[0-9;]*m)* )?"
_ABSL = r"[IWE]\d{4} [\d:.]+ +\d+ "  # absl's "I0000 00:00:1796120337.873335   21867 "
NOISE = [
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR.*",
    _ABSL + r"port\.cc:\d+\] oneDNN custom operations are on\..*",
    _ABSL + r"cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized to use available CPU instructions.*",
    r"To enable the following instructions: .* in other operations, rebuild TensorFlow with the appropriate "
    r"compiler flags\..*",
]
# Ray Train's placement-group cleaner, after every trial: it notices that the trial's
# Train controller exited (as it does when its run ends) and removes the workers'
# placement group; logged as a warning whether or not anything went wrong.
NOISE.append(r"(?:\S+ \S+\s+WARNING placement_group_cleaner\.py:\d+ -- )?Detected that the Ray Train controller "
             r"actor \([0-9a-f]+\) is dead\. Cleaning up placement group .*")
# A Train worker still alive when that placement group goes: Ray ends it, as intended.
NOISE.append(r"The actor is dead because its worker process has died\. Worker exit type: INTENDED_SYSTEM_EXIT "
             r"Worker exit detail: Destroying worker since its placement group was removed\..*")
NO_GPU_NOISE = [
    _ABSL + r"cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine, GPU will not be used\..*",
    _ABSL + r"cuda_(?:platform|executor)\.cc:\d+\] failed call to cuInit: .*",
]


# A line the driver writes to switch the filter to keeping GPU errors (not passed on).
KEEP_GPU_ERRORS = b"\x00tuner-stderr-filter: keep GPU errors\n"


def pattern(gpu: bool) -> re.Pattern:
    return re.compile(_PREFIX + "(?:" + "|".join(NOISE + ([] if gpu else NO_GPU_NOISE)) + r")\s*")


_process = None  # this driver's filter


def start() -> None:
    """Route this process's stderr through the filter (once), until this process exits.

    The filter runs in a session of its own: Ctrl-C, and a supervisor's kill of the
    driver's process group (``ray job stop``), do not reach it, so it passes on the
    driver's last lines. At exit (registered before ``ray.init``, so after Ray's own
    shutdown hook) the driver restores its stderr and waits for the filter to drain."""
    global _process
    if _process is not None:
        return
    sys.stderr.flush()
    _process = subprocess.Popen([sys.executable, "-S", "-u", __file__], stdin=subprocess.PIPE, stdout=2,
                                start_new_session=True)
    saved = os.dup(2)
    assert _process.stdin is not None  # stdin=PIPE
    os.dup2(_process.stdin.fileno(), 2)
    _process.stdin.close()
    atexit.register(_finish, saved)


def _finish(saved: int) -> None:
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os.dup2(saved, 2)  # this process's last reference to the pipe, unless a child holds one
    try:
        if _process is not None:
            _process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def keep_gpu_errors() -> None:
    """From now on, pass TensorFlow's CUDA errors on: the trials ask for GPUs."""
    if _process is not None:
        sys.stderr.flush()
        os.write(2, KEEP_GPU_ERRORS)


def main() -> None:
    # Ctrl-C and SIGTERM reach the driver's whole process group: this process stays to
    # pass on what the driver prints as it stops, and ends when the stream closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    noise = pattern(gpu=False)
    out = sys.stdout.buffer
    for raw in sys.stdin.buffer:
        if raw == KEEP_GPU_ERRORS:
            noise = pattern(gpu=True)
        elif not noise.fullmatch(raw.decode("utf-8", "replace")):
            out.write(raw)
            out.flush()


if __name__ == "__main__":
    main()
