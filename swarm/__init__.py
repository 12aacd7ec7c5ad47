"""swarm: a distributed simulator of large agent populations on social graphs.

``swarm.run(config, out)`` runs a population on Ray shards and leaves an
Arrow event log; ``swarm.open_run(path)`` reads one back.
"""

__version__ = "0.1.0"

from swarm.config import RunConfig, load_config, validate_config  # noqa: E402
from swarm.errors import ClusterError, ConfigError, GraphError, LogError, SwarmError  # noqa: E402
from swarm.rundir import Run, open_run  # noqa: E402
from swarm.runner import run  # noqa: E402

__all__ = [
    "ClusterError",
    "ConfigError",
    "GraphError",
    "LogError",
    "Run",
    "RunConfig",
    "SwarmError",
    "load_config",
    "open_run",
    "run",
    "validate_config",
]
