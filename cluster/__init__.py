"""Ray clusters (``swarm.cluster``): connecting to an embedded or existing Ray."""

from swarm.cluster.connect import ensure_ray, shard_cpus

__all__ = ["ensure_ray", "shard_cpus"]
