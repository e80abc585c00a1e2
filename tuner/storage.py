"""The one place that turns a storage URI into a pyarrow filesystem.

A URI is a local path or ``s3://bucket/prefix``. S3 settings come from the standard
``AWS_*`` variables, with the endpoint passed to pyarrow explicitly (pyarrow ignores
``AWS_ENDPOINT_URL``). Everything else in the package asks this module for files.
"""

from __future__ import annotations

import copyreg
import functools
import json
import os
import posixpath
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

# Variables that the workers need to reach S3; forwarded to them by the runtime env.
AWS_ENV_VARS = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_REQUEST_CHECKSUM_CALCULATION",
    "AWS_RESPONSE_CHECKSUM_VALIDATION",
)
RETRIES = 12  # per S3 request; see s3_filesystem
CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


class StorageError(RuntimeError):
    """Storage is unusable (bad URI, endpoint unreachable, bucket missing, access denied)."""


@dataclass(frozen=True)
class Location:
    """Where something is stored: its URI (a local path or ``s3://bucket/key``) and the S3
    endpoint that reaches it (None: ``$AWS_ENDPOINT_URL``, else AWS). The one value passed
    wherever the two travel together; it opens its filesystem and reads and writes."""

    uri: str
    endpoint: str | None = None

    def join(self, *parts: str) -> Location:
        return Location(join(self.uri, *parts), self.endpoint)

    def filesystem(self, *, quick_fail: bool = False) -> tuple[pafs.FileSystem, str]:
        """``filesystem(uri, endpoint)``: the pyarrow filesystem and the path in it."""
        return filesystem(self.uri, self.endpoint, quick_fail=quick_fail)

    def exists(self) -> bool:
        return exists(self.uri, self.endpoint)

    def read_bytes(self) -> bytes:
        return read_bytes(self.uri, self.endpoint)

    def write_bytes(self, data: bytes) -> None:
        write_bytes(self.uri, data, self.endpoint)

    def read_json(self) -> dict:
        return read_json(self.uri, self.endpoint)

    def write_json(self, data: dict) -> None:
        write_json(self.uri, data, self.endpoint)

    def __str__(self) -> str:
        return self.uri


@dataclass(frozen=True)
class ParsedUri:
    """A storage URI taken apart."""

    scheme: str  # "s3" or "file"
    bucket: str  # empty for local paths
    path: str  # bucket/key for S3 (pyarrow's form), an absolute path locally

    @property
    def is_s3(self) -> bool:
        return self.scheme == "s3"


def at(where: Location | str) -> Location:
    """``where`` as a Location: a URI alone reaches S3 through ``$AWS_ENDPOINT_URL``."""
    return where if isinstance(where, Location) else Location(where)


def check_uri(uri: str) -> str | None:
    """Why ``uri`` is not a usable storage URI, or None."""
    if not isinstance(uri, str) or not uri.strip():
        return "it must be a local path or s3://bucket/prefix."
    if "://" in uri:
        parsed = urlparse(uri)
        if parsed.scheme != "s3":
            return f"the scheme `{parsed.scheme}://` is not supported; use a local path or s3://bucket/prefix."
        if not parsed.netloc:
            return "it names no bucket; use s3://bucket/prefix."
    return None


def parse(uri: str) -> ParsedUri:
    problem = check_uri(uri)
    if problem:
        raise StorageError(f"The storage URI {uri!r} is not usable: {problem}")
    if uri.startswith("s3://"):
        parsed = urlparse(uri)
        key = parsed.path.strip("/")
        return ParsedUri("s3", parsed.netloc, posixpath.join(parsed.netloc, key) if key else parsed.netloc)
    return ParsedUri("file", "", str(Path(uri).expanduser().resolve()))


def absolute(uri: str) -> str:
    """``uri`` with a local path made absolute; s3:// URIs unchanged."""
    return uri if uri.startswith("s3://") else str(Path(uri).expanduser().resolve())


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a local path or s3:// URI."""
    if uri.startswith("s3://"):
        return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(uri, *parts))


def endpoint_from_env(endpoint: str | None = None) -> str | None:
    return endpoint or os.environ.get("AWS_ENDPOINT_URL") or None


