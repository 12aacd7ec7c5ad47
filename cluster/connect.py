"""Connecting to Ray: an embedded local Ray by default, or an existing cluster by address.

Only the runner, the sweep and the CLI call this module. The embedded Ray is
private to the process that starts it: every socket it opens listens on
loopback only, it asks for a token made for this run, and a watchdog ends
its processes when that process dies (see :func:`start_local_ray`). Before
joining a cluster, this module checks, in seconds, that the address is a Ray
GCS and that it accepts our token, if it wants one: ``ray.init`` itself
retries an unreachable or wrong address for minutes without saying why.
Clusters keep the authentication they run with; it is never turned off here.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from swarm.errors import ClusterError

__all__ = ["LOCAL_OBJECT_STORE_BYTES", "ensure_ray", "shard_cpus", "start_local_ray",
           "token_header", "token_problem"]

#: The default object store takes 30% of RAM (7.5 GB here); shards exchange
#: messages of a few MB per step, so a small cap is plenty locally.
LOCAL_OBJECT_STORE_BYTES = 1 << 30

_LOOPBACK = ("127.0.0.1", "::1")

_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")

# RAY_AUTH_* as they were before the first embedded Ray of this process set
# its own; None while none has.
_user_auth_env: dict[str, str | None] | None = None

# The watchdogs this process started; held so that none is reported as a
# "still running" ResourceWarning when its Popen object is collected.
_WATCHDOGS: list[subprocess.Popen] = []


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Make sure Ray is initialized; returns True if this call started it.

    ``address`` (or RAY_ADDRESS) joins an existing cluster with the token
    authentication the user configured for it, as Ray reads it (RAY_AUTH_MODE=token
    and RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token); otherwise an
    embedded local Ray starts (see :func:`start_local_ray`).

    Raises
    ------
    ClusterError
        The address is not a reachable Ray GCS, the cluster wants a token that is not
        set or refuses the one that is, or the embedded Ray failed to start.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address:
        start_local_ray(num_cpus=num_cpus)
        return True
    # The user's RAY_AUTH_*, even if an embedded Ray of this process replaced
    # them before (and Ray cached those per process).
    _restore_user_auth_env()
    _reload_auth_settings()
    token_header()  # RAY_AUTH_MODE=token without a token: say so before anything else
    _check_reachable(address)
    _check_gcs(address)
    try:
        ray.init(address=address, log_to_driver=True, logging_level="WARNING")
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
        where = f"the Ray cluster at {address!r}"
        if _is_auth_error(exc):
            raise ClusterError(f"{token_problem(where)}.") from None
        raise ClusterError(
            f"could not join {where}: {exc}. Check that `ray start --head` runs there "
            "and the address is host:port of its GCS (default port 6379), or drop --address "
            "to run on an embedded local Ray."
        ) from exc
    return True


def start_local_ray(num_cpus: int | None = None,
                    object_store_memory: int = LOCAL_OBJECT_STORE_BYTES) -> None:
    """Start an embedded Ray that only this process can use, and that dies with it.

    - Every listener (GCS, raylet and object manager, workers, the dashboard agent's
      gRPC, HTTP and metrics ports, the runtime-env agent, the autoscaler monitor)
      binds 127.0.0.1: the node's IP address is loopback.
    - Token authentication with a fresh random token, whatever RAY_AUTH_MODE says.
      It travels in the environment (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN), never in
      a file or on a command line; like Ray's own ray.init when it turns token
      authentication on, this process keeps both set, so that Ray's per-process
      caches and the environment agree for any later ray.init here. Joining a
      cluster through :func:`ensure_ray` afterwards puts the user's values back.
    - No dashboard, a capped object store (``object_store_memory`` bytes).
    - On Linux, a watchdog process SIGKILLs all of this Ray's processes within a
      second of this process's death, SIGKILL included (see
      :mod:`swarm.cluster.watchdog`).

    The test suite's shared Ray starts through here too.

    Raises
    ------
    ClusterError
        Ray failed to start, or would have listened beyond loopback.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        # Reloading the auth settings below would cut this process off its Ray.
        raise ClusterError("Ray is already running in this process; call ray.shutdown() "
                           "before starting an embedded Ray.")
    global _user_auth_env
    if _user_auth_env is None:
        _user_auth_env = {k: os.environ.get(k) for k in _AUTH_VARS}
    # The GCS and raylet copy this environment when ray.init starts them, and the
    # raylet hands it on to the agents and workers. It stays set: after a
    # ray.shutdown, Ray in this process still holds this token and would demand
    # it from the processes of the next Ray started here, which take theirs from
    # the environment.
    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)})
    try:
        with _loopback_node():
            _reload_auth_settings()
            context = ray.init(
                # "local": always a new Ray of our own; a bare ray.init() would join
                # any `ray start` cluster it finds on this machine instead.
                address="local",
                _node_ip_address="127.0.0.1",
                include_dashboard=False,
                object_store_memory=object_store_memory,
                num_cpus=num_cpus,
                logging_level="WARNING",
            )
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
        _restore_user_auth_env()
        _reload_auth_settings()
        raise ClusterError(
            f"could not start an embedded local Ray: {exc}. Ray's own logs are under "
            "/tmp/ray/session_latest/logs (or $RAY_TMPDIR); or run on a cluster with --address."
        ) from exc
    _start_watchdog(context.address_info["session_dir"])
    node_ip = ray.util.get_node_ip_address()
    if node_ip not in _LOOPBACK:  # a Ray that resolves loopback differently
        ray.shutdown()
        raise ClusterError(
            f"the embedded Ray took {node_ip} as its address, not loopback, and would "
            f"listen there; this Ray ({ray.__version__}) is not supported for local runs. "
            "Install the Ray version in swarm's requirements, or run on a cluster with "
            "--address."
        )


