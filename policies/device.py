"""Where a policy's tensors live: ``device: auto|cpu|cuda[:i]`` resolved once.

``auto`` is the first CUDA device when torch sees one, otherwise the CPU. A
CUDA device that is not there is an error naming what torch does see, never
a silent fall back to the CPU.
"""

from __future__ import annotations

import re

import torch

__all__ = ["resolve_device"]

_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """The torch device for ``spec`` (``auto``, ``cpu``, ``cuda`` or ``cuda:i``).

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
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
