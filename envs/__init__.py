"""Interaction models (``swarm.envs``): the env contract and the registered envs."""

from swarm.envs.base import ENV_REGISTRY, Env, EnvConfig, ShardView, StepResult, register_env
from swarm.envs.cascade import Cascade, CascadeConfig

__all__ = [
    "ENV_REGISTRY",
    "Cascade",
    "CascadeConfig",
    "Env",
    "EnvConfig",
    "ShardView",
    "StepResult",
    "register_env",
]
