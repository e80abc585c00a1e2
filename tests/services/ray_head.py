"""A throw-away `ray start --head` cluster on 127.0.0.1, for tests and benchmarks.

It has its own temp folder and ports, and is stopped by killing exactly the processes
whose command line names that folder: never `ray stop`, which stops every Ray on the
machine. Ray 2.60 turns token authentication on for a new cluster; ``env`` carries
``RAY_AUTH_MODE=token`` for the clients.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RAY_AGENT_HTTP_PORT = 52365  # Ray's default for the dashboard agent's HTTP port


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RayHead:
    temp_dir: str
    gcs: str  # host:port, for --address
    dashboard: str  # http://host:port, for `ray job`
    env: dict = field(default_factory=dict)  # the environment for `ray` and `tuner` clients

    def pids(self) -> list[int]:
        """The cluster's processes: the ones whose command line names its temp folder,
        and their descendants (Ray's agents and workers rename themselves `ray::...`)."""
        named = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    if self.temp_dir in (proc / "cmdline").read_bytes().decode(errors="replace"):
                        named.append(int(proc.name))
                except OSError:
                    continue
        return descendants(named)

    def stop(self) -> None:
        # Found before any is killed (an orphan is no longer a descendant), each with its
        # start time, so that a PID the kernel gave to another process meanwhile is spared.
        known = {pid: _started(pid) for pid in self.pids()}
        for sig in (signal.SIGTERM, signal.SIGKILL):
            known.update({pid: _started(pid) for pid in self.pids()})
            for pid, started in known.items():
                if started is None or _started(pid) != started:
                    continue
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            # A throw-away cluster: 3 s of grace (its autoscaler monitor sits out SIGTERM
            # retrying to reach the GCS), then SIGKILL.
            deadline = time.time() + (3 if sig == signal.SIGTERM else 15)
            while self.pids() and time.time() < deadline:
                time.sleep(0.2)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def descendants(roots: list[int]) -> list[int]:
    """``roots`` and every process below them (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(proc.name))
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children.get(pid, [])
    return sorted(found)


def _started(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat), or None if gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def start(cpus: int = 4, gpus: int = 0, resources: dict | None = None, server_env: dict | None = None) -> RayHead:
    """Start the head (``server_env``: extra environment of its processes, not of the
    clients); raises RuntimeError with the end of `ray start`'s output if it fails."""
    ray = shutil.which("ray")
    if not ray:
        raise FileNotFoundError("the `ray` CLI is not installed")
    # Short: Ray's unix sockets live under it and must stay under 108 characters.
    temp_dir = tempfile.mkdtemp(prefix="tr-", dir="/tmp")
    # Distinct ports of its own, and its dashboard agent's given too: left to Ray, that one
    # is 52365, which a free port can be (`ray start` then refuses: "used by other components").
    ports: list[int] = []
    while len(ports) < 4:
        port = free_port()
        if port not in ports and port != RAY_AGENT_HTTP_PORT:
            ports.append(port)
    gcs, dashboard, client, agent = ports
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    if not (env.get("RAY_AUTH_TOKEN") or env.get("RAY_AUTH_TOKEN_PATH") or Path.home().joinpath(".ray", "auth_token").exists()):
        # `ray start` makes no token (an in-process Ray does): on a machine that has none
        # yet, this head gets its own, for the processes given `head.env`.
        Path(temp_dir, "auth_token").write_text(secrets.token_hex(32))
        env["RAY_AUTH_TOKEN_PATH"] = str(Path(temp_dir, "auth_token"))
    cmd = [ray, "start", "--head", "--num-cpus", str(cpus), "--num-gpus", str(gpus), "--temp-dir", temp_dir,
           "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
           "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
           "--disable-usage-stats"]
    if resources:
        cmd += ["--resources", json.dumps(resources)]
    head = RayHead(temp_dir, f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}", env)
    started = subprocess.run(cmd, capture_output=True, text=True, env={**env, **(server_env or {})}, timeout=180)
    if started.returncode != 0:
        head.stop()
        raise RuntimeError(f"`ray start` failed: {started.stderr[-3000:]}")
    return head


def submit(head: RayHead, entrypoint: list[str], *options: str, working_dir: str | None = None,
           timeout: float = 900) -> subprocess.CompletedProcess:
    """`ray job submit [options] [--working-dir DIR] -- <entrypoint>`, retried while the
    head's job agent is not up yet (right after `ray start`)."""
    deadline = time.time() + 90
    wd = ["--working-dir", working_dir] if working_dir else []
    while True:
        proc = subprocess.run(["ray", "job", "submit", "--address", head.dashboard, *options, *wd, "--", *entrypoint],
                              capture_output=True, text=True, env=head.env, timeout=timeout)
        if "No available agent to submit job" not in proc.stderr or time.time() > deadline:
            return proc
        time.sleep(2)


def job(head: RayHead, verb: str, job_id: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`ray job <verb> <job_id>` (stop, status, logs)."""
    return subprocess.run(["ray", "job", verb, "--address", head.dashboard, job_id],
                          capture_output=True, text=True, env=head.env, timeout=timeout)
