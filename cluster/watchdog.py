"""Ends an embedded Ray's processes once the driver that started it is gone.

:func:`swarm.cluster.connect.start_local_ray` starts this file as a small
script (``python -I -S watchdog.py DRIVER_PID SESSION_DIR``) right after
``ray.init``. Why it is needed: Ray ties only the processes the driver
spawns itself (GCS, raylet, monitors) to the driver, with PR_SET_PDEATHSIG.
The raylet's own children, the dashboard agent and the runtime-env agent,
notice the raylet's death at once but then spend 60 s (a fixed RPC timeout in
``ray._private.utils.publish_error_to_driver``) telling the dead GCS about
it, listening all the while; workers take a few seconds more. So when the
driver is SIGKILLed (OOM killer, a CI timeout, ``kill -9``) those processes
outlive it by a minute.

Which processes belong to that Ray: those that write into its session
directory (``/tmp/ray/session_...``, new for every ``ray.init``). Every Ray
process keeps its log files there open for writing, and a worker's children
inherit its stdout and stderr, which are files there too; once the raylet is
dead the process tree no longer says so, and Ray's process titles overwrite
command lines and environments. A reader (``tail -f`` on a log) is left
alone. When the driver exits, however it exits, this script SIGKILLs those
processes (of this user: others' are unreadable), then exits itself. Linux
only (it waits on a pidfd and reads /proc); it imports nothing beyond the
standard library so that it starts in milliseconds.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

__all__ = ["kill_session", "session_pids", "wait_for_exit"]


def wait_for_exit(pid: int) -> None:
    """Return once process ``pid``, this process's parent, has exited."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # Linux < 5.3, or it is gone already
        fd = None
    # Checked after pidfd_open: while our parent is still ``pid`` the pidfd
    # names that process, not a later one that reused the number.
    if os.getppid() != pid:
        return
    if fd is not None:
        select.select([fd], [], [])  # readable once the process has exited
        os.close(fd)
        return
    while os.getppid() == pid:
        time.sleep(0.2)


def _writes(pid: str, fd: str) -> bool:
    """True if file descriptor ``fd`` of ``pid`` is open for writing."""
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8) & os.O_ACCMODE != os.O_RDONLY
    except (OSError, ValueError, IndexError):
        pass
    return False


def session_pids(session_dir: str) -> list[int]:
    """The processes (of this user) with a file in ``session_dir`` open for writing."""
    prefix = os.path.realpath(session_dir).rstrip(os.sep) + os.sep
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # gone, or another user's
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith(prefix) and _writes(pid, fd):
                found.append(int(pid))
                break
    return found


def kill_session(session_dir: str, rounds: int = 5, pause: float = 0.2) -> int:
    """SIGKILL every process that writes into ``session_dir``; returns how many were signalled.

    A few rounds, because a raylet that has not yet died of its own signal
    may still be starting a worker while the first round runs.
    """
    killed = 0
    for _ in range(rounds):
        pids = session_pids(session_dir)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        time.sleep(pause)
    return killed


def main(argv: list[str]) -> None:
    driver, session_dir = int(argv[0]), argv[1]
    wait_for_exit(driver)
    kill_session(session_dir)


if __name__ == "__main__":
    # A Ctrl-C meant for the driver must not end the watchdog first; it also
    # runs in a session of its own, away from the terminal's signals.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    main(sys.argv[1:])
