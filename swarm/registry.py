"""Where the engine finds envs and policies by key, without naming any.

Every env and every policy is known by a key: ``env.kind`` in a config, the
rule an env names as its default (``Env.default_policy``), ``policy.kind`` of
a population group. Built-ins and third-party packages declare theirs as
entry points in their package metadata, groups ``swarm.envs`` and
``swarm.policies`` (``cascade = "swarm.envs.cascade:Cascade"``); a class can
also be added at run time with ``register``. A key's module is imported the
first time the key is asked for, so validating a cascade config loads neither
the feed nor torch.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator, MutableMapping
from typing import Any

__all__ = ["ENVS", "POLICIES", "Registry"]


class Registry(MutableMapping):
    """Classes by key: registered ones, then the entry points of ``group`` (loaded lazily).

    >>> r = Registry("swarm.examples", "example")
    >>> r.register("seven", int)
    >>> r["seven"]("7"), sorted(r)
    (7, ['seven'])
    >>> r["eight"]
    Traceback (most recent call last):
    ...
    KeyError: "unknown example 'eight'; known: seven"
    """

    def __init__(self, group: str, what: str):
        self.group, self.what = group, what
        self._classes: dict[str, Any] = {}
        self._overrides: set[str] = set()
        self._points: dict[str, importlib.metadata.EntryPoint] | None = None

    def _entry_points(self) -> dict[str, importlib.metadata.EntryPoint]:
        if self._points is None:
            self._points = {ep.name: ep for ep in importlib.metadata.entry_points(group=self.group)}
        return self._points

    def register(self, key: str, cls: Any) -> None:
        """Make ``cls`` known as ``key``; a key taken by another class is an error."""
        if key in self._overrides:
            return  # a test swapped a variant in: the real class must not displace it
        known = self._classes.get(key)
        if known is not None and known is not cls:
            raise ValueError(f"a {self.what} named {key!r} is already registered ({known!r})")
        self._classes[key] = cls

    def unregister(self, key: str) -> None:
        """Forget a class added with ``register`` or ``[key] = cls`` (a test's env, say)."""
        self._classes.pop(key, None)
        self._overrides.discard(key)

    def __setitem__(self, key: str, cls: Any) -> None:
        """Put ``cls`` under ``key``, replacing what was there (tests swap a variant in)."""
        self._classes[key] = cls
        self._overrides.add(key)

    def __delitem__(self, key: str) -> None:
        self.unregister(key)

    def __getitem__(self, key: str) -> Any:
        cls = self._classes.get(key)
        if cls is not None:
            return cls
        point = self._entry_points().get(key)
        if point is None:
            raise KeyError(f"unknown {self.what} {key!r}; known: {', '.join(self)}")
        cls = point.load()
        # The module may have registered the class while it was imported.
        self._classes.setdefault(key, cls)
        return self._classes[key]

    def __contains__(self, key: object) -> bool:
        return key in self._classes or key in self._entry_points()

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(set(self._classes) | set(self._entry_points())))

    def __len__(self) -> int:
        return len(set(self._classes) | set(self._entry_points()))


#: Envs by ``env.kind``.
ENVS = Registry("swarm.envs", "env")
#: Policies by key: an env's default rule, or a population group's ``policy.kind``.
POLICIES = Registry("swarm.policies", "policy")
