"""A policy server: one model shared by every shard, with requests merged into batches.

With ``policy.server: true`` the model is not loaded in each shard: the
runner starts ``replicas`` of this class as Ray actors (on a GPU when the
cluster has one), and the shards' decide stage sends them their distinct
prompts. Requests that arrive while the model is busy, or within
``batch_window_ms`` of each other, run as one backend call, and identical
prompts from different shards are inferred once. A plain class (threads, no
Ray), so it unit-tests in-process; the runner applies ``ray.remote``.

Why not Ray Serve with ``@serve.batch``: every shard already sends one
request per step with all of its distinct prompts, so the batching that
matters is merging K such requests, which a threaded actor does in a few
lines. Serve would add an HTTP proxy, a controller and ray[serve]'s web
stack to every run for nothing the shards use; a server reachable over HTTP
is ``swarm serve-policy``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from swarm.errors import RunFailure
from swarm.policies.backends.base import Backend, BackendError
from swarm.policies.llm import LLMPolicyConfig, make_backend

__all__ = ["PolicyServer", "ServerBackend"]


@dataclass(eq=False)  # identity, not fields: requests may hold equal numpy arrays
class _Request:
    kind: str
    key: tuple
    prompts: list[str]
    seeds: np.ndarray | None = None
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class PolicyServer:
    """Holds one backend and answers ``score``/``generate`` for many callers at once.

    Parameters
    ----------
    config : LLMPolicyConfig
        The policy whose model this server holds (its backend, model, device,
        dtype and ``batch_window_ms``).
    backend : Backend, optional
        Use this backend instead of building one from ``config``.
    """

    def __init__(self, config: LLMPolicyConfig, backend: Backend | None = None,
                 window_ms: float | None = None):
        self.window = (config.batch_window_ms if window_ms is None else window_ms) / 1000.0
        self.backend = backend if backend is not None else make_backend(config)
        device = getattr(self.backend, "device", None)
        if getattr(device, "type", None) == "cpu":
            # Ray gives an actor without CPUs one thread; the shards wait while
            # the server works, so a CPU model may use the node's cores.
            import os

            import torch

            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
                (os.cpu_count() or 1)
            torch.set_num_threads(max(torch.get_num_threads(), cores // config.replicas, 1))
        self._lock = threading.Lock()        # guards the queue
        self._model = threading.Lock()       # one backend call at a time
        self._pending: list[_Request] = []
        self.stats = {"requests": 0, "backend_calls": 0, "prompts_in": 0, "prompts_run": 0}

    def score(self, prompts: list[str], continuations: list[str]) -> np.ndarray:
        return self._submit(_Request("score", tuple(continuations), list(prompts)))

    def generate(self, prompts: list[str], seeds: np.ndarray, max_new_tokens: int,
                 temperature: float = 1.0) -> list[str]:
        return self._submit(_Request("generate", (int(max_new_tokens), float(temperature)),
                                     list(prompts), np.asarray(seeds, dtype=np.int64)))

    def health(self) -> dict:
        return {"ok": True, **self.backend.health(), **self.stats}

    def close(self) -> None:
        self.backend.close()

    # -- batching ----------------------------------------------------------------

    def _submit(self, req: _Request):
        with self._lock:
            self._pending.append(req)
            self.stats["requests"] += 1
            self.stats["prompts_in"] += len(req.prompts)
        if self.window:
            time.sleep(self.window)  # let the other shards' requests of this step arrive
        while not req.done.is_set():
            with self._model:
                if req.done.is_set():
                    break
                with self._lock:
                    batch = [r for r in self._pending if r.kind == req.kind and r.key == req.key]
                    self._pending = [r for r in self._pending
                                     if not (r.kind == req.kind and r.key == req.key)]
                self._run(batch)
        if req.error is not None:
            raise req.error
        return req.result

    def _run(self, batch: list[_Request]) -> None:
        """One backend call for all requests in ``batch``; identical inputs run once."""
        try:
            index: dict[Any, int] = {}
            where = []
            for r in batch:
                keys = r.prompts if r.kind == "score" else list(zip(r.prompts, r.seeds.tolist(),
                                                                    strict=True))
                where.append(np.array([index.setdefault(k, len(index)) for k in keys],
                                      dtype=np.int64))
            self.stats["backend_calls"] += 1
            self.stats["prompts_run"] += len(index)
            if batch[0].kind == "score":
                out = self.backend.score(list(index), list(batch[0].key))
                for r, w in zip(batch, where, strict=True):
                    r.result = out[w]
            else:
                pairs = list(index)
                texts = self.backend.generate([p for p, _ in pairs],
                                              np.array([s for _, s in pairs], dtype=np.int64),
                                              *batch[0].key)
                for r, w in zip(batch, where, strict=True):
                    r.result = [texts[i] for i in w.tolist()]
        except BaseException as exc:  # every waiting caller gets the failure
            for r in batch:
                r.error = exc
        for r in batch:
            r.done.set()


class ServerBackend(Backend):
    """A Backend whose calls go to a policy server through the engine's handle (a Ray
    actor or a local object; ``swarm.policy_actors.ServerHandle``)."""

    name = "server"

    def __init__(self, handle: Any):
        self.handle = handle

    def _call(self, method: str, *args):
        try:
            return self.handle.call(method, *args)
        except RunFailure as exc:  # the actor died: for the policy, a backend that failed
            raise BackendError(str(exc)) from None

    def score(self, prompts, continuations):
        return self._call("score", prompts, continuations)

    def generate(self, prompts, seeds, max_new_tokens, temperature=1.0):
        return self._call("generate", prompts, np.asarray(seeds), max_new_tokens, temperature)

    def health(self) -> dict:
        return self._call("health")
