"""swarm: a distributed simulator of large agent populations on social graphs.

``swarm.run(config, out)`` runs a population on Ray shards and leaves an
Arrow event log; ``swarm.resume(path)`` continues a stopped run from its last
checkpoint; ``swarm.open_run(path)`` reads one back.
"""

__version__ = "0.1.0"

from swarm.config import RunConfig, load_config, validate_config  # noqa: E402
from swarm.errors import (  # noqa: E402
    ClusterError,
    ConfigError,
    GraphError,
    LogError,
    RunInterrupted,
    SwarmError,
)
from swarm.rundir import Run, open_run  # noqa: E402
from swarm.runner import resume, run  # noqa: E402

__all__ = [
    "ClusterError",
    "ConfigError",
    "GraphError",
    "LogError",
    "Run",
    "RunConfig",
    "RunInterrupted",
    "SwarmError",
    "load_config",
    "open_run",
    "resume",
    "run",
    "validate_config",
]
