"""Runs as Ray jobs: submit ``swarm run`` to a cluster's Jobs API, then follow it.

``swarm submit`` uploads the current folder (configs, edge lists) as the
job's working directory and asks the head to run ``swarm run CONFIG --out
OUT`` there; the driver runs on the head and its shards on any node, so the
run directory must be storage that every node sees. ``swarm status`` and
``swarm logs`` read the job back. The cluster's nodes run the swarm installed
on them (cluster/configs/ installs it); only data travels with the job.

Every call first checks, in seconds, that the address is a Ray dashboard
and that it takes our token, if it wants one: the Jobs SDK sends its
requests with no time limit, so a silent or wrong address would hang it.
A cluster with token authentication takes the token the way Ray reads it:
RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, or
~/.ray/auth_token).

Experimental: the command names and output may change.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shlex
import socket
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from swarm.cluster.connect import token_header, token_problem
from swarm.errors import ClusterError

__all__ = [
    "DEFAULT_JOBS_ADDRESS",
    "SOURCE_TREE_EXCLUDES",
    "UPLOAD_EXCLUDES",
    "JobReport",
    "SubmittedRun",
    "follow_job_logs",
    "job_logs",
    "job_status",
    "jobs_client",
    "resolve_jobs_address",
    "submit_run",
]

#: Where a head started with `ray start --head` serves its dashboard and Jobs API.
DEFAULT_JOBS_ADDRESS = "http://127.0.0.1:8265"

#: Left out of the uploaded working directory (gitignore patterns, relative to
#: it): environments, VCS data, caches and earlier runs' logs are big and the
#: job never reads them. Ray also honours the folder's .gitignore.
UPLOAD_EXCLUDES = [
    ".venv/", "venv/", ".git/", "runs/", "__pycache__/", "*.pyc", "*.arrow",
    "*.egg-info/", ".pytest_cache/", ".ruff_cache/", ".mypy_cache/", "node_modules/",
    ".ipynb_checkpoints/", "/build/", "/dist/",
]

#: Swarm's own source folders, left out when submitting from a swarm checkout.
#: Ray puts the working directory first on the job's PYTHONPATH, and there a
#: bare ``swarm/`` folder would shadow the installed package without its
#: ``envs/``, ``policies/``, ``cluster/`` siblings (mapped in by package-dir).
SOURCE_TREE_EXCLUDES = ["/swarm/", "/envs/", "/policies/", "/analysis/", "/cluster/",
                        "/tests/", "/benchmarks/"]

_TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass(frozen=True)
class SubmittedRun:
    """A run handed to a cluster's Jobs API."""

    job_id: str
    """The submission id, for ``swarm status`` / ``swarm logs``."""
    address: str
    """The Jobs API (dashboard) URL it was sent to."""
    entrypoint: str
    """The shell command the head runs."""
    out: str
    """The run directory, as the cluster sees it."""
    working_dir: str
    """The local folder uploaded as the job's working directory."""


