"""Keyed, counter-based randomness: every draw is a pure function of its key.

A draw is ``hash(seed, stream, key..., step, draw)`` through SplitMix64-style
mixing, vectorized over numpy ``uint64`` arrays. No generator state is carried
between steps or shards, so the same run gives the same numbers whatever the
shard count or partitioning, and a shard replays exactly after a restart.

Keys may also be torch tensors: CPU tensors go through the numpy code
(zero-copy) and results come back as tensors; tensors on a GPU are hashed
there by the same function in int64 arithmetic, so a policy's draws never
leave its device and equal the CPU's bit for bit.
"""

from __future__ import annotations

import hashlib
import sys
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["KeyedRNG", "stream_id", "mix64"]

_MASK = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_S11 = np.uint64(11)
_INV53 = 1.0 / (1 << 53)
_CHUNK = 1 << 16


def _mix_int(x: int) -> int:
    """SplitMix64 finalizer on a Python int (used for the scalar part of a key)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer, applied in place to a ``uint64`` array and returned."""
    x += _GOLDEN
    x ^= x >> _S30
    x *= _M1
    x ^= x >> _S27
    x *= _M2
    x ^= x >> _S31
    return x


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


_T_GOLDEN, _T_M1, _T_M2 = (_signed(0x9E3779B97F4A7C15), _signed(0xBF58476D1CE4E5B9),
                           _signed(0x94D049BB133111EB))


def _is_tensor(x) -> bool:
    """Whether ``x`` is a torch tensor, without importing torch: a process that never
    loaded torch holds none (``import swarm`` stays light for CPU-only rules)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _srl(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _mix64_torch(x: torch.Tensor) -> torch.Tensor:
    """``mix64`` on int64 tensors: two's-complement products wrap like uint64 ones."""
    x = x + _T_GOLDEN
    x = x ^ _srl(x, 30)
    x = x * _T_M1
    x = x ^ _srl(x, 27)
    x = x * _T_M2
    return x ^ _srl(x, 31)


def stream_id(name: str) -> int:
    """A stable 64-bit id for a stream name (not Python's salted ``hash``)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


class KeyedRNG:
    """Draws keyed by (seed, stream, keys, step, draw index).

    Parameters
    ----------
    seed : int
        The run seed; the only source of randomness in a run.

    Examples
    --------
    >>> rng = KeyedRNG(7)
    >>> u = rng.uniform("ic", np.arange(5), step=3)
    >>> bool(np.all(u == rng.uniform("ic", np.arange(5), step=3)))
    True
    >>> bool(np.all((u >= 0) & (u < 1)))
    True
    """

    def __init__(self, seed: int):
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
        self.seed = int(seed)

    def _base(self, stream: str, step: int, draw: int) -> int:
        h = _mix_int(self.seed ^ _mix_int(stream_id(stream)))
        h = _mix_int(h ^ (int(step) & _MASK))
        return _mix_int(h ^ ((int(draw) * 0xD6E8FEB86659FD93) & _MASK))

    def _hash_into(self, out: np.ndarray, stream: str, keys, step: int, draw: int, finish) -> None:
        # Work in cache-sized chunks: a dozen passes over an 80 MB temporary
        # cost ~10x more than the same passes over 512 KB (memory-bound).
        base = np.uint64(self._base(stream, step, draw))
        arrays = [np.asarray(k) for k in keys]
        n = out.shape[0]
        buf = np.empty(min(n, _CHUNK), dtype=np.uint64)
        for s in range(0, n, _CHUNK):
            e = min(s + _CHUNK, n)
            h = buf[: e - s]
            first = arrays[0] if arrays[0].ndim == 0 else arrays[0][s:e]
            h[...] = first
            h ^= base
            mix64(h)
            for k in arrays[1:]:
                h ^= (k if k.ndim == 0 else k[s:e]).astype(np.uint64, copy=False)
                mix64(h)
            finish(h, out[s:e])

    def _prepare(self, keys) -> int:
        """The number of draws: the broadcast length of the 1-d (or scalar) keys."""
        if not keys:
            raise ValueError("a keyed draw needs at least one key array")
        shape = np.broadcast_shapes(*(np.shape(k) for k in keys))
        return int(shape[0]) if shape else 1

    def _torch_bits(self, stream: str, keys, step: int, draw: int) -> torch.Tensor:
        """The 64 bits of ``bits`` as int64, computed on the keys' device."""
        import torch

        h = keys[0].to(torch.int64) ^ _signed(self._base(stream, step, draw))
        h = _mix64_torch(h)
        for k in keys[1:]:
            h = _mix64_torch(h ^ k.to(torch.int64))
        return h

    def _dispatch(self, method, stream: str, keys, kwargs) -> torch.Tensor | None:
        """Tensor keys: None for a GPU (the caller hashes there), else the numpy result."""
        if not any(_is_tensor(k) for k in keys):
            return None
        import torch

        device = next(k.device for k in keys if isinstance(k, torch.Tensor))
        if device.type != "cpu":
            return None
        arrays = [k.numpy() if isinstance(k, torch.Tensor) else k for k in keys]
        return torch.from_numpy(method(stream, *arrays, **kwargs))

    def bits(self, stream: str, *keys: np.ndarray, step: int = 0, draw: int = 0) -> np.ndarray:
        """64 random bits per element of the broadcast 1-d ``keys`` (int arrays)."""
        out = np.empty(self._prepare(keys), dtype=np.uint64)

        def finish(h, o):
            o[...] = h

        self._hash_into(out, stream, keys, step, draw, finish)
        return out

    def uniform(self, stream: str, *keys: np.ndarray, step: int = 0, draw: int = 0) -> np.ndarray:
        """Uniform floats in [0, 1), one per element of ``keys``."""
        if _is_tensor(keys[0]):
            done = self._dispatch(self.uniform, stream, keys, {"step": step, "draw": draw})
            if done is not None:
                return done
            h = _srl(self._torch_bits(stream, keys, step, draw), 11)
            return h.double() * _INV53
        out = np.empty(self._prepare(keys), dtype=np.float64)

        def finish(h, o):
            h >>= _S11
            np.multiply(h, _INV53, out=o, casting="unsafe")

        self._hash_into(out, stream, keys, step, draw, finish)
        return out

    def bernoulli(
        self, stream: str, *keys: np.ndarray, p: float, step: int = 0, draw: int = 0
    ) -> np.ndarray:
        """Booleans that are True with probability ``p``, one per element of ``keys``.

        Compares the 53 high bits against ``p * 2**53``, exactly as
        ``uniform(...) < p`` would, without materializing the floats.
        """
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1]; got {p}")
        if _is_tensor(keys[0]):
            done = self._dispatch(self.bernoulli, stream, keys,
                                  {"p": p, "step": step, "draw": draw})
            if done is not None:
                return done
            h = _srl(self._torch_bits(stream, keys, step, draw), 11)
            return h < int(np.ceil(p * (1 << 53)))
        out = np.empty(self._prepare(keys), dtype=bool)
        threshold = np.uint64(int(np.ceil(p * (1 << 53))))

        def finish(h, o):
            h >>= _S11
            np.less(h, threshold, out=o)

        self._hash_into(out, stream, keys, step, draw, finish)
        return out
