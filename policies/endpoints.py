"""Who may receive what: API-key rules for model endpoints, and trusting another's run.

The decide stage of ``backend: openai`` agents sends prompts, and an API key
read from the environment, to the config's ``base_url``. Configs and run
directories can come from other people, so three rules hold here:

* a key comes only from a variable named like ``OPENAI_API_KEY``
  (:data:`API_KEY_ENV_PATTERN`), never from ``HOME``, ``AWS_SECRET_ACCESS_KEY``
  or any other variable a config might name;
* a key never travels over plain ``http://`` beyond loopback
  (:func:`sends_in_clear`);
* ``swarm resume`` of a run directory another user wrote does not contact
  the endpoints its manifest names unless the user says so
  (:func:`check_endpoints_trusted`, ``--trust-endpoint``).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from typing import Any

from swarm.errors import ConfigError

__all__ = [
    "API_KEY_ENV_PATTERN",
    "check_api_key_env",
    "check_endpoints_trusted",
    "check_key_transport",
    "config_endpoints",
    "is_loopback_url",
    "manifest_owner_uid",
    "sends_in_clear",
]

log = logging.getLogger(__name__)

#: The only environment variables an API key is read from.
API_KEY_ENV_PATTERN = re.compile(r"^[A-Z][A-Z0-9_]*_API_KEY$")


def check_api_key_env(name: str | None) -> str | None:
    """``name`` itself if it may hold an API key (or is None: no key); else a ValueError.

    Examples
    --------
    >>> check_api_key_env("OPENAI_API_KEY")
    'OPENAI_API_KEY'
    >>> try:
    ...     check_api_key_env("AWS_SECRET_ACCESS_KEY")
    ... except ValueError as exc:
    ...     print(str(exc).split(" (e.g.")[0])
    api_key_env must name a variable matching ^[A-Z][A-Z0-9_]*_API_KEY$
    """
    if name is None or (isinstance(name, str) and API_KEY_ENV_PATTERN.fullmatch(name)):
        return name
    raise ValueError(f"api_key_env must name a variable matching {API_KEY_ENV_PATTERN.pattern} "
                     "(e.g. OPENAI_API_KEY): only such variables are sent to an endpoint, so a "
                     "config cannot send another secret; put the key in e.g. MY_SERVER_API_KEY, "
                     "or set api_key_env: null for a server without a key")


def _host(url: str) -> tuple[str, str] | None:
    """(scheme, host) of ``url`` as httpx, which sends the requests, reads them; None if
    it cannot."""
    import httpx

    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return None
    return parsed.scheme.lower(), parsed.host.lower().rstrip(".")


def is_loopback_url(url: str) -> bool:
    """Whether ``url``'s host is this machine: 127.0.0.0/8, ::1 or ``localhost``.

    Other names are not resolved: what DNS says can change, and another
    user's config may name a host that resolves to anything.

    Examples
    --------
    >>> [is_loopback_url(u) for u in ("http://127.0.0.1:8000/v1", "http://[::1]/v1",
    ...                               "http://localhost/v1", "http://10.0.0.5/v1",
    ...                               "http://127.0.0.1@example.com/v1")]
    [True, True, True, False, False]
    """
    parts = _host(url)
    if parts is None:
        return False
    host = parts[1]
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def sends_in_clear(url: str) -> bool:
    """Whether a request to ``url`` crosses a network unencrypted (plain http, not loopback).

    Examples
    --------
    >>> [sends_in_clear(u) for u in ("https://api.example.com/v1", "http://127.0.0.1:8000/v1",
    ...                              "http://gpu-box:8000/v1")]
    [False, False, True]
    """
    parts = _host(url)
    return parts is not None and parts[0] == "http" and not is_loopback_url(url)


def check_key_transport(base_url: str, api_key_env: str | None, key_present: bool = True,
                        ) -> None:
    """A ValueError if the key in ``api_key_env`` would travel in clear to ``base_url``.

    ``key_present`` False (the variable is unset, so nothing is sent) passes.
    """
    if api_key_env and key_present and sends_in_clear(base_url):
        raise ValueError(f"api_key_env {api_key_env} would be sent in clear to {base_url} "
                         "(plain http beyond loopback); use an https:// base_url, a server on "
                         "127.0.0.1, or api_key_env: null if the server takes no key")


# -- resuming another user's run ------------------------------------------------------------


def config_endpoints(config: Any) -> list[tuple[str, str]]:
    """``(config key, base_url)`` of each population group whose policy calls an endpoint.

    ``config`` is a RunConfig or the plain dict a manifest holds.

    Examples
    --------
    >>> config_endpoints({"population": {"groups": [
    ...     {"policy": {"kind": "default"}},
    ...     {"policy": {"kind": "llm", "backend": "openai", "base_url": "https://x/v1"}}]}})
    [('population.groups.1.policy.base_url', 'https://x/v1')]
    """
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json", exclude={"env"})
    population = config.get("population") if isinstance(config, dict) else None
    groups = population.get("groups") if isinstance(population, dict) else None
    found = []
    for i, group in enumerate(groups if isinstance(groups, list) else []):
        policy = group.get("policy") if isinstance(group, dict) else None
        if (isinstance(policy, dict) and policy.get("backend") == "openai"
                and policy.get("base_url")):
            found.append((f"population.groups.{i}.policy.base_url", str(policy["base_url"])))
    return found


def manifest_owner_uid(store: Any) -> int | None:
    """The uid that owns the run's manifest.json; None where it cannot be known.

    Non-local stores (``s3://``, ``gs://``) have no owner uid; neither has a
    manifest.json that is a symbolic link (the link's target could be
    swapped after it was read), so both count as another user's.
    """
    if not getattr(store, "local", False):
        return None
    try:
        fd = os.open(store.path("manifest.json"), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        return os.fstat(fd).st_uid
    finally:
        os.close(fd)


def check_endpoints_trusted(config: Any, store: Any, trust: bool) -> list[tuple[str, str]]:
    """Refuse to resume another user's run that calls model endpoints, unless ``trust``.

    A run directory written by someone else holds a config they chose; its
    ``base_url`` could send the prompts, and an API key from this user's
    environment, to a server of theirs. So resuming such a run with any
    ``backend: openai`` group raises a ConfigError that lists the endpoints,
    until the user passes ``--trust-endpoint`` (``trust=True``). A run is
    another user's when the owner of its manifest.json is not this process's
    uid, or cannot be known (non-local stores, see :func:`manifest_owner_uid`).

    Parameters
    ----------
    config : RunConfig or dict
        The run's config (from its manifest).
    store : RunStore
        The run directory.
    trust : bool
        The user trusts the endpoints (``swarm resume --trust-endpoint``).

    Returns
    -------
    list of (str, str)
        The endpoints found, as (config key, base_url).

    Raises
    ------
    ConfigError
        Another user's run names endpoints and ``trust`` is False.
    """
    endpoints = config_endpoints(config)
    if not endpoints:
        return endpoints
    owner = manifest_owner_uid(store)
    if owner is not None and owner == os.getuid():
        return endpoints
    where = getattr(store, "child_uri", lambda *p: str(store))()
    who = ("its owner cannot be known on this store" if owner is None
           else f"its manifest.json belongs to uid {owner}, not to you (uid {os.getuid()})")
    listed = "; ".join(f"{key}: {url}" for key, url in endpoints)
    if not trust:
        raise ConfigError(f"{where} was written by another user ({who}), and its config sends "
                          f"prompts and any API key to these endpoints: {listed}. Check them, "
                          f"then resume with --trust-endpoint (swarm.resume(..., "
                          "trust_endpoint=True)) if you trust them")
    log.warning("resuming %s, written by another user, with its endpoints trusted: %s",
                where, listed)
    return endpoints