def _restore_user_auth_env() -> None:
    """Put back the RAY_AUTH_* values an embedded Ray of this process replaced, if any."""
    global _user_auth_env
    if _user_auth_env is None:
        return
    for k, v in _user_auth_env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    _user_auth_env = None


@contextmanager
def _loopback_node() -> Iterator[None]:
    """Have ``ray.init`` keep 127.0.0.1 as the node's address.

    Every Ray server binds loopback when the node's IP address is 127.0.0.1 and
    all interfaces otherwise. On Linux, though, ray.init turns 127.0.0.1 into the
    machine's outward address (``services.resolve_ip_for_localhost``) unless
    ``ray_constants.ENABLE_RAY_CLUSTER`` is false: Ray's single-machine mode, the
    default on macOS and Windows, otherwise set only by the environment variable
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before Ray is imported. That variable
    would also stop `ray start --address` in this process's children, so the
    switch is flipped in this process only, and only while ray.init runs; the
    Ray processes get the address on their command lines.
    """
    import ray._private.ray_constants as ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def _start_watchdog(session_dir: str) -> None:
    """Start :mod:`swarm.cluster.watchdog` for this process and its Ray's ``session_dir``."""
    from swarm.cluster import watchdog

    if not sys.platform.startswith("linux") or not sys.executable:
        return  # it needs /proc and pidfds; elsewhere Ray's own clean-up is all there is
    _WATCHDOGS.append(subprocess.Popen(
        # -I -S: no site-packages, no PYTHON* variables: it starts in milliseconds
        # and imports only the standard library.
        [sys.executable, "-I", "-S", watchdog.__file__, str(os.getpid()), session_dir],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        # Its own session: a Ctrl-C or hang-up aimed at the driver's terminal does
        # not end it before the driver.
        start_new_session=True,
    ))


def _reload_auth_settings() -> None:
    """Make Ray in this process read RAY_AUTH_MODE and the token again.

    Ray reads both once per process and caches them (the mode in its C++
    config, the token in ``AuthenticationTokenLoader``); ``import ray`` alone can
    be enough to fix them. Ray's own ray.init does the same when it turns token
    authentication on. Rays without token authentication (before 2.5x) have
    nothing to reload.
    """
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _token_source() -> str:
    """Where Ray takes the token from, in Ray's order of precedence."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return f"RAY_AUTH_TOKEN_PATH ({os.environ['RAY_AUTH_TOKEN_PATH']})"
    return "~/.ray/auth_token"


def token_header() -> dict[str, str]:
    """The ``authorization`` header Ray would send: empty unless RAY_AUTH_MODE=token.

    Raises
    ------
    ClusterError
        RAY_AUTH_MODE=token but Ray finds no token.
    """
    if os.environ.get("RAY_AUTH_MODE", "").strip().lower() != "token":
        return {}
    try:
        from ray._raylet import AuthenticationTokenLoader
    except ImportError:  # a Ray without token authentication
        return {}
    header = dict(AuthenticationTokenLoader.instance().get_token_for_http_header(
        ignore_auth_mode=True))
    if not header:
        raise ClusterError(
            "RAY_AUTH_MODE=token but no token is set: set RAY_AUTH_TOKEN to the cluster's "
            "token, or RAY_AUTH_TOKEN_PATH to a file that holds it (Ray also reads "
            "~/.ray/auth_token)."
        )
    return header


def token_problem(where: str, sent: bool | None = None) -> str:
    """One line on why ``where`` refused us: no token configured, or the wrong one.

    ``sent`` says whether a token went with the request; None: whether one is
    configured now.
    """
    if sent is None:
        sent = os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "token"
    if sent:
        return (f"{where} refused the token from {_token_source()}: it is not the token the "
                "cluster was started with; set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to "
                "the cluster's token")
    return (f"{where} requires a token: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN to the "
            "cluster's token (or RAY_AUTH_TOKEN_PATH to a file that holds it; Ray also "
            "reads ~/.ray/auth_token)")


def _is_auth_error(exc: BaseException) -> bool:
    import ray

    auth_error = getattr(ray.exceptions, "AuthenticationError", None)
    return auth_error is not None and isinstance(exc, auth_error)


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
    tells the two apart. The probe carries the token Ray would send (see
    :func:`token_header`), so a cluster that wants a token, or another one,
    says so here too: ray.init would retry for 20 s and then blame the GCS.
    Skipped where it cannot speak the GCS's dialect: a Ray Client
    (``ray://``) address, TLS, or no grpcio installed.
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
    metadata = tuple(token_header().items())
    target = address.split("://", 1)[-1]
    channel = grpc.insecure_channel(target)
    try:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=timeout,
                          metadata=metadata)
    except grpc.RpcError as exc:
        code = exc.code()
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            where = f"the Ray cluster at {address!r}"
            raise ClusterError(f"{token_problem(where, sent=bool(metadata))}.") from None
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
