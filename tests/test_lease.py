"""The run directory's lease: one driver writes a run at a time; a dead one's lease goes."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from conftest import failed_run, sir_config, sorted_events

import swarm
from swarm.errors import LeaseError
from swarm.lease import LEASE, Lease
from swarm.storage import RunStore

SWARM = [sys.executable, "-m", "swarm.cli"]


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A local-backend run that failed at step 30, to be resumed (copy it to use it)."""
    return failed_run(tmp_path_factory.mktemp("stopped") / "r", 30)


def test_a_held_lease_refuses_overwrite_and_resume(stopped, tmp_path):
    path = tmp_path / "r"
    shutil.copytree(stopped, path)
    with Lease(RunStore(path), attempt=7):
        holder = json.loads((path / LEASE).read_text())
        assert holder["pid"] == os.getpid() and holder["attempt"] == 7
        with pytest.raises(LeaseError, match=f"in use by pid {os.getpid()}"):
            swarm.run(sir_config(), path, backend="local", overwrite=True)
        with pytest.raises(LeaseError, match="in use"):
            swarm.resume(path)
        # From another process too (the lock is the kernel's, not this process's memory).
        out = subprocess.run([*SWARM, "resume", str(path)], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 2 and "in use by pid" in out.stderr
    assert not (path / LEASE).exists()  # released
    assert json.loads((path / "manifest.json").read_text())["status"] == "failed"
    assert swarm.resume(path).status == "completed"


def test_a_killed_drivers_lease_is_free_at_once(stopped, tmp_path, reference):
    path = tmp_path / "r"
    shutil.copytree(stopped, path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from swarm.lease import Lease; "
         "from swarm.storage import RunStore; Lease(RunStore(sys.argv[1])).acquire(); "
         "print('held', flush=True); time.sleep(60)", str(path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LeaseError):
            swarm.resume(path)
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, lease.json stays behind
        holder.wait()
    assert (path / LEASE).exists()
    resumed = swarm.resume(path)
    assert sorted_events(resumed).equals(sorted_events(reference))


def test_simultaneous_resumes_one_proceeds_nothing_lost(stopped, tmp_path, reference):
    # Before: 7,720 events lost in 1 of 5 trials, with the manifest saying completed.
    expected = sorted_events(reference)
    for trial in range(3):
        path = tmp_path / f"r{trial}"
        shutil.copytree(stopped, path)
        procs = [subprocess.Popen([*SWARM, "resume", str(path), "--no-progress"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        outs = [(p.wait(timeout=180), p.stderr.read()) for p in procs]
        codes = sorted(code for code, _ in outs)
        assert codes == [0, 2], outs
        loser = next(err for code, err in outs if code == 2)
        assert "in use by pid" in loser or "already completed" in loser
        run = swarm.open_run(path)
        assert run.status == "completed" and run.verify() == []
        assert sorted_events(run).equals(expected)


def test_a_stale_lease_on_an_object_store_is_taken_over(tmp_path, monkeypatch):
    # Object stores have no locks: a lease with no heartbeat for STALE seconds goes.
    store = RunStore(tmp_path)
    monkeypatch.setattr(RunStore, "local", False, raising=False)
    store.local = False
    store.write_json(LEASE, {"host": "elsewhere", "pid": 1, "attempt": 1, "token": "t",
                             "heartbeat_unix": time.time()})
    with pytest.raises(LeaseError, match="no heartbeat for 30 s may be taken over"):
        Lease(store).acquire()
    store.write_json(LEASE, {"host": "elsewhere", "pid": 1, "attempt": 1, "token": "t",
                             "heartbeat_unix": time.time() - 31})
    lease = Lease(store, attempt=2).acquire()
    assert json.loads((tmp_path / LEASE).read_text())["token"] == lease.token
    lease.release()


def test_a_driver_that_lost_its_lease_writes_nothing_more(tmp_path, monkeypatch):
    # On an object store a stalled driver can lose its lease to another; from then on
    # the other driver's manifest must stand.
    path = tmp_path / "r"
    theirs = {"status": "running", "run_id": "another driver's"}
    calls = []

    def check(self):
        calls.append(1)
        if len(calls) == 2:
            self.lost = True
            (path / "manifest.json").write_text(json.dumps(theirs))
        if self.lost:
            raise LeaseError("another driver took over this run's lease")

    monkeypatch.setattr(Lease, "check", check)
    with pytest.raises(LeaseError, match="took over"):
        swarm.run(sir_config(), path, backend="local")
    assert json.loads((path / "manifest.json").read_text()) == theirs


def test_a_failed_first_heartbeat_does_not_keep_the_lock(tmp_path, full_disk):
    store = RunStore(tmp_path)
    full_disk(tmp_path, LEASE)
    with pytest.raises(swarm.errors.StorageError, match="no space left"):
        Lease(store).acquire()
    full_disk.free()
    Lease(store).acquire().release()  # space freed: the lease is free too