@dataclass(frozen=True)
class JobReport:
    """What the Jobs API says about one job."""

    job_id: str
    status: str
    """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    message: str
    entrypoint: str
    metadata: dict[str, str]

    @property
    def done(self) -> bool:
        """True once the job can change no more."""
        return self.status in _TERMINAL


def resolve_jobs_address(address: str | None = None) -> str:
    """The Jobs API URL to use: ``address``, else RAY_API_SERVER_ADDRESS, else an
    ``http(s)://`` RAY_ADDRESS, else :data:`DEFAULT_JOBS_ADDRESS`.

    A bare ``host:port`` gets ``http://``. RAY_ADDRESS is skipped unless it is a
    URL because it usually holds a GCS address (host:6379), which is no Jobs API.

    Examples
    --------
    >>> resolve_jobs_address("10.0.0.5:8265")
    'http://10.0.0.5:8265'
    >>> resolve_jobs_address("https://ray.example.org/")
    'https://ray.example.org'
    """
    if not address:
        address = os.environ.get("RAY_API_SERVER_ADDRESS") or None
    if not address:
        env = os.environ.get("RAY_ADDRESS", "")
        address = env if env.startswith(("http://", "https://")) else DEFAULT_JOBS_ADDRESS
    address = address.strip().rstrip("/")
    if address.startswith("ray://"):
        raise ClusterError(
            f"{address!r} is a Ray Client address; the Jobs API is the dashboard's URL, "
            "e.g. --address http://HEAD:8265."
        )
    if "://" not in address:
        address = f"http://{address}"
    return address


def _check_dashboard(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds unless a Ray dashboard answers at ``address``."""
    import requests
    from urllib3.util import parse_url

    fix = ("Pass the head's dashboard URL with --address http://HEAD:8265 (or set "
           "RAY_API_SERVER_ADDRESS); the head must run the dashboard (`ray start --head "
           "--include-dashboard true`, with ray[default] installed) and, for a remote head, "
           "`--dashboard-host 0.0.0.0` or a port forward.")
    url = parse_url(address)
    port = url.port or (443 if url.scheme == "https" else 80)
    # A TCP connect first, so "nothing listens" and "something else listens"
    # get different messages.
    try:
        with socket.create_connection((url.host or "", port), timeout=timeout):
            pass
    except OSError as exc:
        raise ClusterError(f"nothing answers at Ray Jobs address {address!r} ({exc}). {fix}"
                           ) from None
    # The token Ray's Jobs SDK will send; a head with token authentication
    # answers 401 (none) or 403 (another) on every API route.
    headers = token_header()
    try:
        r = requests.get(f"{address}/api/version", timeout=(timeout, timeout), headers=headers)
        version = r.json().get("ray_version") if r.status_code == 200 else None
    except requests.exceptions.Timeout:
        why = f"it accepted a connection but sent no HTTP answer within {timeout:g} s"
    except (requests.exceptions.RequestException, ValueError, AttributeError) as exc:
        why = f"no Ray dashboard answer: {type(exc).__name__}"
    else:
        if version:
            return
        if r.status_code in (401, 403) and "authentication token" in r.text:
            where = f"the Ray dashboard at {address!r}"
            raise ClusterError(f"{token_problem(where, sent=bool(headers))}.")
        why = f"GET /api/version gave HTTP {r.status_code} without a Ray version"
    raise ClusterError(
        f"{address!r} answers but is not a Ray dashboard ({why}); the GCS port (6379) and "
        f"the Ray Client port (10001) are not the Jobs API. {fix}"
    )


def _quiet_sdk_logs() -> None:
    # The SDK logs "Uploading package ..." and "WebSocket closed ..." at INFO on
    # stderr, in between the lines the CLI prints; its warnings still show.
    for name in ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk",
                 "ray._private.runtime_env.packaging"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Recent Rays warn that they now leave .git and .venv out of a working_dir;
    # UPLOAD_EXCLUDES leaves them out anyway, so the warning only confuses.
    logging.getLogger("ray._private.runtime_env.working_dir").setLevel(logging.ERROR)


def _sdk_errors() -> tuple[type[Exception], ...]:
    from ray.exceptions import RayError

    # requests' errors are OSErrors, HTTP failures come as RuntimeError, and a
    # cluster that wants a token raises AuthenticationError (a RayError).
    return (OSError, RuntimeError, ValueError, RayError)


def jobs_client(address: str | None = None) -> Any:
    """A ``ray.job_submission.JobSubmissionClient`` for a checked dashboard address."""
    address = resolve_jobs_address(address)
    _check_dashboard(address)
    try:
        from ray.job_submission import JobSubmissionClient

        _quiet_sdk_logs()  # after the import, which sets the SDK loggers' levels
        return JobSubmissionClient(address)
    except ImportError as exc:  # pragma: no cover - a dependency of swarm
        raise ClusterError(f"the Ray Jobs SDK is missing ({exc}); install "
                           "`ray[default]`.") from None
    except _sdk_errors() as exc:
        raise ClusterError(f"cannot use the Ray Jobs API at {address!r}: {exc}") from None


def _config_in_working_dir(config: str, working_dir: str) -> str:
    """CONFIG as a path relative to the working directory, which is all the job sees."""
    rel = os.path.relpath(os.path.abspath(config), working_dir)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        raise ClusterError(
            f"config {config!r} is outside the folder `swarm submit` uploads ({working_dir}); "
            "run it from a folder that contains the config (and any edge list it names)."
        )
    return rel.replace(os.sep, "/")


def _cluster_out(out: str) -> str:
    if "://" in out:
        return out  # an object-store URI (s3://, gs://) every node can reach
    if not os.path.isabs(out):
        raise ClusterError(
            f"--out {out!r} is relative: on the cluster it would land in the job's temporary "
            "copy of the working directory, which Ray deletes. Give an absolute path on "
            "storage every node sees (e.g. /mnt/shared/runs/x) or an s3:// or gs:// URI."
        )
    return out


def _is_swarm_checkout(folder: str) -> bool:
    try:
        with open(os.path.join(folder, "pyproject.toml"), encoding="utf-8") as f:
            return re.search(r'(?m)^name\s*=\s*"swarm"\s*$', f.read()) is not None
    except OSError:
        return False


