"""One run of an experiment at a time: a lease in the experiment's storage.

A run that is about to stage data or start trials writes ``<storage>/<name>/lease.json``
(its holder: host, process and start time) only if no such object exists: on S3 a PUT
with ``If-None-Match: *``, which AWS S3, Ceph RGW and MinIO honour (a server that ignores
it cannot keep two runs apart), locally a file created exclusively. While the run lives a
thread renews it every ``RENEW_S`` seconds; the run's end deletes it, however the run
ends short of SIGKILL. A second run of the same experiment finds it and is refused at
once, in one line naming the holder. A lease not renewed for ``TTL_S`` seconds (its
holder was killed, its pod or node lost) has expired: the next run replaces it (on S3
with ``If-Match`` on the expired lease's ETag, so that of two runs taking over only one
does) and resumes the experiment; so does one on the same machine whose holder's process
is gone, at once. The age of a lease is measured by the storage's own clock (S3's
Last-Modified against its Date; a file's mtime), not the holders'.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

from tuner import storage

LEASE_FILE = "lease.json"
# A renewal every 30 s costs about one S3 request per 30 s of a run; three missed in a
# row (a lost driver) let the next run take over.
TTL_S = 90.0
RENEW_S = 30.0

log = logging.getLogger(__name__)


class LeaseHeld(RuntimeError):
    """Another live run holds the experiment's lease (the message is one line)."""


@dataclass
class _Stored:
    holder: dict
    age: float  # seconds since its last renewal, by the storage's clock
    tag: str | None  # S3 ETag


def holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "process": _process_id(os.getpid())}


def _process_id(pid: int) -> str | None:
    """The machine's boot, the process namespace and the process's start (clock ticks
    after boot): equal only for the very same process, seen from the same namespace."""
    try:
        boot = open("/proc/sys/kernel/random/boot_id").read().strip()
        namespace = os.readlink("/proc/self/ns/pid")
        start = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
    return f"{boot}/{namespace}/{pid}/{start}"


def _dead_here(h: dict) -> bool:
    """Whether the holder ``h`` was a process of this machine and namespace that is gone
    (killed: SIGKILL leaves its lease behind); False where that cannot be told."""
    theirs = h.get("process")
    if not isinstance(theirs, str) or theirs.count("/") < 3:
        return False
    mine = _process_id(os.getpid())
    if mine is None or mine.rsplit("/", 2)[0] != theirs.rsplit("/", 2)[0]:
        return False  # another machine, container or boot: its processes are not ours to see
    return _process_id(int(theirs.rsplit("/", 2)[1])) != theirs


