"""Interaction models (``swarm.envs``): the env contract and the registered envs."""

from swarm.envs.base import ENV_REGISTRY, Env, EnvConfig, ShardView, StepResult, register_env
from swarm.envs.cascade import Cascade, CascadeConfig
from swarm.envs.commons import Commons, CommonsConfig
from swarm.envs.consensus import Consensus, ConsensusConfig
from swarm.envs.feed import Feed, FeedConfig
from swarm.envs.games import Games, GamesConfig
from swarm.envs.opinion import Opinion, OpinionConfig

__all__ = [
    "ENV_REGISTRY",
    "Cascade",
    "CascadeConfig",
    "Commons",
    "CommonsConfig",
    "Consensus",
    "ConsensusConfig",
    "Env",
    "EnvConfig",
    "Feed",
    "FeedConfig",
    "Games",
    "GamesConfig",
    "Opinion",
    "OpinionConfig",
    "ShardView",
    "StepResult",
    "register_env",
]