def submit_run(
    config: str,
    out: str,
    *,
    address: str | None = None,
    overrides: Sequence[str] = (),
    shards: int | None = None,
    working_dir: str | None = None,
) -> SubmittedRun:
    """Validate CONFIG here, then have the cluster run ``swarm run CONFIG --out OUT``.

    Parameters
    ----------
    config : str
        A run config inside ``working_dir``.
    out : str
        The run directory as the cluster sees it: an absolute path on storage
        every node shares, or an ``s3://`` / ``gs://`` URI.
    address : str, optional
        The Jobs API URL (see :func:`resolve_jobs_address`).
    overrides : sequence of str
        ``dotted.key=value`` overrides, passed on as ``--set``.
    shards : int, optional
        Override ``shards``.
    working_dir : str, optional
        The folder to upload; default the current directory.

    Returns
    -------
    SubmittedRun
        The job id and what was sent.

    Raises
    ------
    ConfigError
        The config is invalid (nothing is submitted).
    ClusterError
        The address is not a reachable Ray dashboard, or the Jobs API refused.
    """
    from swarm.config import load_config

    checks = list(overrides) + ([f"shards={shards}"] if shards is not None else [])
    load_config(config, checks)  # a bad config fails here, not minutes later on the cluster
    working_dir = os.path.abspath(working_dir or os.getcwd())
    rel_config = _config_in_working_dir(config, working_dir)
    out = _cluster_out(out)
    args = ["swarm", "run", rel_config, "--out", out, "--no-progress"]
    for item in overrides:
        args += ["--set", item]
    if shards is not None:
        args += ["--shards", str(shards)]
    entrypoint = shlex.join(args)
    excludes = UPLOAD_EXCLUDES + (SOURCE_TREE_EXCLUDES if _is_swarm_checkout(working_dir)
                                  else [])
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", os.path.splitext(os.path.basename(config))[0])
    job_id = f"swarm-{stem}-{uuid.uuid4().hex[:8]}"

    client = jobs_client(address)
    try:
        job_id = client.submit_job(
            entrypoint=entrypoint,
            submission_id=job_id,
            runtime_env={"working_dir": working_dir, "excludes": excludes},
            metadata={"swarm_config": rel_config, "swarm_out": out},
        )
    except _sdk_errors() as exc:
        raise ClusterError(f"the Ray Jobs API at {client.get_address()!r} refused the job: "
                           f"{exc}") from None
    return SubmittedRun(job_id=job_id, address=client.get_address(), entrypoint=entrypoint,
                        out=out, working_dir=working_dir)


def _not_found(exc: Exception, job_id: str, address: str) -> ClusterError:
    if "404" in str(exc) or "does not exist" in str(exc):
        return ClusterError(f"no job {job_id!r} at {address!r}; `ray job list --address "
                            f"{address}` lists the jobs there.")
    return ClusterError(f"the Ray Jobs API at {address!r} failed: {exc}")


def job_status(job_id: str, *, address: str | None = None) -> JobReport:
    """The status, message, entrypoint and metadata of one job."""
    client = jobs_client(address)
    try:
        info = client.get_job_info(job_id)
    except _sdk_errors() as exc:
        raise _not_found(exc, job_id, client.get_address()) from None
    status = getattr(info.status, "value", str(info.status))
    return JobReport(job_id=job_id, status=status, message=info.message or "",
                     entrypoint=info.entrypoint or "", metadata=dict(info.metadata or {}))


def job_logs(job_id: str, *, address: str | None = None) -> str:
    """Everything the job's driver has printed so far."""
    client = jobs_client(address)
    try:
        return client.get_job_logs(job_id)
    except _sdk_errors() as exc:
        raise _not_found(exc, job_id, client.get_address()) from None


def follow_job_logs(job_id: str, *, address: str | None = None) -> Iterator[str]:
    """Yield the job's log from the start, then new lines as they come, until it ends."""
    client = jobs_client(address)
    try:
        client.get_job_info(job_id)  # an unknown id would otherwise wait on a dead socket
    except _sdk_errors() as exc:
        raise _not_found(exc, job_id, client.get_address()) from None
    import aiohttp

    errors = (*_sdk_errors(), aiohttp.ClientError)
    # The SDK only offers an async generator; drive it from a private loop so
    # callers (the CLI) stay synchronous.
    loop = asyncio.new_event_loop()
    chunks = client.tail_job_logs(job_id)
    try:
        while True:
            try:
                yield loop.run_until_complete(chunks.__anext__())
            except StopAsyncIteration:
                return
            except errors as exc:
                raise ClusterError(f"lost the log stream of job {job_id!r}: {exc}; "
                                   f"`swarm logs {job_id}` prints what was written.") from None
    finally:
        loop.run_until_complete(chunks.aclose())
        loop.close()
