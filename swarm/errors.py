"""The exceptions swarm raises, so callers can catch what they can handle.

Every message names the problem and the fix: the config key and the allowed
values, the file and line, the address that could not be reached.
"""

from __future__ import annotations

__all__ = [
    "SwarmError",
    "ConfigError",
    "GraphError",
    "LogError",
    "ClusterError",
    "PolicyError",
    "RunInterrupted",
]


class SwarmError(Exception):
    """Base class of every error swarm raises on purpose."""


class ConfigError(SwarmError, ValueError):
    """A run configuration is invalid: an unknown key, a wrong type or an impossible value."""


class GraphError(SwarmError, ValueError):
    """A graph cannot be built or read: a malformed edge list, an impossible degree sequence."""


class LogError(SwarmError):
    """A run directory or its Arrow logs are missing, corrupt or would be overwritten."""


class ClusterError(SwarmError):
    """A Ray cluster cannot be reached or cannot host the run."""


class PolicyError(SwarmError):
    """A policy could not decide: its model backend failed and ``on_error`` is ``raise``."""


class RunInterrupted(SwarmError):
    """A run stopped on Ctrl-C after writing a checkpoint; ``swarm resume`` continues it."""

    def __init__(self, message: str, path: str, step: int):
        super().__init__(message)
        self.path, self.step = path, step
