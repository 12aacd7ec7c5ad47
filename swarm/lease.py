"""The run directory's lease: one driver at a time writes a run.

``swarm run --overwrite`` and ``swarm resume`` take the lease of the run
directory before they touch it and hold it until they stop, so two of them
never write the same run (two resumes started together used to interleave
their chunks and lose rows while the manifest said ``completed``).

``lease.json`` says who holds it (host, pid, attempt) and when it last beat
(a heartbeat every ``HEARTBEAT`` seconds from a background thread). On a
local disk the lease is also an ``flock`` on ``.lease.lock``, which the
kernel releases when its holder dies, however it dies: a SIGKILLed run can
be resumed at once, and the lock, not the heartbeat, is what decides. On an
object store (``s3://``, ``gs://``) there are no locks; there a lease whose
heartbeat is older than ``STALE`` seconds (or whose holder is a dead process
on this host) may be taken over, and the check is best effort.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time

from swarm.errors import LeaseError, StorageError
from swarm.storage import RunStore

__all__ = ["Lease", "LEASE", "LOCK", "LEASE_FILES", "HEARTBEAT", "STALE"]

LEASE = "lease.json"
LOCK = ".lease.lock"
#: Files the lease leaves in a run directory; they are not run data.
LEASE_FILES = (LEASE, LOCK, f".{LEASE}.tmp")
#: Seconds between heartbeats.
HEARTBEAT = 5.0
#: Seconds without a heartbeat after which a lease on an object store may be taken over.
STALE = 30.0


class Lease:
    """The lease of one run directory, held by this process.

    Examples
    --------
    >>> import tempfile
    >>> store = RunStore(tempfile.mkdtemp())
    >>> with Lease(store, attempt=1) as lease:
    ...     Lease(store, attempt=2).acquire()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    swarm.errors.LeaseError: ...
    """

    def __init__(self, store: RunStore, attempt: int = 1):
        self.store = store
        self.attempt = attempt
        self.token = secrets.token_hex(8)
        self.lost = False
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- taking and giving back ------------------------------------------------

    def acquire(self) -> Lease:
        """Take the lease or raise LeaseError saying who holds it."""
        if self.store.local:
            self._lock_local()
        else:
            self._claim_remote()
        try:
            self._beat()
        except BaseException:
            self._unlock()  # a full disk must not leave this process holding the lock
            raise
        self._thread = threading.Thread(target=self._heartbeat, name="swarm-lease",
                                        daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        """Stop the heartbeat, delete ``lease.json`` and unlock."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HEARTBEAT)
            self._thread = None
        try:
            # On an object store, only a lease that is still ours (another driver may
            # have taken it over since the last heartbeat).
            if not self.lost and (self.store.local
                                  or (self._read() or {}).get("token") == self.token):
                self.store.delete(LEASE)
        except StorageError:
            pass  # a vanished or full disk: the lock below still goes
        self._unlock()

    def _unlock(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False

    # -- local disks: an flock decides ---------------------------------------------

    def _lock_local(self) -> None:
        import fcntl

        # The lock file is never deleted: deleting it would let a second
        # process lock a new file of the same name while the first holds the old.
        path = self.store.path(LOCK)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot create the lease {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LeaseError(self._held_message(self._read())) from None
        self._fd = fd

    # -- object stores: heartbeats decide ------------------------------------------

    def _claim_remote(self) -> None:
        holder = self._read()
        if holder is not None and not self._stale(holder):
            raise LeaseError(self._held_message(holder))
        self._beat()
        time.sleep(0.5)  # let a racing claimant's write land, then see who won
        if (self._read() or {}).get("token") != self.token:
            raise LeaseError(self._held_message(self._read()))

    def _stale(self, holder: dict) -> bool:
        if holder.get("host") == socket.gethostname() and not _alive(holder.get("pid")):
            return True
        return time.time() - float(holder.get("heartbeat_unix", 0)) > STALE

    # -- the heartbeat -----------------------------------------------------------------

    def _beat(self) -> None:
        self.store.write_json(LEASE, {
            "host": socket.gethostname(), "pid": os.getpid(), "attempt": self.attempt,
            "token": self.token, "heartbeat_unix": time.time(),
        })

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            try:
                if not self.store.local and (self._read() or {}).get("token") != self.token:
                    self.lost = True  # taken over while this driver was stalled
                    return
                self._beat()
            except (StorageError, OSError):
                pass  # a full disk: the run's own writes report it

    def check(self) -> None:
        """Raise LeaseError when another driver took the lease over (object stores)."""
        if self.lost:
            raise LeaseError(f"{self.store.uri}: another driver took over this run's lease "
                             f"(no heartbeat for {STALE:g} s); this driver stops writing")

    def _read(self) -> dict | None:
        try:
            data = self.store.read_json(LEASE)
        except (FileNotFoundError, OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _held_message(self, holder: dict | None) -> str:
        if holder is None:
            who = "another driver (starting up)"
        else:
            age = time.time() - float(holder.get("heartbeat_unix", 0))
            who = (f"pid {holder.get('pid')} on {holder.get('host')} (attempt "
                   f"{holder.get('attempt')}, heartbeat {age:.0f} s ago)")
        rule = ("its lock is released when that process ends" if self.store.local else
                f"a lease with no heartbeat for {STALE:g} s may be taken over")
        return (f"{self.store.uri} is in use by {who}; wait for it to finish ({rule}), "
                "then try again")


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False  # not a process this lease can name (0 and -1 mean groups)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True
