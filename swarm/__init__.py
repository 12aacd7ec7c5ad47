"""swarm: a distributed simulator of large agent populations on social graphs.

``swarm.run(config, out)`` runs a population on Ray shards and leaves an
Arrow event log; ``swarm.resume(path)`` continues a stopped run from its last
checkpoint; ``swarm.open_run(path)`` reads one back.

Names load on first use, so ``import swarm.analysis`` or ``swarm --help`` pays
for neither the runner nor torch nor Ray.
"""

__version__ = "0.1.0"

from swarm.errors import (  # noqa: E402
    ClusterError,
    ConfigError,
    GraphError,
    LogError,
    RunInterrupted,
    SwarmError,
)

#: Public name -> the module that defines it (imported on first use).
_LAZY = {
    "RunConfig": "swarm.config",
    "load_config": "swarm.config",
    "validate_config": "swarm.config",
    "Run": "swarm.rundir",
    "open_run": "swarm.rundir",
    "run": "swarm.runner",
    "resume": "swarm.runner",
}

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


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'swarm' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
