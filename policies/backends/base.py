"""The inference backend interface behind LLM-style policies (the decide stage).

A backend answers two batched questions about a causal language model:
``score`` (the log-likelihood of each allowed action's text after each
prompt, for action choice) and ``generate`` (short free text, e.g. a post's
content). Both are deterministic functions of their inputs: generation
samples each token by inverse CDF from one keyed uniform per (seed, token
position), so a local model and a server that runs the same model give the
same text for the same seed. Backends know nothing of agents, envs or Ray.
"""

from __future__ import annotations

import numpy as np
import torch

from swarm.errors import SwarmError
from swarm.rng import KeyedRNG

__all__ = ["Backend", "BackendError", "PromptError", "sample_tokens"]


class BackendError(SwarmError, RuntimeError):
    """A backend could not answer (unreachable endpoint, bad reply, missing model).

    The message names the problem and the fix. LLM policies turn it into a
    ConfigError/PolicyError or, with ``on_error: idle``, into logged fallbacks.
    """


class PromptError(BackendError):
    """One of the inputs cannot be answered (too long, nothing to score, refused with 400).

    Unlike other backend errors it says nothing about the backend's health, so
    a policy with ``on_error: idle`` narrows the batch down to the bad prompts
    and lets only their agents fall back: the outcome then does not depend on
    which prompts happened to share a batch (or a shard).
    """


class Backend:
    """Batched scoring and generation with one causal language model.

    Scoring rule (every backend follows it exactly, so they agree): the text
    ``prompt + continuation`` is tokenized as one string; the continuation's
    score is the sum of the log-probabilities of the tokens whose character
    offset (start) is ``>= len(prompt)``. Write continuations with a leading
    space (" share") and prompts without a trailing one, so no token straddles
    the boundary.
    """

    name: str = "backend"

    def score(self, prompts: list[str], continuations: list[str]) -> np.ndarray:
        """Log-likelihoods, float64 of shape ``(len(prompts), len(continuations))``."""
        raise NotImplementedError

    def generate(self, prompts: list[str], seeds: np.ndarray, max_new_tokens: int,
                 temperature: float = 1.0) -> list[str]:
        """One completion per prompt (the new text only), sampled with ``sample_tokens``.

        ``seeds`` holds one non-negative int64 per prompt; the same prompt and
        seed give the same text whatever else is in the batch.
        """
        raise NotImplementedError

    def health(self) -> dict:
        return {"backend": self.name, "ok": True}

    def close(self) -> None:
        """Release the model or connections (idempotent)."""


_SAMPLER = KeyedRNG(0)


def sample_tokens(logits: torch.Tensor, seeds: np.ndarray, position: int,
                  temperature: float) -> torch.Tensor:
    """Next token ids for a batch: one keyed uniform per (seed, position), inverse CDF.

    ``logits`` is ``(B, V)`` on any device; ``seeds`` one int64 per row. The
    probabilities are computed in float64, so rows do not depend on each other
    or on the batch they came in. ``temperature <= 0`` is greedy (argmax).
    """
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    cdf = probs.cumsum(dim=-1)
    u = _SAMPLER.uniform("generate", np.asarray(seeds, dtype=np.int64), step=position)
    u = torch.from_numpy(u).to(cdf.device).unsqueeze(1) * cdf[:, -1:]
    ids = torch.searchsorted(cdf, u, right=True).squeeze(1)
    return ids.clamp_(max=logits.shape[-1] - 1)
