"""Where shards run: in this process, or as Ray actors. The only part of the engine that
starts shard actors or passes their object refs; the driver sees the same calls either
way (policy servers, `swarm.policy_actors`, are actors of their own).

Both build the shards' slices (draw, assemble, finish: ``swarm.shardgraph``) with
edges going shard to shard, then step them. On Ray, messages move from shard to
shard as object refs; the driver holds refs and small summaries, never agent data.
"""

from __future__ import annotations

from typing import Any

from swarm.errors import ClusterError
from swarm.shard import Shard, build_shards, inbound

__all__ = ["LocalShards", "RayShards", "connect", "is_recoverable", "make_shards", "put_specs"]


class LocalShards:
    """Shards as plain objects in this process (``backend="local"``): same round, no Ray."""

    pipelined = False

    def __init__(self, specs, restore_step: int | None, restore_files: tuple[str, ...] = ()):
        self.shards, self.stats = build_shards(specs, restore_step, restore_files)

    def submit(self, step: int, outs: list[list[Any]] | None, checkpoint: bool = False):
        return [s.step(step, *([] if outs is None else inbound(outs, j)), checkpoint=checkpoint)
                for j, s in enumerate(self.shards)]

    def collect(self, results):
        return [r[0] for r in results], [list(r[1:]) for r in results]

    def run_steps(self, start: int, count: int, checkpoint_every: int) -> list[dict]:
        return self.shards[0].run_steps(start, count, checkpoint_every)

    def checkpoint(self, step: int) -> list[dict]:
        return [s.checkpoint(step) for s in self.shards]

    def close(self):
        return [s.close() for s in self.shards]

    def kill(self) -> None:
        """Drop the shards without flushing anything."""
        self.shards = []

    def abort(self) -> list[dict]:
        """Close what can be closed on the way out of a failure; the reports of those."""
        reports = []
        for s in self.shards:
            try:
                reports.append(s.close())
            except Exception:  # best effort on the way out of a failure
                pass
        return reports


class _ShardProcess(Shard):
    """A shard that owns its worker process: it tunes the process's allocator first."""

    def __init__(self, *args, **kwargs):
        keep_freed_memory()
        super().__init__(*args, **kwargs)


