"""The end of a run: Ray stopped without its exit-time waits."""

from __future__ import annotations

from tuner.raycompat.patches import declare, usable

# ray._private.ray_constants.PROCESS_TYPE_MONITOR: the autoscaler's monitor process.
MONITOR = "monitor"

declare("monitor_killed_at_shutdown", "each run's end takes about 1.5 s longer",
        "ray._private.worker:_global_node", "ray._private.node:Node.kill_all_processes",
        "ray._private.ray_constants:PROCESS_TYPE_MONITOR")


def shutdown() -> None:
    """``ray.shutdown()`` now, rather than from Ray's exit hook, and without the wait for
    the autoscaler's monitor of a Ray this process started.

    Ray's exit hook sleeps 0.5 s first "so that log messages finish printing" (the
    driver's console has printed its last line by now). And it stops the GCS before the
    monitor, which then spends its second of grace on SIGTERM retrying to tell the gone
    GCS that it ends, before SIGKILL: about 1.5 s of every run's end. The monitor watches
    the node for autoscaling, which ends with the run: it is killed first. On a Ray this
    process only joined (``--address``), ``ray.shutdown()`` only disconnects.
    """
    import ray

    if usable("monitor_killed_at_shutdown"):
        # A Node keeps the processes it started, by type, in `all_processes`.
        processes = getattr(ray._private.worker._global_node, "all_processes", None)
        if isinstance(processes, dict) and ray._private.ray_constants.PROCESS_TYPE_MONITOR == MONITOR:
            for info in processes.pop(MONITOR, []):
                info.process.kill()
                info.process.wait(timeout=5)
    ray.shutdown()