def filesystem(uri: str, endpoint: str | None = None, *, quick_fail: bool = False) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and in-filesystem path for ``uri``.

    Args:
        uri: a local path or s3://bucket/prefix.
        endpoint: S3 endpoint URL; default ``$AWS_ENDPOINT_URL``, else AWS.
        quick_fail: few retries and short timeouts, for the pre-flight check.
    """
    loc = parse(uri)
    if not loc.is_s3:
        return pafs.LocalFileSystem(), loc.path
    return s3_filesystem(endpoint, quick_fail=quick_fail), loc.path


def s3_filesystem(endpoint: str | None = None, *, quick_fail: bool = False) -> pafs.S3FileSystem:
    # Non-AWS servers (Ceph RGW, older MinIO) reject the newer default checksums.
    os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
    kwargs: dict = {
        "region": os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1",
        # Exponential backoff, 25 ms x 2^n with no retry quota: 12 retries ride out an
        # outage of up to ~100 s per request (checkpoint uploads, Tune's state) instead
        # of failing the trial; the pre-flight check fails fast instead.
        "retry_strategy": (pafs.AwsStandardS3RetryStrategy(max_attempts=2) if quick_fail
                           else pafs.AwsDefaultS3RetryStrategy(max_attempts=RETRIES)),
        "connect_timeout": 5 if quick_fail else 30,
        "request_timeout": 20 if quick_fail else 120,
        # A file smaller than a part (Tune's state, result logs, small checkpoints) goes up
        # in one PUT, instead of a multipart upload's three requests; errors that opening
        # would have raised come when the file is closed.
        "allow_delayed_open": True,
    }
    endpoint = endpoint_from_env(endpoint)
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
        # Path-style addressing: the bucket is not a DNS name on MinIO/Ceph.
        kwargs["force_virtual_addressing"] = False
    access, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if access and secret:
        kwargs.update(access_key=access, secret_key=secret, session_token=os.environ.get("AWS_SESSION_TOKEN"))
    return pafs.S3FileSystem(**kwargs)


def _s3_from_settings(settings: dict) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(**{**settings, "retry_strategy": pafs.AwsDefaultS3RetryStrategy(max_attempts=RETRIES)})


def _reduce_s3(fs: pafs.S3FileSystem):
    # pyarrow pickles an S3FileSystem without its retry strategy, so the copies Ray sends
    # to the Train controller and workers (where checkpoints are uploaded) would fall
    # back to 3 quick attempts; rebuild them with ours. Without the credentials, too:
    # pickles travel in actor arguments and Tune stores one in <storage>/<name>/tuner.pkl;
    # the receiving process takes them from its own environment (forwarded, or the pod's).
    _, (settings,) = fs.__reduce__()
    settings = {k: v for k, v in settings.items() if k not in ("access_key", "secret_key", "session_token")}
    return _s3_from_settings, (settings,)


# Registered wherever this module is imported, unpickling included (it names this module).
copyreg.pickle(pafs.S3FileSystem, _reduce_s3)


def worker_env(endpoint: str | None = None) -> dict[str, str]:
    """The AWS_* variables to hand to Ray workers so they reach the same storage.

    Credentials are included unless ``TUNER_FORWARD_CREDENTIALS=0``: set it where every
    node has them already (the Kubernetes manifests do), since Ray keeps a job's
    runtime environment in its job table, logs and dashboard.
    """
    forward = os.environ.get("TUNER_FORWARD_CREDENTIALS", "1").strip().lower() not in ("0", "false", "no", "off", "n")
    env = {k: os.environ[k] for k in AWS_ENV_VARS if os.environ.get(k) and (forward or k not in CREDENTIAL_VARS)}
    endpoint = endpoint_from_env(endpoint)
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    env.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    env.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
    return env


def preflight(where: Location) -> None:
    """Write, read back and delete a marker under ``where``; raise StorageError with one line."""
    uri, endpoint = where.uri, where.endpoint
    loc = parse(uri)
    shown = uri if not loc.is_s3 else f"{uri} (endpoint {endpoint_from_env(endpoint) or 'AWS S3'})"
    fs, path = filesystem(uri, endpoint, quick_fail=True)
    marker = posixpath.join(path, f".tuner-preflight-{uuid.uuid4().hex}")
    payload = b"tuner preflight"
    # Local folders this check creates, to remove again: it leaves nothing behind.
    created = [] if loc.is_s3 else [p for p in [Path(path), *Path(path).parents] if not p.exists()]
    try:
        if not loc.is_s3:
            fs.create_dir(path, recursive=True)
        with fs.open_output_stream(marker, compression=None) as f:
            f.write(payload)
        with fs.open_input_stream(marker, compression=None) as f:
            back = f.read()
        if loc.is_s3:
            # pyarrow's delete_file puts a marker for the parent "folder" when its last key
            # goes: this check leaves the bucket as it found it.
            bucket, _, key = marker.partition("/")
            boto3_client(fs).delete_object(Bucket=bucket, Key=key)
        else:
            fs.delete_file(marker)
    except (OSError, ValueError) as e:
        raise StorageError(f"Cannot use storage {shown}: {_explain(e)}") from None
    finally:
        for folder in created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                pass
    if back != payload:
        raise StorageError(f"Cannot use storage {shown}: a marker written there read back different bytes.")


def _explain(e: Exception) -> str:
    text = str(e)
    low = text.lower()
    flat = low.replace("_", "").replace(" ", "")  # SDKs spell NoSuchBucket as NO_SUCH_BUCKET too
    if "nosuchbucket" in flat or "bucketdoesnotexist" in flat:
        return "the bucket does not exist; create it first (e.g. `aws s3 mb`)."
    if any(s in flat for s in ("signaturedoesnotmatch", "invalidaccesskeyid", "accessdenied", "forbidden", "403")):
        return "access denied; check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
    if any(s in low for s in ("curl", "connect", "resolve", "timed out", "timeout", "network")):
        return "the endpoint is unreachable; check --endpoint / AWS_ENDPOINT_URL and that the server is up."
    if isinstance(e, PermissionError) or "permission denied" in low:
        return "permission denied; choose a writable folder."
    return text.splitlines()[0] if text else type(e).__name__


def exists(uri: str, endpoint: str | None = None) -> bool:
    fs, path = filesystem(uri, endpoint)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(uri: str, endpoint: str | None = None) -> bytes:
    """A whole file. On S3 a random-access file reads it in one GET (after a HEAD for its
    size); ``open_input_stream`` reads in small ranges, a GET each (22 for a 5 MB model)."""
    fs, path = filesystem(uri, endpoint)
    with fs.open_input_file(path) as f:
        return f.read()


def write_bytes(uri: str, data: bytes, endpoint: str | None = None) -> None:
    """Write a file; written to a temporary name first locally so a crash leaves no half file."""
    fs, path = filesystem(uri, endpoint)
    parent = posixpath.dirname(path)
    if not isinstance(fs, pafs.S3FileSystem):
        fs.create_dir(parent, recursive=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with fs.open_output_stream(tmp, compression=None) as f:
            f.write(data)
        fs.move(tmp, path)
        return
    # An S3 PUT is atomic: readers see the old object or the whole new one.
    with fs.open_output_stream(path, compression=None) as f:
        f.write(data)


def read_json(uri: str, endpoint: str | None = None) -> dict:
    return json.loads(read_bytes(uri, endpoint))


def write_json(uri: str, data: dict, endpoint: str | None = None) -> None:
    write_bytes(uri, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode(), endpoint)


def to_uri(fs: pafs.FileSystem, path: str) -> str:
    """The URI for a path inside ``fs`` (inverse of ``filesystem``)."""
    return f"s3://{path}" if isinstance(fs, pafs.S3FileSystem) else path


# --- whole folders on S3 (boto3, for requests pyarrow makes more of) ----------------------


def delete_s3_folder(fs, fs_path: str) -> int:
    """Delete every object under ``fs_path``/ (bucket/key, on the S3FileSystem ``fs``):
    one listing per 1,000 keys and one DELETE per key; returns how many."""
    bucket, _, folder = fs_path.strip("/").partition("/")
    client = boto3_client(fs)
    keys = [item["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=folder + "/")
            for item in page.get("Contents", [])]
    for key in keys:
        client.delete_object(Bucket=bucket, Key=key)
    return len(keys)


def boto3_client(fs):
    """A boto3 S3 client to the server, and with the credentials, of the pyarrow
    S3FileSystem ``fs`` (one per such settings, reused)."""
    settings = fs.__reduce__()[1][0]
    return _boto3_client(tuple((k, settings.get(k)) for k in (
        "endpoint_override", "scheme", "region", "access_key", "secret_key", "session_token")))


@functools.lru_cache(maxsize=8)
def _boto3_client(settings: tuple):
    import boto3
    from botocore.config import Config as BotoConfig

    s = dict(settings)
    endpoint = f"{s.get('scheme') or 'https'}://{s['endpoint_override']}" if s.get("endpoint_override") else None
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name=s.get("region") or None,
        aws_access_key_id=s.get("access_key") or None, aws_secret_access_key=s.get("secret_key") or None,
        aws_session_token=s.get("session_token") or None,
        config=BotoConfig(retries={"max_attempts": 12, "mode": "standard"}, connect_timeout=30, read_timeout=120,
                          s3={"addressing_style": "path" if endpoint else "auto"}))


def clear_folder(fs: pafs.FileSystem, fs_path: str) -> None:
    """Delete everything under ``fs_path`` (a folder of ``fs``), if anything is there."""
    if isinstance(fs, pafs.S3FileSystem):
        delete_s3_folder(fs, fs_path)
    else:
        fs.delete_dir_contents(fs_path, missing_dir_ok=True)


def upload_files(local_path: str, fs, fs_path: str, chunk: int = 64 << 20) -> None:
    """Copy every file under ``local_path`` to ``fs_path`` on ``fs``, one stream each, its
    bytes as they are (no compression guessed from the name)."""
    for source, rel in files_under(local_path):
        with open(source, "rb") as src, fs.open_output_stream(posixpath.join(fs_path, rel), compression=None) as out:
            while block := src.read(chunk):
                out.write(block)


def files_under(local_path: str):
    """(path, path relative to ``local_path`` with '/' separators) of every file under it,
    in a stable order: the files in its folders (each trial's results) before its own
    (Tune's experiment state), so that an upload cut short never leaves a stored state
    newer than the trial results it counts on."""
    top = []
    for root, _, names in os.walk(local_path):
        for name in sorted(names):
            source = os.path.join(root, name)
            rel = os.path.relpath(source, local_path).replace(os.sep, "/")
            if root == local_path:
                top.append((source, rel))
            else:
                yield source, rel
    yield from top
