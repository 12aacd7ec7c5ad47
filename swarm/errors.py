"""The exceptions swarm raises, so callers can catch what they can handle.

Every message names the problem and the fix: the config key and the allowed
values, the file and line, the address that could not be reached.

Each class carries the exit code the CLI ends with: 2 for bad input (a
config, a run directory, an address: what the user handed in), 3 for a
run-time failure (a full disk, a vanished directory, shards that kept
dying), 130 for an interrupted run.
"""

from __future__ import annotations

__all__ = [
    "SwarmError",
    "ConfigError",
    "GraphError",
    "LogError",
    "IntegrityError",
    "LeaseError",
    "StorageError",
    "ClusterError",
    "RunFailure",
    "PolicyError",
    "RunInterrupted",
    "ShardFailure",
]


class SwarmError(Exception):
    """Base class of every error swarm raises on purpose."""

    #: The CLI's exit code for this error: 2 is bad input.
    exit_code = 2


class ConfigError(SwarmError, ValueError):
    """A run configuration is invalid: an unknown key, a wrong type or an impossible value."""


class GraphError(SwarmError, ValueError):
    """A graph cannot be built or read: a malformed edge list, an impossible degree sequence."""


class LogError(SwarmError):
    """A run directory or its Arrow logs are missing, corrupt or would be overwritten."""


class IntegrityError(LogError):
    """A run directory's files disagree with what its manifest says was written."""


class LeaseError(LogError):
    """Another driver holds the run directory's lease (a run or resume is going on)."""


class ClusterError(SwarmError):
    """A Ray cluster cannot be reached or cannot host the run."""


class RunFailure(SwarmError):
    """A run failed while running, not because of its input (exit code 3)."""

    exit_code = 3


class StorageError(RunFailure, LogError):
    """Writing a run's files failed: a full disk, no permission, a vanished directory."""


class ShardFailure(RunFailure, ClusterError):
    """Shards kept dying and ``fault_tolerance.max_restarts`` is used up."""


class PolicyError(SwarmError):
    """A policy could not decide: its model backend failed and ``on_error`` is ``raise``."""


class RunInterrupted(SwarmError):
    """A run stopped on Ctrl-C after writing a checkpoint; ``swarm resume`` continues it."""

    exit_code = 130

    def __init__(self, message: str, path: str, step: int):
        super().__init__(message)
        self.path, self.step = path, step
