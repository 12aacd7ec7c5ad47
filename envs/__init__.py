"""Interaction models (``swarm.envs``): the env contract and the registered envs.

The contract (``Env``, ``EnvConfig``, ``ShardView``, ``StepResult``, ...) loads
with the package; each env's module loads when it is first named, here or by
``env.kind`` through ``swarm.registry.ENVS``.
"""

from swarm.envs.base import ENV_REGISTRY, Env, EnvConfig, ShardView, StepResult, register_env

#: Public name -> the module that defines it (imported on first use).
_LAZY = {
    "Cascade": "cascade", "CascadeConfig": "cascade",
    "Commons": "commons", "CommonsConfig": "commons",
    "Consensus": "consensus", "ConsensusConfig": "consensus",
    "ContractNet": "contract_net", "ContractNetConfig": "contract_net",
    "Feed": "feed", "FeedConfig": "feed",
    "Games": "games", "GamesConfig": "games",
    "Opinion": "opinion", "OpinionConfig": "opinion",
}

__all__ = ["ENV_REGISTRY", "Env", "EnvConfig", "ShardView", "StepResult", "register_env",
           *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'swarm.envs' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"swarm.envs.{module}"), name)