class Lease:
    """The experiment's lease, held by this process from ``acquire`` until ``release``."""

    def __init__(self, experiment: storage.Location, ttl: float = TTL_S, renew: float = RENEW_S):
        self.uri = experiment.join(LEASE_FILE).uri
        self.endpoint = experiment.endpoint
        self.ttl, self.renew_every = ttl, renew
        self.holder = {**holder(), "token": uuid.uuid4().hex}  # this lease's, of this run
        self._tag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._made: list[str] = []  # local folders the lease made (deepest first)
        loc = storage.parse(self.uri)
        self._s3 = loc.is_s3
        self._bucket, _, self._key = loc.path.partition("/") if loc.is_s3 else ("", "", loc.path)

    # --- the stored object ----------------------------------------------------------------

    def _client(self):
        return storage.boto3_client(storage.s3_filesystem(self.endpoint))

    def _body(self) -> bytes:
        return json.dumps({**self.holder, "renewed": time.time(), "ttl_s": self.ttl}).encode()

    def _read(self) -> _Stored | None:
        if self._s3:
            from botocore.exceptions import ClientError

            try:
                got = self._client().get_object(Bucket=self._bucket, Key=self._key)
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise
            age = _age(got["ResponseMetadata"]["HTTPHeaders"].get("date"), got["LastModified"])
            return _Stored(_parse(got["Body"].read()), age, got["ETag"])
        try:
            with open(self._key, "rb") as f:
                body = f.read()
                age = time.time() - os.fstat(f.fileno()).st_mtime
        except FileNotFoundError:
            return None
        return _Stored(_parse(body), age, None)

    def _create(self) -> bool:
        """Write the lease only where none is; whether this call wrote it."""
        if self._s3:
            from botocore.exceptions import ClientError

            try:
                self._tag = self._client().put_object(Bucket=self._bucket, Key=self._key, Body=self._body(),
                                                      IfNoneMatch="*")["ETag"]
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                    return False
                raise
            return True
        folder = os.path.dirname(self._key)
        while not os.path.isdir(folder):  # made here, removed on release if still empty
            self._made.append(folder)
            folder = os.path.dirname(folder)
        os.makedirs(os.path.dirname(self._key), exist_ok=True)
        try:
            fd = os.open(self._key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(self._body())
        return True

    def _replace(self, tag: str | None) -> bool:
        """Overwrite the lease whose ETag is ``tag`` (S3: only if it still is); whether
        this call wrote it."""
        if self._s3:
            from botocore.exceptions import ClientError

            try:
                self._tag = self._client().put_object(Bucket=self._bucket, Key=self._key, Body=self._body(),
                                                      **({"IfMatch": tag} if tag else {}))["ETag"]
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict",
                                                               "NoSuchKey"):
                    return False
                raise
            return True
        temp = f"{self._key}.{os.getpid()}"
        with open(temp, "wb") as f:
            f.write(self._body())
        os.replace(temp, self._key)
        return True

    # --- holding it ---------------------------------------------------------------------

    def acquire(self, name: str) -> "Lease":
        """Take the lease, or raise ``LeaseHeld`` naming the run that holds it."""
        for _ in range(3):  # lost races: the lease came or went between a look and a write
            if self._create():
                break
            stored = self._read()
            if stored is None:
                continue
            if stored.age < self.ttl and not _dead_here(stored.holder):
                h = stored.holder
                raise LeaseHeld(
                    f"The experiment `{name}` is being run by another `tuner` (host {h.get('host', '?')}, process "
                    f"{h.get('pid', '?')}, started {h.get('started', '?')}; its lease {self.uri} was renewed "
                    f"{stored.age:.0f} s ago). Wait for that run to end; if it is dead, its lease expires "
                    f"{self.ttl:.0f} s after its last renewal and the same command then takes the experiment over "
                    f"(or delete {self.uri} to take over now).")
            if self._replace(stored.tag):
                log.warning("Took over the lease %s of a run that ended without releasing it (last renewed %.0f s "
                            "ago by host %s, process %s)",
                            self.uri, stored.age, stored.holder.get("host"), stored.holder.get("pid"))
                break
        else:
            raise LeaseHeld(f"Could not take the lease {self.uri}: other runs of the experiment `{name}` keep "
                            "taking it; run the command again.")
        self._thread = threading.Thread(target=self._renew, name="tuner-lease", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_every):
            try:
                if self._replace(self._tag if self._s3 else None) or self._stop.is_set():
                    continue
                stored = self._read()
                if stored is not None and stored.holder.get("token") == self.holder["token"]:
                    # Still this run's, put back by a copy of an older renewal (Tune's
                    # upload of the experiment folder, which a resume downloaded).
                    self._tag = stored.tag
                    continue
                if stored is not None:
                    log.warning("The lease %s was taken over by host %s, process %s: another run of this "
                                "experiment may be running", self.uri, stored.holder.get("host"),
                                stored.holder.get("pid"))
                return
            except Exception as e:  # noqa: BLE001 - a storage hiccup: the next renewal tries again
                log.warning("Could not renew the lease %s (%s: %s)", self.uri, type(e).__name__, e)

    def release(self) -> None:
        """Stop renewing and delete the lease (if it is still this run's), and the local
        folders it made where the run left nothing else in them."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            stored = self._read()
            if stored is not None and stored.holder.get("token") == self.holder["token"]:
                if self._s3:
                    self._client().delete_object(Bucket=self._bucket, Key=self._key)
                else:
                    os.remove(self._key)
        except Exception as e:  # noqa: BLE001 - it expires on its own
            log.warning("Could not delete the lease %s (%s: %s); it expires in %.0f s", self.uri, type(e).__name__, e,
                        self.ttl)
        for folder in self._made:
            try:
                os.rmdir(folder)
            except OSError:  # the run stored something there
                break

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _age(date: str | None, last_modified: datetime) -> float:
    """Seconds from ``last_modified`` to the server's ``date`` header (its clock; this
    one's where it sent none). A date in "-0000" form parses without a time zone: UTC."""
    now = parsedate_to_datetime(date) if date else datetime.now(timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    if last_modified.tzinfo is None:
        last_modified = last_modified.replace(tzinfo=timezone.utc)
    return (now - last_modified).total_seconds()


def _parse(body: bytes) -> dict:
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
