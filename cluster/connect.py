"""Connecting to Ray: an embedded local Ray by default, or an existing cluster by address.

Only the runner and the CLI call this module. Before joining a cluster it
checks, in seconds, that the address is a Ray GCS: ``ray.init`` itself
retries an unreachable or wrong address for minutes without saying why.
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
        _check_gcs(address)
    try:
        if address:
            ray.init(address=address, log_to_driver=True, logging_level="WARNING")
        else:
            # A local, single-user Ray needs no login token (Ray >= 2.5x asks for
            # one unless told otherwise); clusters keep whatever mode they run.
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            ray.init(
                # "local": always a new Ray of our own; a bare ray.init() would join
                # any `ray start` cluster it finds on this machine instead.
                address="local",
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


def _split_address(address: str) -> tuple[str, int]:
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ClusterError(f"Ray address {address!r} is not host:port (e.g. 10.0.0.5:6379)")
    return host.strip("[]"), int(port)  # [::1]:6379 -> ::1 for the socket


def _check_reachable(address: str, timeout: float = 3.0) -> None:
    """Fail in seconds on an address nothing listens at (ray.init retries for minutes)."""
    import socket

    if address == "auto":
        return  # "auto" finds a local cluster from Ray's own files
    if address.startswith(("http://", "https://")):
        # A dashboard URL is what the Jobs API takes; ray.init would not say so.
        raise ClusterError(
            f"Ray address {address!r} is a dashboard (Jobs API) URL; `swarm run --address` "
            "and RAY_ADDRESS join a cluster by its GCS address host:port (default port 6379). "
            f"To send the run to that cluster as a job, use `swarm submit CONFIG --address "
            f"{address}`; or unset RAY_ADDRESS to run on an embedded local Ray."
        )
    host, port = _split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise ClusterError(
            f"nothing answers at Ray address {address!r} ({exc}). Start the head with "
            f"`ray start --head --port {port}` there, check host and port (default 6379), or "
            "drop --address to run on an embedded local Ray."
        ) from None


def _check_gcs(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds when something listens at ``address`` but it is not a Ray GCS.

    ``ray.init`` takes a wrong port (the dashboard's, a database's) for a GCS
    that is slow to start and retries for minutes; one GCS RPC with a deadline
    tells the two apart. Skipped where it cannot speak the GCS's dialect: a
    Ray Client (``ray://``) address, TLS, or no grpcio installed.
    """
    if address == "auto" or address.startswith("ray://"):
        return
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return  # the probe's plaintext channel would fail on a healthy TLS GCS
    try:
        import grpc
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
    except ImportError:  # pragma: no cover - ray[default] brings grpcio
        return
    target = address.split("://", 1)[-1]
    channel = grpc.insecure_channel(target)
    try:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=timeout)
    except grpc.RpcError as exc:
        code = exc.code()
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return  # a GCS that wants a token: ray.init brings it (or says so)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            why = f"it accepted a connection but did not answer within {timeout:g} s"
        elif code == grpc.StatusCode.UNIMPLEMENTED:
            why = "it speaks gRPC but has no GCS service"
        else:
            why = "it does not speak gRPC"
        raise ClusterError(
            f"{address!r} answers but is not a Ray cluster's GCS ({why}). --address and "
            "RAY_ADDRESS take the head's GCS address host:port, the --port of `ray start "
            "--head` (default 6379), not the dashboard (8265) or Ray Client (10001) port; "
            "for the Jobs API use `swarm submit CONFIG --address http://HEAD:8265`."
        ) from None
    finally:
        channel.close()


def shard_cpus(num_shards: int) -> float:
    """CPUs to reserve per shard actor: 1, or a fraction when shards outnumber cores.

    Actors that ask for more CPUs than the cluster has stay pending forever.
    """
    import ray

    total = float(ray.cluster_resources().get("CPU", 1.0))
    return min(1.0, total / num_shards)
