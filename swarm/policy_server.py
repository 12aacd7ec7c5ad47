"""Starting policy servers for a run and the backend the shards use to reach them.

For every LLM-style group with ``server: true`` the runner starts
``replicas`` ``PolicyServer`` actors before the shards (``num_gpus=1`` each
when the cluster has GPUs and the policy may use one, else no CPU
reservation, since the shards hold the cores) and gives each shard a
``ServerBackend`` that sends its prompts to one replica (shard k to replica
k mod replicas). With the local backend the servers are plain objects in
this process.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from swarm.errors import ClusterError
from swarm.policies.backends.base import Backend, BackendError
from swarm.policies.llm import LLMPolicyConfig
from swarm.policies.server import PolicyServer

__all__ = ["PolicyServers", "ServerBackend"]


class ServerBackend(Backend):
    """A Backend whose calls go to a policy server (a Ray actor or a local object)."""

    name = "server"

    def __init__(self, server: Any, remote: bool):
        self.server, self.remote = server, remote

    def _call(self, method: str, *args):
        if not self.remote:
            return getattr(self.server, method)(*args)
        import ray

        try:
            return ray.get(getattr(self.server, method).remote(*args))
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if hasattr(exc, "cause") else None
            if isinstance(cause, BackendError):
                raise cause from None
            raise
        except ray.exceptions.RayActorError as exc:
            # Not a shard failure: restarting the shards would meet the same dead server.
            raise BackendError(f"the policy server actor died ({type(exc).__name__}); the "
                               "run can be resumed, which starts a new one") from None

    def score(self, prompts, continuations):
        return self._call("score", prompts, continuations)

    def generate(self, prompts, seeds, max_new_tokens, temperature=1.0):
        return self._call("generate", prompts, np.asarray(seeds), max_new_tokens, temperature)

    def health(self) -> dict:
        return self._call("health")


class PolicyServers:
    """The policy servers of one run: started before the shards, stopped after them."""

    start_timeout = 300.0

    def __init__(self, config, backend: str):
        self.remote = backend == "ray"
        self.servers: dict[int, list[Any]] = {}
        groups = [(g, grp.policy) for g, grp in enumerate(config.population.groups)
                  if isinstance(grp.policy, LLMPolicyConfig) and grp.policy.server]
        if not groups:
            return
        try:
            for g, pcfg in groups:
                self.servers[g] = [self._start(pcfg, g, r) for r in range(pcfg.replicas)]
            if self.remote:
                import ray

                ray.get([s.health.remote() for ss in self.servers.values() for s in ss],
                        timeout=self.start_timeout)
        except BaseException as exc:
            self.close()
            if self.remote:
                import ray

                if isinstance(exc, ray.exceptions.GetTimeoutError):
                    raise ClusterError(f"policy servers could not start within "
                                       f"{self.start_timeout:.0f} s; the cluster has "
                                       f"{ray.cluster_resources()}") from None
                if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(
                        getattr(exc, "cause", None), BackendError):
                    raise exc.cause from None
            raise

    def _start(self, pcfg: LLMPolicyConfig, group: int, replica: int):
        if not self.remote:
            # In-process shards call one after another: nothing could merge in a window.
            return PolicyServer(pcfg, window_ms=0)
        import ray

        gpus = ray.cluster_resources().get("GPU", 0)
        on_gpu = gpus >= 1 and pcfg.device != "cpu" and pcfg.backend == "transformers"
        # A threaded actor: concurrent calls from all shards wait inside it and
        # are merged into one backend call (see PolicyServer).
        actor = ray.remote(num_cpus=0, num_gpus=1 if on_gpu else 0, max_concurrency=256,
                           max_restarts=0)(PolicyServer)
        return actor.options(name=None).remote(pcfg)

    def backends_for(self, shard: int) -> dict[int, Backend]:
        """The backend of each server group as seen from ``shard``."""
        return {g: ServerBackend(ss[shard % len(ss)], self.remote)
                for g, ss in self.servers.items()}

    def stats(self) -> dict:
        out = {}
        for g, ss in self.servers.items():
            reports = (self._ray_get([s.health.remote() for s in ss]) if self.remote
                       else [s.health() for s in ss])
            out[str(g)] = [{k: v for k, v in r.items()
                            if k in ("requests", "backend_calls", "prompts_in", "prompts_run",
                                     "device")} for r in reports]
        return out

    def _ray_get(self, refs):
        import ray

        return ray.get(refs, timeout=30)

    def close(self) -> None:
        for ss in self.servers.values():
            for s in ss:
                try:
                    if self.remote:
                        import ray

                        ray.kill(s)
                    else:
                        s.close()
                except Exception:  # best effort on the way out
                    pass
        self.servers = {}
