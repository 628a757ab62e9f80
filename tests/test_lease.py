"""Leases (``fruits.io.lease``): one holder at a time across processes, on S3 (the emulator's
conditional writes) and on a local table root; a crashed holder's lease expires; a holder that
was taken over knows it."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from fruits.io.lease import Lease, LeaseHeld, LeaseLost


@pytest.fixture(params=["s3", "local"])
def root_settings(request, settings, tmp_path):  # noqa: ANN001, ANN201
    root = f"s3a://{settings.bucket}/tables" if request.param == "s3" else str(tmp_path / "tables")
    return settings.with_(table_root=root)


def test_one_holder_at_a_time(root_settings) -> None:
    assert Lease(root_settings, "stream").holder() is None  # free
    first = Lease(root_settings, "stream").acquire()
    with pytest.raises(LeaseHeld, match=f"another stream holds the tables.*{first.owner}"):
        Lease(root_settings, "stream").acquire()
    held = Lease(root_settings, "stream").holder()  # what `fruits health` shows
    assert held is not None and held["owner"] == first.owner and not held["expired"] and held["expires_at"]
    Lease(root_settings, "refit").acquire().release()  # another name is another lease
    first.release()
    second = Lease(root_settings, "stream").acquire()
    second.release()


def test_a_crashed_holders_lease_expires_and_is_taken_over(root_settings) -> None:
    crashed = Lease(root_settings, "stream", ttl=1.0).acquire()
    crashed._stop.set()  # its process froze: no more heartbeats, no release
    with pytest.raises(LeaseHeld):
        Lease(root_settings, "stream", ttl=1.0).acquire()
    time.sleep(1.2)
    assert Lease(root_settings, "stream").holder()["expired"]
    taker = Lease(root_settings, "stream", ttl=1.0).acquire()
    with pytest.raises(LeaseLost):
        crashed.renew()  # it wakes up: it knows it lost the lease
    with pytest.raises(LeaseLost):
        crashed.check()
    crashed.release()  # must not delete the new holder's lease
    with pytest.raises(LeaseHeld):
        Lease(root_settings, "stream").acquire()
    taker.release()


def test_a_live_holder_keeps_its_lease_past_the_ttl(root_settings) -> None:
    with Lease(root_settings, "stream", ttl=1.0) as holder:
        time.sleep(2.5)  # heartbeats every third of the ttl
        holder.check()
        with pytest.raises(LeaseHeld):
            Lease(root_settings, "stream", ttl=1.0).acquire()


def test_a_waiting_contender_gets_the_lease_when_it_is_released(root_settings) -> None:
    import threading

    holder = Lease(root_settings, "refit").acquire()
    threading.Timer(1.0, holder.release).start()
    started = time.monotonic()
    Lease(root_settings, "refit").acquire(wait=10).release()
    assert time.monotonic() - started >= 0.9  # it did wait for the release


def test_a_holder_that_cannot_renew_knows_when_its_lease_ran_out(root_settings, monkeypatch) -> None:
    """Renewals failing with errors that look transient (throttling, a partition): the holder must
    stop believing it holds the lease once its ttl has passed, before anyone takes it over."""
    holder = Lease(root_settings, "stream", ttl=1.0).acquire()

    def unreachable(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise ConnectionError("S3 unreachable")

    monkeypatch.setattr(holder, "_write_if", unreachable)
    holder.check()  # still within its ttl
    time.sleep(1.1)
    with pytest.raises(LeaseLost, match="expired"):
        holder.check()
    taker = Lease(root_settings, "stream", ttl=1.0).acquire()
    with pytest.raises(LeaseLost):
        holder.check()
    monkeypatch.undo()
    holder.release()  # must not delete the taker's lease
    with pytest.raises(LeaseHeld):
        Lease(root_settings, "stream").acquire()
    taker.release()


_CONTENDER = """
import sys
from fruits.config import Settings
from fruits.io.lease import Lease, LeaseHeld
settings = Settings.model_validate_json(sys.argv[1])
lease = Lease(settings, "stream", ttl=30)
print("ready", flush=True)
sys.stdin.readline()  # the start signal: every contender is ready and asks at once
try:
    lease.acquire()
    print("won", flush=True)
    sys.stdin.readline()  # hold it until every other contender has answered
    lease.release()
except LeaseHeld:
    print("held", flush=True)
"""


def test_processes_racing_for_a_lease_have_one_winner(root_settings) -> None:
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _CONTENDER, root_settings.model_dump_json()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        assert [p.stdout.readline().strip() for p in racers] == ["ready"] * 4  # imports done, lease made
        for p in racers:
            p.stdin.write("go\n")
            p.stdin.flush()
        answers = [p.stdout.readline().strip() for p in racers]
        assert sorted(answers) == ["held", "held", "held", "won"], answers
    finally:
        for p in racers:
            p.communicate("done\n", timeout=60)


def test_a_release_never_deletes_a_lease_taken_over_since(root_settings) -> None:
    """A holder that froze past its ttl and never learned it lost the lease, then releases: its
    delete is conditional on its own version (S3's If-Match on DeleteObject), so the taker's stays."""
    frozen = Lease(root_settings, "stream", ttl=1.0).acquire()
    frozen._stop.set()  # no heartbeats, and no check or renewal tells it anything before the release
    time.sleep(1.2)
    taker = Lease(root_settings, "stream", ttl=30).acquire()
    frozen.release()
    with pytest.raises(LeaseHeld, match=taker.owner):
        Lease(root_settings, "stream").acquire()
    taker.release()
    Lease(root_settings, "stream").acquire().release()


def test_a_renewal_whose_answer_was_lost_keeps_the_lease(root_settings) -> None:
    """The renewal landed but its answer did not (a timeout, then a retry with the old version):
    the lease is still ours, not a takeover."""
    lease = Lease(root_settings, "stream").acquire()
    lease._stop.set()  # no heartbeat: this test renews by hand
    lease._write_if(lease._etag, lease._body())  # the write lands; we never learn its new version
    lease.renew()
    lease.check()
    with pytest.raises(LeaseHeld):
        Lease(root_settings, "stream").acquire()
    lease._write_if(lease._etag, lease._body())  # again, and this time the process stops
    lease.release()
    Lease(root_settings, "stream").acquire().release()  # released for real, not left to expire


def test_a_file_uri_root_holds_its_lease_in_that_folder(settings, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "tables"
    lease = Lease(settings.with_(table_root=f"file://{root}"), "stream").acquire()
    assert (root / "_leases" / "stream.json").exists() and not (tmp_path / "file:").exists()
    lease.release()
