"""Connecting to Ray: an embedded local Ray by default, or an existing cluster by address.

Only the runner and the CLI call this module.
"""

from __future__ import annotations

import os

from swarm.errors import ClusterError

__all__ = ["ensure_ray", "shard_cpus"]

# The default object store takes 30% of RAM (7.5 GB here); shards exchange
# messages of a few MB per step, so a small cap is plenty locally.
LOCAL_OBJECT_STORE_BYTES = 1 << 30


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Make sure Ray is initialized; returns True if this call started it.

    ``address`` (or RAY_ADDRESS) joins an existing cluster; otherwise an
    embedded local Ray starts with no dashboard and a capped object store.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, log_to_driver=True, logging_level="WARNING")
        else:
            # A local, single-user Ray needs no login token (Ray >= 2.5x asks for
            # one unless told otherwise); clusters keep whatever mode they run.
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            ray.init(
                include_dashboard=False,
                object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                num_cpus=num_cpus,
                logging_level="WARNING",
            )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address!r}" if address else "an embedded local Ray"
        raise ClusterError(
            f"could not start or join {where}: {exc}. Check that `ray start --head` runs there "
            "and the address is host:port of its GCS (default port 6379), or drop --address "
            "to run on an embedded local Ray."
        ) from exc
    return True


def _check_reachable(address: str, timeout: float = 3.0) -> None:
    """Fail in seconds on an address nothing listens at (ray.init retries for minutes)."""
    import socket

    if address == "auto" or address.startswith(("http://", "https://")):
        return  # "auto" finds a local cluster; HTTP addresses are job-server URLs
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterError(f"Ray address {address!r} is not host:port (e.g. 10.0.0.5:6379)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ClusterError(
            f"nothing answers at Ray address {address!r} ({exc}). Start the head with "
            f"`ray start --head --port {port}` there, check host and port (default 6379), or "
            "drop --address to run on an embedded local Ray."
        ) from None


def shard_cpus(num_shards: int) -> float:
    """CPUs to reserve per shard actor: 1, or a fraction when shards outnumber cores.

    Actors that ask for more CPUs than the cluster has stay pending forever.
    """
    import ray

    total = float(ray.cluster_resources().get("CPU", 1.0))
    return min(1.0, total / num_shards)
