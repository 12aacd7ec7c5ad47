"""What envs and policies share, so neither imports the other.

An env states what a policy may choose (``ChoiceSpec``: the labels of one
discrete choice per batch row, the fields a prompt may name); a policy reads
observation batches and returns action columns. Both move columns between
numpy (the env's state) and torch (the policy's device) with ``as_numpy`` and
``as_tensor``. Nothing here imports torch: a process that runs only numpy
rules never loads it.

A policy's ``device: auto|cpu|cuda[:i]`` is resolved once by ``resolve_device``:
``auto`` is the first CUDA device when torch sees one, otherwise the CPU. A
CUDA device that is not there is an error naming what torch does see, never
a silent fall back to the CPU.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from swarm.rng import KeyedRNG

__all__ = ["ChoiceSpec", "PolicyContext", "PolicyStats", "as_numpy", "as_tensor", "is_tensor",
           "resolve_device"]


@dataclass(frozen=True)
class ChoiceSpec:
    """How LLM-style policies act in an env: one discrete choice per batch row.

    The policy returns ``actions[action]`` as the index of the chosen label
    (an int tensor); for two labels the env may read it as a boolean. A
    failed model call gives the ``idle`` label (``on_error: idle``).
    ``fields`` are the batch columns a prompt template may name, besides
    ``persona``, ``memory`` and ``actions``.
    """

    action: str
    labels: tuple[str, ...]
    fields: tuple[str, ...] = ()
    idle: int = 0
    #: The action key for free text (a list of strings, None where no text);
    #: empty when the env has nowhere to put text.
    text: str = ""
    #: The prompt template used when the policy config gives none.
    template: str = ""
    #: The prompt for free text, rendered after the choice (``{choice}`` is its label).
    text_template: str = ""
    #: Where an agent has several rows in a batch (one per feed item, say): the
    #: int column that tells them apart, keyed with the agent for sampling.
    row_key: str = ""


@dataclass
class PolicyStats:
    """What a policy reports about one decide call (summed into the step's metrics).

    ``decisions``: agents (rows) decided by a model; ``calls``: prompts the
    model chose actions for (after deduplication); ``fallbacks``: rows that
    got the idle action, or no text, because the backend failed
    (``on_error: idle``).
    """

    decisions: int = 0
    calls: int = 0
    fallbacks: int = 0
    #: Prompts the model generated free text for (not part of ``calls``).
    text_calls: int = 0


@dataclass
class PolicyContext:
    """The step being decided, the run's keyed RNG, and where stats go."""

    step: int
    rng: KeyedRNG
    stats: PolicyStats = field(default_factory=PolicyStats)


def is_tensor(value: Any) -> bool:
    """Whether ``value`` is a torch tensor (False, without importing torch, when no
    module of this process has loaded it)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def as_tensor(value: Any, device) -> Any:
    """A column as a tensor on ``device`` (numpy arrays zero-copy on the CPU); lists pass."""
    import torch

    if isinstance(value, torch.Tensor):
        return value if value.device == device else value.to(device)
    if isinstance(value, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(value))
        return t if device.type == "cpu" else t.to(device)
    return value


def as_numpy(value: Any) -> np.ndarray:
    """A column as a numpy array (a CPU tensor without a copy)."""
    if is_tensor(value):
        return value.numpy(force=True) if value.device.type != "cpu" else value.numpy()
    return np.asarray(value)


_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(spec: str = "auto"):
    """The torch device for ``spec`` (``auto``, ``cpu``, ``cuda`` or ``cuda:i``).

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    import torch

    if isinstance(spec, torch.device):
        spec = str(spec)
    if not isinstance(spec, str) or not _PATTERN.match(spec):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:i; got {spec!r}")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(spec.split(":")[1]) if ":" in spec else 0
    if index >= count:
        seen = f"{count} CUDA device(s)" if count else "no CUDA device (CPU-only torch or no GPU)"
        raise ValueError(f"device {spec!r} is not available: torch sees {seen}; "
                         "use device: auto or cpu")
    return torch.device(f"cuda:{index}")
