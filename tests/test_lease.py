"""One run of an experiment at a time (``tuner.lease``): locally and on S3 (moto)."""

import json
import logging
import os
import time

import pytest

from tuner import lease
from tuner.storage import Location


def test_a_second_run_is_refused_naming_the_holder_and_the_first_leaves_nothing(tmp_path):
    exp = tmp_path / "store" / "exp"
    first = lease.Lease(Location(str(exp))).acquire("exp")
    stored = json.loads((exp / "lease.json").read_text())
    assert stored["pid"] == os.getpid() and stored["ttl_s"] == lease.TTL_S
    with pytest.raises(lease.LeaseHeld) as refused:
        lease.Lease(Location(str(exp))).acquire("exp")
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"The experiment `exp` is being run by another `tuner` (host {stored['host']}, process "
                              f"{os.getpid()}, started {stored['started']}; its lease {exp / 'lease.json'} was renewed ")
    assert f"delete {exp / 'lease.json'} to take over now" in message
    first.release()
    # The run wrote nothing else: the folders the lease made are gone too.
    assert not (tmp_path / "store").exists()


def test_a_lease_whose_process_is_gone_is_taken_over_at_once(tmp_path, caplog):
    exp = tmp_path / "exp"
    exp.mkdir()
    mine = lease.holder()
    boot_and_namespace = mine["process"].rsplit("/", 2)[0]
    dead = {**mine, "pid": 999999999, "process": f"{boot_and_namespace}/999999999/12"}
    (exp / "lease.json").write_text(json.dumps(dead))
    with caplog.at_level(logging.WARNING, logger="tuner.lease"):
        held = lease.Lease(Location(str(exp))).acquire("exp")
    assert json.loads((exp / "lease.json").read_text())["pid"] == os.getpid()
    assert "Took over the lease" in caplog.text
    held.release()
    assert exp.is_dir() and not (exp / "lease.json").exists()  # the folder was there before


def test_a_lease_of_another_machine_waits_for_its_expiry(tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    other = {"host": "elsewhere", "pid": 7, "started": "yesterday", "process": "another-boot/pid:[1]/7/99"}
    (exp / "lease.json").write_text(json.dumps(other))
    with pytest.raises(lease.LeaseHeld, match="host elsewhere, process 7"):
        lease.Lease(Location(str(exp))).acquire("exp")
    old = time.time() - lease.TTL_S - 1  # not renewed for longer than the lease lasts
    os.utime(exp / "lease.json", (old, old))
    lease.Lease(Location(str(exp))).acquire("exp").release()


def eventually(condition, timeout: float = 20.0) -> bool:
    """Whether ``condition()`` holds within ``timeout`` seconds (a loaded machine's
    renewal thread may run late)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_the_holder_renews_its_lease(tmp_path):
    exp = tmp_path / "exp"
    held = lease.Lease(Location(str(exp)), renew=0.2).acquire("exp")
    first = json.loads((exp / "lease.json").read_text())["renewed"]
    assert eventually(lambda: json.loads((exp / "lease.json").read_text())["renewed"] > first)
    held.release()


def test_on_s3_conditional_writes_keep_runs_apart(moto_endpoint, monkeypatch):
    from tuner import storage

    moto_endpoint, client, _ = moto_endpoint
    client.create_bucket(Bucket="leases")
    exp = "s3://leases/store/exp"
    first = lease.Lease(Location(exp, moto_endpoint), ttl=1.0, renew=60).acquire("exp")
    with pytest.raises(lease.LeaseHeld, match="is being run by another `tuner`"):
        lease.Lease(Location(exp, moto_endpoint)).acquire("exp")
    # Not renewed for longer than its ttl (by the server's clock): a run on another
    # machine takes it over, replacing exactly the lease it found (If-Match).
    monkeypatch.setattr(lease, "_dead_here", lambda h: False)
    time.sleep(2.1)
    second = lease.Lease(Location(exp, moto_endpoint), ttl=1.0, renew=60).acquire("exp")
    assert json.loads(storage.read_bytes(f"{exp}/lease.json", moto_endpoint))["pid"] == os.getpid()
    first.release()  # no longer its own: left alone
    assert client.list_objects_v2(Bucket="leases").get("KeyCount") == 1
    second.release()
    # Nothing left: no lease, no folder marker.
    assert not client.list_objects_v2(Bucket="leases").get("Contents")


def test_a_lease_is_aged_by_the_servers_clock_whatever_its_date_format():
    from datetime import datetime, timezone

    modified = datetime(2026, 12, 7, 12, 0, 0, tzinfo=timezone.utc)
    assert lease._age("Mon, 07 Dec 2026 12:01:30 GMT", modified) == 90
    # A proxy's or server's date in the "-0000" form parses without a time zone.
    assert lease._age("Mon, 07 Dec 2026 12:01:30 -0000", modified) == 90
    assert lease._age("Mon, 07 Dec 2026 12:01:30 -0000", modified.replace(tzinfo=None)) == 90
    assert lease._age(None, modified) > 0


def test_an_older_copy_of_its_own_lease_does_not_stop_the_renewals(moto_endpoint):
    # A resumed run's Tune uploads the experiment folder it downloaded, lease.json with it:
    # an older body of this run's lease, with another ETag.
    moto_endpoint, client, _ = moto_endpoint
    client.create_bucket(Bucket="own")
    held = lease.Lease(Location("s3://own/exp", moto_endpoint), renew=0.3).acquire("exp")
    older = client.get_object(Bucket="own", Key="exp/lease.json")["Body"].read()
    time.sleep(0.5)
    client.put_object(Bucket="own", Key="exp/lease.json", Body=older)
    assert eventually(lambda: json.loads(client.get_object(Bucket="own", Key="exp/lease.json")["Body"].read())["renewed"]
                      > json.loads(older)["renewed"] + 0.5)
    assert held._thread.is_alive()
    held.release()
    assert not client.list_objects_v2(Bucket="own").get("Contents")