def keep_freed_memory() -> None:
    """Make glibc keep freed arrays of up to 32 MiB for reuse instead of unmapping them.

    A shard allocates and frees arrays of a few MiB per graph block and per step;
    by default each is a fresh mmap whose pages the kernel zero-fills on first touch
    (~2.4 s of kernel time per GB here). Measured on one shard's build at n=1e8:
    8.2 s of system time became 5.0 s. Only for shard worker processes: a user's own
    process keeps its allocator as it was.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): nothing to tune
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 << 20)
    libc.mallopt(m_trim_threshold, 1 << 30)


class RayShards:
    """Shards as Ray actors; messages move shard to shard as object refs.

    ``pipelined``: the driver submits step t+1 (whose inputs are step t's
    outbox refs, not their values) before it waits for step t's summaries,
    so the barrier's round trip overlaps the shards' work. When step t turns
    out quiescent, step t+1 has nothing to do by the env contract and its
    results are dropped.
    """

    pipelined = True
    #: How long new shard actors may take to be placed and built before the
    #: run gives up (a cluster without room for them leaves them pending).
    start_timeout = 120.0

    def __init__(self, spec_refs, restore_step: int | None, name: str,
                 restore_files: tuple[str, ...] = ()):
        import ray

        from swarm.cluster.connect import shard_cpus

        self.ray = ray
        cpus = shard_cpus(len(spec_refs))
        # Restarts are the driver's job (from a checkpoint, all shards together):
        # Ray restarting one actor from its constructor would lose its state.
        actor = ray.remote(num_cpus=cpus, max_restarts=0)(_ShardProcess)
        # Named `swarm-<run id>-<attempt>-shard<k>` so operators (and tests) can find them.
        self.actors = [actor.options(name=f"{name}-shard{k}").remote(s, restore_step,
                                                                     restore_files)
                       for k, s in enumerate(spec_refs)]
        try:
            ray.get([a.health.remote() for a in self.actors], timeout=self.start_timeout)
            self.stats = self._build()
        except ray.exceptions.GetTimeoutError:
            self.kill()
            raise ClusterError(
                f"{len(spec_refs)} shard actors ({cpus:g} CPU each) could not start within "
                f"{self.start_timeout:.0f} s: the cluster has {ray.cluster_resources()}. Add "
                "nodes or lower `shards`."
            ) from None
        except BaseException:
            self.kill()  # the shards that did start must not keep their CPUs
            raise
        self._step = [a.step.options(num_returns=len(spec_refs) + 1) for a in self.actors]

    def _build(self) -> list[dict]:
        """The shards build their slices: edges go shard to shard as object refs (the
        driver passes refs, never the edges), then each reports its slice's sizes."""
        k = len(self.actors)
        if k == 1:
            a = self.actors[0]
            a.draw.remote()
            a.assemble.remote()
            return self.ray.get([a.finish.remote()])
        drawn = [a.draw.options(num_returns=k).remote() for a in self.actors]
        sent = [a.assemble.options(num_returns=k).remote(*inbound(drawn, j))
                for j, a in enumerate(self.actors)]
        del drawn
        return self.ray.get([a.finish.remote(*inbound(sent, j))
                             for j, a in enumerate(self.actors)])

    def submit(self, step: int, outs: list[list[Any]] | None, checkpoint: bool = False):
        return [method.remote(step, *([] if outs is None else inbound(outs, j)),
                              checkpoint=checkpoint)
                for j, method in enumerate(self._step)]

    def collect(self, refs):
        summaries = self.ray.get([r[0] for r in refs])
        return summaries, [list(r[1:]) for r in refs]

    def run_steps(self, start: int, count: int, checkpoint_every: int) -> list[dict]:
        return self.ray.get(self.actors[0].run_steps.remote(start, count, checkpoint_every))

    def checkpoint(self, step: int) -> list[dict]:
        return self.ray.get([a.checkpoint.remote(step) for a in self.actors])

    def close(self):
        reports = self.ray.get([a.close.remote() for a in self.actors])
        self.kill()
        return reports

    def kill(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:  # already dead with its node
                pass

    def abort(self) -> list[dict]:
        """Close what can be closed on the way out of a failure; the reports of those."""
        from ray.exceptions import GetTimeoutError, RayError

        refs = [a.close.remote() for a in self.actors]
        reports = []
        for ref in refs:
            try:
                reports.append(self.ray.get(ref, timeout=10))
            except (RayError, GetTimeoutError):
                pass  # a dead shard's unflushed steps are lost; the others' are kept
        self.kill()
        return reports


def connect(backend: str, address: str | None) -> None:
    """Join (or start) the Ray cluster a ``ray`` backend runs on."""
    if backend == "ray":
        from swarm.cluster.connect import ensure_ray

        ensure_ray(address)


def is_recoverable(backend: str, exc: Exception) -> bool:
    """Whether ``exc`` is worth a restart: a dead actor, a lost node or lost objects,
    not a shard's own exception (a bug, bad data), which would fail again on replay."""
    if backend != "ray":
        return False
    from ray.exceptions import RayError, RayTaskError

    if isinstance(exc, RayTaskError):
        return isinstance(exc.cause, RayError)
    return isinstance(exc, RayError)


def make_shards(backend: str, specs, restore_step: int | None, name: str,
                restore_files: tuple[str, ...] = ()):
    """The shards of one attempt: in this process, or as Ray actors named ``name-shardK``."""
    if backend == "local":
        return LocalShards(specs, restore_step, restore_files)
    return RayShards(specs, restore_step, name, restore_files)


def put_specs(backend: str, specs) -> list:
    """The shard specs where restarts can re-create shards from them (Ray's object store)."""
    if backend != "ray":
        return list(specs)
    import ray

    return [ray.put(s) for s in specs]


def node_memory() -> list[int]:
    """Bytes of memory plus object store of each live node of the connected Ray."""
    import ray

    return [int(nd["Resources"].get("memory", 0) + nd["Resources"].get("object_store_memory", 0))
            for nd in ray.nodes() if nd.get("Alive")]
