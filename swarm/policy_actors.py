"""Starting a run's shared-model actors (policy servers) and the handles shards call.

For every group whose policy config asks for it (``server: true``), the
runner starts ``replicas`` actors of the class the policy kind names
(``server_class``: for LLM-style agents ``swarm.policies.shared_model.PolicyServer``)
before the shards: ``num_gpus=1`` each when the cluster has GPUs and the
policy may use one (``wants_gpu``), else no CPU reservation, since the shards
hold the cores. Each shard gets a ``ServerHandle`` to one replica (shard k to
replica k mod replicas), which its policy kind wraps (``server_backend``).
With the local backend the servers are plain objects in this process.
"""

from __future__ import annotations

from typing import Any

from swarm.errors import ClusterError, RunFailure, SwarmError
from swarm.registry import POLICIES

__all__ = ["PolicyServers", "ServerHandle", "ServerLost"]


class ServerLost(RunFailure):
    """A shared-model actor died mid-run; ``swarm resume`` starts a new one."""


class ServerHandle:
    """Calls to one shared model: a Ray actor or, in-process, the object itself.

    What the shards' policies get (their kind wraps it in a backend of its own). An
    error the server raised on purpose (a ``SwarmError``) comes back as itself.
    """

    def __init__(self, server: Any, remote: bool):
        self.server, self.remote = server, remote

    def call(self, method: str, *args):
        if not self.remote:
            return getattr(self.server, method)(*args)
        import ray

        try:
            return ray.get(getattr(self.server, method).remote(*args))
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if hasattr(exc, "cause") else None
            if isinstance(cause, SwarmError):
                raise cause from None
            raise
        except ray.exceptions.RayActorError as exc:
            # Not a shard failure: restarting the shards would meet the same dead server.
            raise ServerLost(f"the policy server actor died ({type(exc).__name__}); the "
                             "run can be resumed, which starts a new one") from None


class PolicyServers:
    """The policy servers of one run: started before the shards, stopped after them."""

    start_timeout = 300.0

    def __init__(self, config, backend: str):
        self.remote = backend == "ray"
        self.servers: dict[int, list[Any]] = {}
        groups = [(g, grp.policy) for g, grp in enumerate(config.population.groups)
                  if getattr(grp.policy, "server", False)]
        self.kinds = {g: pcfg.kind for g, pcfg in groups}
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
                        getattr(exc, "cause", None), SwarmError):
                    raise exc.cause from None
            raise

    def _start(self, pcfg, group: int, replica: int):
        kind = POLICIES[pcfg.kind]
        server_cls = kind.server_class()
        if not self.remote:
            # In-process shards call one after another: nothing could merge in a window.
            return server_cls(pcfg, window_ms=0)
        import ray

        gpus = ray.cluster_resources().get("GPU", 0)
        on_gpu = gpus >= 1 and kind.wants_gpu(pcfg)
        # A threaded actor: concurrent calls from all shards wait inside it and
        # are merged into one backend call (see PolicyServer).
        actor = ray.remote(num_cpus=0, num_gpus=1 if on_gpu else 0, max_concurrency=256,
                           max_restarts=0)(server_cls)
        return actor.options(name=None).remote(pcfg)

    def backends_for(self, shard: int) -> dict[int, Any]:
        """The backend of each server group as seen from ``shard``: the policy kind's
        wrapper of a handle to one replica."""
        return {g: POLICIES[self.kinds[g]].server_backend(ServerHandle(ss[shard % len(ss)],
                                                                       self.remote))
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
