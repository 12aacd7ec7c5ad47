"""The local ``transformers`` backend: one causal LM in this process (the decide stage).

``TransformersBackend`` loads a checkpoint directory with
``AutoModelForCausalLM`` and answers ``score`` and ``generate`` in batches on
the CPU or a GPU. It is what an LLM policy uses when the model runs next to
the shard, and what ``swarm.policies.http_server`` wraps to serve one model to many
shards; both give the same numbers because this class is the only code that
touches the model and the tokenizer. The server uses the token-level methods
(``tokenize``, ``token_logprobs`` for ``echo`` with ``logprobs``,
``start_generation`` for generations it steps between other requests, and
``decode``), never the model itself.

Tokenization: texts are tokenized as the checkpoint's tokenizer does by
default for plain text (``add_special_tokens=True``): a Llama-style tokenizer
puts a BOS first, a GPT-2-style one adds nothing. Special tokens it adds are
never scored. Every call, scoring or generation, tokenizes the same way.

Scoring computes each prompt once: when every ``prompt + continuation`` of a
prompt tokenizes to the same ids before its first scored token (the normal
case, continuations with a leading space), that shared prefix runs through
the model once with a KV cache, whose last position scores every
continuation's first token, and only the continuations' remaining tokens run
again, on the cache repeated once per continuation. A prompt whose
continuations merge with its last characters differently is scored row by
row, prompt and continuation together, and so is every prompt of a model with
recurrent layers or with a sliding window shorter than the prompts. Both
paths give the same numbers (to ~1e-15 in float64).

Determinism: each row of a batch is computed independently of its companions
(right padding with an attention mask for scoring; left padding, an
attention mask and explicit position ids for generation), and on the CPU the
default dtype is float64, so a prompt's scores and sampled text do not depend
on the batch it lands in beyond ~1e-16 noise, far below what could change a
sampled action. In float32 (the GPU default) rows still do not interact, but
kernels picked per batch shape can move a log-probability by ~1e-6, which
can, rarely, flip a sampled token whose uniform lands that close to a
boundary.
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from swarm.contract import resolve_device
from swarm.policies.backends.base import Backend, BackendError, PromptError, sample_tokens

__all__ = ["GenerationBatch", "TokenLogprobs", "TransformersBackend"]

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
# Any one of these makes a directory a candidate tokenizer source.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# Largest number of logits (rows x vocabulary) one token_logprobs forward may hold:
# 2**26 is 256 MB in float32 plus 512 MB for the float64 log-softmax.
_LOGIT_BUDGET = 1 << 26


def _resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    if spec == "auto":
        # float64 on the CPU so scores are batch-independent to ~1e-16; on a
        # GPU float32 (float64 matmuls are slow there) is the fast exact-enough choice.
        return torch.float64 if device.type == "cpu" else torch.float32
    if spec not in _DTYPES:
        raise BackendError(f"dtype must be auto, {', '.join(_DTYPES)}; got {spec!r}")
    return _DTYPES[spec]


@dataclass(frozen=True)
class TokenLogprobs:
    """The per-token log-probabilities of one row (:meth:`TransformersBackend.token_logprobs`)."""

    logprobs: np.ndarray
    """float64, one per token of the row (entry 0 NaN: it has no context), then one
    for ``next_token`` when one was drawn."""
    next_token: int | None = None
    """The token drawn after the row (possibly an EOS), or ``None`` where no seed was given."""


class TransformersBackend(Backend):
    """Batched scoring and sampling with a local ``transformers`` causal LM.

    Parameters
    ----------
    path : str
        Local checkpoint directory: ``config.json``, weights and tokenizer
        files (what ``save_pretrained`` writes). Nothing is downloaded.
    device : str
        ``auto`` (first GPU, else CPU), ``cpu``, ``cuda`` or ``cuda:i``.
    dtype : str
        ``auto`` (float64 on the CPU, float32 on a GPU), ``float32``,
        ``float64``, ``float16`` or ``bfloat16``.
    batch_size : int
        Most rows in one forward pass: prompts for ``generate`` and for
        ``score``'s pass over the prompts, continuation rows for its pass over
        the continuations' later tokens, prompt x continuation rows where a
        prompt is scored row by row.

    Attributes
    ----------
    path : str
        The checkpoint directory.
    device : torch.device
    dtype : torch.dtype
    batch_size : int
    max_length : int or None
        Token positions the model has (from its config), ``None`` if it states none.
    eos_ids : list of int
        The ids that end a generated row.
    model, tokenizer
        The loaded ``transformers`` objects (``None`` after ``close``). Callers
        outside this class use the methods instead (``tokenize``,
        ``token_logprobs``, ``start_generation``, ``decode``), which take the
        backend's lock and tokenize the way scoring does.

    Examples
    --------
    >>> import tempfile
    >>> from swarm.policies.testing import make_tiny_model
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     backend = TransformersBackend(make_tiny_model(tmp), device="cpu")
    ...     backend.score(["You saw a post"], [" share", " ignore"]).dtype
    dtype('float64')
    """

    name = "transformers"

    def __init__(self, path: str, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 64) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise BackendError(f"batch_size must be an int >= 1; got {batch_size!r}")
        self.path = str(Path(path).expanduser())
        self.batch_size = batch_size
        try:
            self.device = resolve_device(device)
        except ValueError as exc:
            raise BackendError(f"transformers backend: {exc}") from None
        self.dtype = _resolve_dtype(dtype, self.device)

        root = Path(self.path)
        if not root.is_dir():
            raise BackendError(
                f"model path {self.path} does not exist or is not a directory; give a local "
                "checkpoint directory (config.json, weights, tokenizer files), e.g. one written "
                "by save_pretrained or by swarm.policies.testing.make_tiny_model")
        if not (root / "config.json").is_file():
            raise BackendError(
                f"model path {self.path} has no config.json; point it at the checkpoint "
                "directory itself (the folder holding config.json, the weights and the tokenizer "
                "files), not at a parent folder or a single weights file")

        if not any((root / name).is_file() for name in _TOKENIZER_FILES):
            raise BackendError(
                f"model path {self.path} has no tokenizer files ({', '.join(_TOKENIZER_FILES)}); "
                "save the tokenizer next to the model (tokenizer.save_pretrained(path))")

        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(root), local_files_only=True)
        except Exception as exc:  # loaders raise OSError, ValueError, KeyError...
            raise BackendError(
                f"could not load the tokenizer from {self.path}: {type(exc).__name__}: {exc}; "
                "the directory needs tokenizer.json (a fast tokenizer) and tokenizer_config.json "
                "as save_pretrained writes them") from exc
        if not getattr(tokenizer, "is_fast", False):
            raise BackendError(
                f"the tokenizer in {self.path} is not a fast (Rust) tokenizer, and scoring needs "
                "character offsets; save the checkpoint with a tokenizer.json")
        # transformers 5 builds an empty tokenizer rather than failing when the
        # vocabulary files are unusable; it would turn every text into nothing.
        if not tokenizer("a", add_special_tokens=False)["input_ids"]:
            raise BackendError(
                f"the tokenizer in {self.path} turns text into no tokens (empty vocabulary); "
                "check tokenizer.json or re-save the tokenizer with save_pretrained")

        # The per-shard progress bar is noise in simulator logs; restore the
        # caller's setting afterwards.
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            model = AutoModelForCausalLM.from_pretrained(str(root), local_files_only=True,
                                                         dtype=self.dtype)
        except Exception as exc:  # same: many loader exception types
            raise BackendError(
                f"could not load a causal LM from {self.path}: {type(exc).__name__}: {exc}; "
                "check that config.json names a causal LM architecture and that the weights "
                "(model.safetensors or pytorch_model.bin) are complete") from exc
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer

        # Padding positions are masked out, so any id works; prefer the real pad.
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id
        self.pad_id = int(pad) if pad is not None else 0
        eos = {tokenizer.eos_token_id}
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos.update(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
        self.eos_ids = sorted(int(i) for i in eos if i is not None)
        config = model.config
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions",
                                                                             None)
        self.max_length = int(limit) if limit else None
        # logits_to_keep (transformers >= 4.50) computes the LM head only at the
        # positions we score: the (rows, length, vocab) logits would dominate memory.
        forward_params = inspect.signature(model.forward).parameters
        self._keep_logits = "logits_to_keep" in forward_params
        # Prefix sharing pads between a prompt's cached prefix and its
        # continuation's tokens, which is exact when the model takes explicit
        # position ids and its layers attend over the whole cache by index and
        # mask. A sliding (or chunked) window counts cache slots, padding
        # included, so with one it is exact only while the window reaches
        # back to slot 0 (see _split_shared); recurrent layers never share.
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

        layers = DynamicCache(config=model.config).layers
        # transformers 5.24 renamed the forward's cache argument to `cache` (the old
        # name still works, with a deprecation warning); pass whichever it takes.
        self._cache_kw = next((k for k in ("cache", "past_key_values") if k in forward_params),
                              None)
        self._can_share = (
            "position_ids" in forward_params and self._cache_kw is not None
            and bool(layers)
            and all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers))
        self._share_window = min((layer.sliding_window for layer in layers
                                  if type(layer) is DynamicSlidingWindowLayer), default=None)
        # One forward at a time: a server may call from several threads and the
        # tokenizer and model are shared. Reentrant: generate_ids holds it while
        # the GenerationBatch it runs takes it for each step.
        self._lock = threading.RLock()

    # -- helpers -------------------------------------------------------------

    def _require_open(self) -> None:
        if self.model is None:
            raise BackendError(f"transformers backend for {self.path} is closed; "
                               "create a new TransformersBackend")

    def _check_length(self, n_tokens: int, what: str) -> None:
        if self.max_length is not None and n_tokens > self.max_length:
            raise PromptError(
                f"{what} needs {n_tokens} token positions but the model at {self.path} has "
                f"{self.max_length}; shorten the prompt (or max_new_tokens)")

    def _encode(self, texts: list[str]) -> Any:
        return self.tokenizer(texts, add_special_tokens=True, return_offsets_mapping=True,
                              return_special_tokens_mask=True, return_attention_mask=False)

    # -- Backend API ---------------------------------------------------------

    def score(self, prompts: list[str], continuations: list[str]) -> np.ndarray:
        """Log-likelihood of each continuation after each prompt, float64 ``(P, A)``.

        Follows the rule in ``Backend``: ``prompt + continuation`` is tokenized
        as one string and the log-probabilities of the tokens starting at or
        after ``len(prompt)`` are summed (special tokens the tokenizer adds
        are never scored).
        """
        self._require_open()
        prompts, continuations = list(prompts), list(continuations)
        n_actions = len(continuations)
        out = np.zeros((len(prompts), n_actions), dtype=np.float64)
        if out.size == 0:
            return out
        texts = [p + c for p in prompts for c in continuations]
        with self._lock:
            enc = self._encode(texts)
            rows: list[tuple[list[int], list[int]]] = []
            for r, (ids, offsets, special) in enumerate(
                    zip(enc["input_ids"], enc["offset_mapping"], enc["special_tokens_mask"],
                        strict=True)):
                cut = len(prompts[r // n_actions])
                scored = [t for t, ((start, _), sp) in enumerate(zip(offsets, special, strict=True))
                          if not sp and start >= cut]
                if not scored:
                    raise PromptError(
                        f"continuation {continuations[r % n_actions]!r} yields no token after "
                        f"prompt ...{prompts[r // n_actions][-40:]!r}; give continuations a "
                        "non-empty text with a leading space (' share') and prompts without "
                        "a trailing space")
                if scored[0] == 0:
                    raise PromptError(
                        "the prompt is empty and the tokenizer adds no BOS token, so the first "
                        f"token of {continuations[r % n_actions]!r} has no context to be "
                        "scored in; give a non-empty prompt")
                self._check_length(len(ids), "scoring a prompt + continuation")
                rows.append((ids, scored))
            shared, full = self._split_shared(rows, n_actions)
            if full:
                out.reshape(-1)[full] = self._score_rows([rows[i] for i in full])
            if shared:
                out[shared] = self._score_shared(
                    [rows[p * n_actions:(p + 1) * n_actions] for p in shared])
        return out

    # Tests set this to False on an instance to score every row in full and
    # compare the two paths.
    _share_prefixes = True

    def _split_shared(self, rows: list[tuple[list[int], list[int]]],
                      n_actions: int) -> tuple[list[int], list[int]]:
        """Prompts for the shared-prefix path, and the rows (of the others) to score in full.

        A prompt shares when all its rows hold the same ids before their first
        scored token. With a sliding window, sharing is exact only while the
        longest padded prefix plus the longest continuation tail fits in the
        window (then no token falls out of it on either path); otherwise every
        row is scored in full.
        """
        shared: list[int] = []
        full: list[int] = []
        for p in range(len(rows) // n_actions):
            block = rows[p * n_actions:(p + 1) * n_actions]
            cut = block[0][1][0]
            prefix = block[0][0][:cut]
            if (self._share_prefixes and self._can_share
                    and all(scored[0] == cut and ids[:cut] == prefix for ids, scored in block)):
                shared.append(p)
            else:
                full.extend(range(p * n_actions, (p + 1) * n_actions))
        if shared and self._share_window is not None:
            blocks = [rows[p * n_actions:(p + 1) * n_actions] for p in shared]
            reach = (max(block[0][1][0] for block in blocks)
                     + max(scored[-1] - scored[0] for block in blocks for _, scored in block))
            if reach > self._share_window:
                full.extend(r for p in shared for r in range(p * n_actions, (p + 1) * n_actions))
                shared = []
        return shared, full

    def _kept_logits(self, input_ids: torch.Tensor, attention: torch.Tensor, keep: torch.Tensor,
                     n_kept: int, **kwargs: Any) -> torch.Tensor:
        """Logits ``(n_kept, V)`` at the ``True`` positions of ``keep``, in row-major order."""
        if self._keep_logits:
            logits = self.model(input_ids=input_ids, attention_mask=attention,
                                logits_to_keep=keep, **kwargs).logits
        else:
            logits = self.model(input_ids=input_ids, attention_mask=attention, **kwargs).logits
        if logits.dim() == 3 and logits.shape[:2] == keep.shape:
            logits = logits[keep]
        elif logits.dim() != 2 or logits.shape[0] != n_kept:
            raise BackendError(
                f"the model at {self.path} returned logits of shape {tuple(logits.shape)} "
                "for the kept positions; this architecture may not support logits_to_keep "
                "masks, report it with the model type")
        return logits

    def _score_rows(self, rows: list[tuple[list[int], list[int]]]) -> np.ndarray:
        """The full-row path: each ``(ids, scored)`` row runs through the model whole."""
        out = np.zeros(len(rows), dtype=np.float64)
        lengths = np.array([len(ids) for ids, _ in rows])
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            out[chunk] = self._score_batch([rows[i] for i in chunk])
        return out

    def _score_batch(self, rows: list[tuple[list[int], list[int]]]) -> np.ndarray:
        width = max(len(ids) for ids, _ in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        keep = np.zeros((len(rows), width), dtype=bool)
        targets, owner, slot = [], [], []
        for b, (row, scored) in enumerate(rows):
            ids[b, :len(row)] = row
            mask[b, :len(row)] = 1
            # Token t is predicted by the logits at t - 1.
            keep[b, np.asarray(scored) - 1] = True
            targets.extend(row[t] for t in scored)
            owner.extend([b] * len(scored))
            slot.extend(range(len(scored)))
        dev = self.device
        input_ids = torch.from_numpy(ids).to(dev)
        attention = torch.from_numpy(mask).to(dev)
        keep_t = torch.from_numpy(keep).to(dev)
        with torch.inference_mode():
            logits = self._kept_logits(input_ids, attention, keep_t, len(targets), use_cache=False)
            logp = torch.log_softmax(logits.double(), dim=-1)
            target_t = torch.tensor(targets, dtype=torch.long, device=dev)
            picked = logp.gather(1, target_t.unsqueeze(1)).squeeze(1)
            # A (rows, tokens) table summed along rows, not index_add_: CUDA
            # index_add_ adds in a nondeterministic order.
            table = torch.zeros((len(rows), max(slot) + 1), dtype=torch.float64, device=dev)
            table[torch.tensor(owner, device=dev), torch.tensor(slot, device=dev)] = picked
        return table.sum(dim=1).cpu().numpy()

    def _score_shared(self, blocks: list[list[tuple[list[int], list[int]]]]) -> np.ndarray:
        """The shared-prefix path: ``(P, A)`` scores for P prompts' blocks of A rows.

        Every row of a block has the same ids before its first scored token
        (the prefix). Prompts go through the model in chunks of ``batch_size``,
        shortest prefix first, as the full-row path sorts its rows.
        """
        out = np.zeros((len(blocks), len(blocks[0])), dtype=np.float64)
        order = np.argsort([block[0][1][0] for block in blocks], kind="stable")
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            out[chunk] = self._score_shared_batch([blocks[i] for i in chunk])
        return out

    def _score_shared_batch(self, blocks: list[list[tuple[list[int], list[int]]]]) -> np.ndarray:
        from transformers import DynamicCache

        dev = self.device
        cuts = [block[0][1][0] for block in blocks]
        width = max(cuts)
        ids = np.full((len(blocks), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(blocks), width), dtype=np.int64)
        keep = np.zeros((len(blocks), width), dtype=bool)
        for b, (block, cut) in enumerate(zip(blocks, cuts, strict=True)):
            ids[b, :cut] = block[0][0][:cut]
            mask[b, :cut] = 1
            keep[b, cut - 1] = True
        # Token t of a row is predicted by the logits at t - 1: the prefix's last
        # position for the first scored token, the continuation's own tokens
        # (between the prefix and the last scored token) for the rest.
        first = [[row[scored[0]] for row, scored in block] for block in blocks]
        tails = [(b, a, row[cut:scored[-1]], [(t - 1 - cut, row[t]) for t in scored[1:]])
                 for b, (block, cut) in enumerate(zip(blocks, cuts, strict=True))
                 for a, (row, scored) in enumerate(block) if len(scored) > 1]
        prefix_mask = torch.from_numpy(mask).to(dev)
        cache = DynamicCache(config=self.model.config)
        with torch.inference_mode():
            logits = self._kept_logits(torch.from_numpy(ids).to(dev), prefix_mask,
                                       torch.from_numpy(keep).to(dev), len(blocks),
                                       use_cache=True, **{self._cache_kw: cache})
            logp = torch.log_softmax(logits.double(), dim=-1)
            out = logp.gather(1, torch.tensor(first, dtype=torch.long, device=dev)).cpu().numpy()
            for start in range(0, len(tails), self.batch_size):
                self._score_tails(cache, prefix_mask, cuts, tails[start:start + self.batch_size],
                                  out)
        return out

    def _score_tails(self, cache: Any, prefix_mask: torch.Tensor, cuts: list[int],
                     tails: list[tuple[int, int, list[int], list[tuple[int, int]]]],
                     out: np.ndarray) -> None:
        """Add the log-probabilities of the second and later scored tokens to ``out[b, a]``.

        Each tail row attends to its prompt's cached prefix, right padding
        included but masked, then to its own tokens; explicit position ids
        continue from the prefix's real length, so the padding shifts nothing.
        """
        from transformers import DynamicCache

        dev = self.device
        width = max(len(tail) for _, _, tail, _ in tails)
        ids = np.full((len(tails), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(tails), width), dtype=np.int64)
        keep = np.zeros((len(tails), width), dtype=bool)
        positions = np.zeros((len(tails), width), dtype=np.int64)
        owners, targets = [], []
        for r, (b, _, tail, picks) in enumerate(tails):
            ids[r, :len(tail)] = tail
            mask[r, :len(tail)] = 1
            positions[r] = cuts[b] + np.arange(width)
            for j, token in picks:
                keep[r, j] = True
                targets.append(token)
            owners.append(b)
        if self.max_length is not None:
            # Padding slots past the model's last position would not embed; they are masked.
            np.minimum(positions, self.max_length - 1, out=positions)
        owner_t = torch.tensor(owners, dtype=torch.long, device=dev)
        # A fresh cache per chunk holding each row's copy of its prompt's prefix:
        # the forward appends to the cache it is given.
        rows_cache = DynamicCache(
            ddp_cache_data=[(layer.keys.index_select(0, owner_t),
                             layer.values.index_select(0, owner_t)) for layer in cache.layers],
            config=self.model.config)
        attention = torch.cat([prefix_mask.index_select(0, owner_t),
                               torch.from_numpy(mask).to(dev)], dim=1)
        logits = self._kept_logits(torch.from_numpy(ids).to(dev), attention,
                                   torch.from_numpy(keep).to(dev), len(targets),
                                   position_ids=torch.from_numpy(positions).to(dev),
                                   use_cache=True, **{self._cache_kw: rows_cache})
        logp = torch.log_softmax(logits.double(), dim=-1)
        target_t = torch.tensor(targets, dtype=torch.long, device=dev)
        picked = logp.gather(1, target_t.unsqueeze(1)).squeeze(1).cpu().numpy()
        k = 0
        for b, a, _, picks in tails:
            # Added in token order, one row at a time: no dependence on the batch.
            for _ in picks:
                out[b, a] += picked[k]
                k += 1

    def generate(self, prompts: list[str], seeds: np.ndarray, max_new_tokens: int,
                 temperature: float = 1.0) -> list[str]:
        """One sampled completion per prompt, the new text only.

        Token ``t`` (0, 1, ...) of row ``i`` is ``sample_tokens(logits, seeds[i],
        position=t, temperature)``; a row stops at an EOS token or after
        ``max_new_tokens``. Special tokens are dropped from the returned text.
        """
        return self.decode(self.generate_ids(prompts, seeds, max_new_tokens, temperature))

    def generate_ids(self, prompts: list[str], seeds: np.ndarray, max_new_tokens: int,
                     temperature: float = 1.0) -> list[list[int]]:
        """The token ids ``generate`` decodes: at most ``max_new_tokens`` per prompt, EOS cut off.

        For callers that need token counts (a server's ``usage``) or the raw
        ids; ``decode`` turns them into ``generate``'s text. Re-tokenizing that
        text need not give the same ids back (a random model emits partial
        UTF-8 sequences).
        """
        self._require_open()
        prompts = list(prompts)
        seeds = np.asarray(seeds, dtype=np.int64).reshape(-1)
        if len(seeds) != len(prompts):
            raise BackendError(f"generate needs one seed per prompt; got {len(seeds)} seeds for "
                               f"{len(prompts)} prompts")
        if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
            raise BackendError(f"max_new_tokens must be an int >= 0; got {max_new_tokens!r}")
        out: list[list[int]] = [[] for _ in prompts]
        if not prompts or max_new_tokens == 0:
            return out
        with self._lock:
            encoded = self._encode(prompts)["input_ids"]
            for i, ids in enumerate(encoded):
                if not ids:
                    raise BackendError(
                        f"prompt {i} is empty and the tokenizer adds no BOS token, so there is "
                        "nothing to continue from; give a non-empty prompt")
                self._check_length(len(ids) + int(max_new_tokens), f"generating from prompt {i}")
            order = np.argsort([len(ids) for ids in encoded], kind="stable")
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                batch = GenerationBatch(self, [encoded[i] for i in chunk], seeds[chunk],
                                        int(max_new_tokens), float(temperature))
                while not batch.finished:
                    batch.step()
                for i, row in zip(chunk, batch.generated, strict=True):
                    out[i] = row
        return out

    # -- token-level methods (what swarm serve-policy builds on) ---------------

    def tokenize(self, texts: Sequence[str], *, return_exceptions: bool = False
                 ) -> list[tuple[list[int], list[tuple[int, int]]] | PromptError]:
        """Token ids and character spans of each text, tokenized as ``score`` and ``generate`` do.

        Special tokens are added as the tokenizer adds them by default (a
        BOS, with span ``(0, 0)``), so the spans locate ``score``'s scored
        tokens: those starting at or after ``len(prompt)``.

        Parameters
        ----------
        texts : sequence of str
        return_exceptions : bool
            A text the tokenizer cannot encode (a lone surrogate) raises
            ``PromptError``; with ``True`` that error takes its place in the
            list instead and the other texts are still tokenized.

        Returns
        -------
        list of (ids, spans)
            ``ids`` a list of token ids, ``spans`` one ``(start, end)``
            character range per token.
        """
        self._require_open()
        texts = list(texts)
        if not texts:
            return []

        def encode(batch: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
            enc = self.tokenizer(batch, add_special_tokens=True, return_offsets_mapping=True,
                                 return_attention_mask=False)
            return list(zip(enc["input_ids"], enc["offset_mapping"], strict=True))

        with self._lock:
            try:
                return encode(texts)
            except Exception:  # noqa: BLE001 - find the text that failed, below
                pass
            # The fast tokenizer refuses a whole batch for one text it cannot
            # encode: tokenize again text by text so the error is that text's alone.
            out: list[tuple[list[int], list[tuple[int, int]]] | PromptError] = []
            for text in texts:
                try:
                    out.append(encode([text])[0])
                except Exception as exc:  # noqa: BLE001 - reported for that text alone
                    error = PromptError(f"the tokenizer cannot encode this prompt "
                                        f"({type(exc).__name__}: {exc}); send valid text")
                    if not return_exceptions:
                        raise error from exc
                    out.append(error)
            return out

    def token_logprobs(self, token_ids: Sequence[Sequence[int]],
                       seeds: Sequence[int | None] | None = None,
                       temperatures: float | Sequence[float] = 1.0) -> list[TokenLogprobs]:
        """The log-probability of every token of each row given the tokens before it.

        Each row (token ids, as ``tokenize`` gives them, possibly followed by
        ids ``generate_ids`` gave) runs through the model whole, right padded
        with an attention mask as ``score`` runs its full rows, so rows do not
        depend on each other. Token ``t`` gets the float64 log-softmax of the
        logits at ``t - 1``; token 0 has no context and gets NaN. Summed over
        the tokens ``score`` scores, they give ``score``'s number (to ~1e-12
        in float64). This is what an OpenAI-style ``echo`` with ``logprobs``
        reports.

        Parameters
        ----------
        token_ids : sequence of sequences of int
            Non-empty rows of token ids.
        seeds : sequence of (int or None), optional
            One per row. Where ``seeds[i]`` is an int, row ``i``'s next token
            is drawn from the same forward pass exactly as ``generate`` draws
            its first token (``sample_tokens`` at position 0 with ``seeds[i]``
            and ``temperatures[i]``); default: no row draws one.
        temperatures : float or sequence of float
            The sampling temperature, for all rows or one per row.

        Returns
        -------
        list of TokenLogprobs
            One per row, in order.
        """
        self._require_open()
        rows = [list(row) for row in token_ids]
        draws = [None] * len(rows) if seeds is None else list(seeds)
        temps = ([float(temperatures)] * len(rows) if isinstance(temperatures, (int, float))
                 else [float(t) for t in temperatures])
        if len(draws) != len(rows) or len(temps) != len(rows):
            raise BackendError(f"token_logprobs needs one seed and one temperature per row; got "
                               f"{len(draws)} seeds and {len(temps)} temperatures for "
                               f"{len(rows)} rows")
        for i, row in enumerate(rows):
            if not row:
                raise BackendError(f"row {i} of token_logprobs is empty; give at least one token "
                                   "(tokenize adds a BOS where the model has one)")
            self._check_length(len(row) + (draws[i] is not None), f"scoring the tokens of row {i}")
        out: list[TokenLogprobs | None] = [None] * len(rows)
        vocab = int(getattr(self.model.config, "vocab_size", 0) or len(self.tokenizer))
        order = np.argsort([len(r) for r in rows], kind="stable")
        start = 0
        with self._lock:
            while start < len(order):
                # Sorted by length: grow the chunk while its padded logits fit the budget.
                stop = start + 1
                while (stop < len(order) and stop - start < self.batch_size
                       and (stop + 1 - start) * len(rows[order[stop]]) * vocab <= _LOGIT_BUDGET):
                    stop += 1
                chunk = order[start:stop]
                start = stop
                results = self._token_logprobs_batch([rows[i] for i in chunk],
                                                     [draws[i] for i in chunk],
                                                     [temps[i] for i in chunk])
                for i, result in zip(chunk, results, strict=True):
                    out[i] = result
        return out

    def _token_logprobs_batch(self, rows: list[list[int]], seeds: list[int | None],
                              temps: list[float]) -> list[TokenLogprobs]:
        dev = self.device
        width = max(len(row) for row in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for b, row in enumerate(rows):
            ids[b, :len(row)] = row
            mask[b, :len(row)] = 1
        # The LM head runs only where a result is needed: every position but a
        # row's last predicts the next token, and the last one the drawn token.
        keep = mask.astype(bool)
        for b, row in enumerate(rows):
            keep[b, len(row) - 1] = seeds[b] is not None
        kept = keep.sum(axis=1)
        first = np.concatenate([[0], np.cumsum(kept)[:-1]])  # row-major: rows are contiguous
        pred_at = np.concatenate([first[b] + np.arange(len(row) - 1)
                                  for b, row in enumerate(rows)]).astype(np.int64)
        targets = np.array([t for row in rows for t in row[1:]], dtype=np.int64)
        keep_t = torch.from_numpy(keep).to(dev)
        drawn: dict[int, tuple[int, float]] = {}
        with torch.inference_mode():
            logits = self._kept_logits(torch.from_numpy(ids).to(dev),
                                       torch.from_numpy(mask).to(dev), keep_t, int(kept.sum()),
                                       use_cache=False)
            # Gathered from the whole log-softmax (row by row), without copying
            # the predicting rows out.
            logp = torch.log_softmax(logits.double(), dim=-1)
            picked = logp[torch.from_numpy(pred_at).to(dev),
                          torch.from_numpy(targets).to(dev)].cpu().numpy()
            by_temp: dict[float, list[int]] = {}
            for b in range(len(rows)):
                if seeds[b] is not None:
                    by_temp.setdefault(temps[b], []).append(b)
            for temperature, members in by_temp.items():
                at = torch.tensor([int(first[b] + kept[b] - 1) for b in members],
                                  dtype=torch.long, device=dev)
                nxt = sample_tokens(logits.index_select(0, at),
                                    np.array([seeds[b] for b in members], dtype=np.int64),
                                    position=0, temperature=temperature)
                lp = logp[at, nxt].cpu().numpy()
                for b, tok, value in zip(members, nxt.cpu().tolist(), lp, strict=True):
                    drawn[b] = (int(tok), float(value))
        out, pos = [], 0
        for b, row in enumerate(rows):
            n = len(row) - 1
            values = [[np.nan], picked[pos:pos + n]]
            pos += n
            token = None
            if b in drawn:
                token, value = drawn[b]
                values.append([value])
            out.append(TokenLogprobs(np.concatenate(values), token))
        return out

    def start_generation(self, token_ids: Sequence[Sequence[int]], seeds: np.ndarray,
                         max_new_tokens: int, temperature: float = 1.0) -> GenerationBatch:
        """A batch that samples from tokenized prompts one token per ``step`` (experimental).

        Each row draws exactly the tokens ``generate_ids`` draws for it (the
        same prompt ids, seed, ``max_new_tokens`` and temperature), however
        its steps are spaced and whatever else runs in between; the batch
        keeps its KV cache until it is finished. For a caller that interleaves
        generations with other work (``swarm serve-policy``); ``generate``
        runs its batches to the end itself.

        Parameters
        ----------
        token_ids : sequence of sequences of int
            Non-empty prompt rows, as ``tokenize`` gives them; ``generate``
            batches at most ``batch_size`` rows of similar length.
        seeds : numpy.ndarray
            One non-negative int64 per row.
        max_new_tokens : int
            At least 1; the prompt plus these must fit in ``max_length``.
        temperature : float
            ``<= 0`` is greedy.
        """
        self._require_open()
        rows = [list(row) for row in token_ids]
        seeds = np.asarray(seeds, dtype=np.int64).reshape(-1)
        if not rows or len(seeds) != len(rows):
            raise BackendError(f"start_generation needs one or more rows and one seed per row; "
                               f"got {len(seeds)} seeds for {len(rows)} rows")
        if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
            raise BackendError(f"max_new_tokens must be an int >= 1; got {max_new_tokens!r}")
        for i, row in enumerate(rows):
            if not row:
                raise BackendError(f"row {i} is empty: there is nothing to continue from; give "
                                   "at least one token (tokenize adds a BOS where the model "
                                   "has one)")
            self._check_length(len(row) + int(max_new_tokens), f"generating from row {i}")
        with self._lock:
            return GenerationBatch(self, rows, seeds, int(max_new_tokens), float(temperature))

    def decode(self, token_ids: Sequence[Sequence[int]]) -> list[str]:
        """The text of each row of token ids as ``generate`` writes it (special tokens left out)."""
        self._require_open()
        with self._lock:
            return [self.tokenizer.decode(list(row), skip_special_tokens=True)
                    for row in token_ids]

    def health(self) -> dict:
        """Backend name, device, dtype, checkpoint path and parameter count."""
        if self.model is None:
            return {"backend": self.name, "ok": False, "path": self.path, "closed": True}
        return {
            "backend": self.name,
            "ok": True,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "path": os.path.abspath(self.path),
            "parameters": int(sum(p.numel() for p in self.model.parameters())),
            "batch_size": self.batch_size,
        }

    def close(self) -> None:
        """Drop the model and tokenizer (idempotent); later calls raise ``BackendError``."""
        if self.model is None:
            return
        on_gpu = self.device.type == "cuda"
        self.model = None
        self.tokenizer = None
        if on_gpu:
            torch.cuda.empty_cache()


class GenerationBatch:
    """One batch of prompts sampled one token per :meth:`step`, resumable in between (experimental).

    Made by :meth:`TransformersBackend.start_generation`. Left padding, an
    attention mask, explicit positions and a KV cache; token ``t`` of each
    row is drawn by ``sample_tokens`` at position ``t`` from the row's seed,
    so the text never depends on how the steps are spaced. ``generate`` runs
    a batch to the end; the policy server interleaves the steps of several
    batches with other work.

    Attributes
    ----------
    generated : list of list of int
        Each row's new tokens so far, an EOS that ended the row left out
        (what ``generate_ids`` returns once the batch is finished).
    finished : bool
        Every row has ended (an EOS, or ``max_new_tokens`` tokens); the KV
        cache is freed.
    """

    def __init__(self, backend: TransformersBackend, prompts: list[list[int]],
                 seeds: np.ndarray, max_new_tokens: int, temperature: float):
        from transformers import DynamicCache

        self.backend = backend
        self.seeds = np.asarray(seeds, dtype=np.int64)
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        dev = backend.device
        width = max(len(ids) for ids in prompts)
        ids = np.full((len(prompts), width), backend.pad_id, dtype=np.int64)
        mask = np.zeros((len(prompts), width), dtype=np.int64)
        for b, row in enumerate(prompts):
            # Left padding: every row's last prompt token sits in the last column.
            ids[b, width - len(row):] = row
            mask[b, width - len(row):] = 1
        self.input_ids = torch.from_numpy(ids).to(dev)
        self.attention = torch.from_numpy(mask).to(dev)
        # Positions count real tokens only, so left padding does not shift them.
        self.positions = (self.attention.cumsum(-1) - 1).clamp_(min=0)
        self.eos = torch.tensor(backend.eos_ids, dtype=torch.long, device=dev)
        self.done = torch.zeros(len(prompts), dtype=torch.bool, device=dev)
        self.cache = DynamicCache(config=backend.model.config)
        self.t = 0
        self.finished = False
        self.generated: list[list[int]] = [[] for _ in prompts]
        self._open = list(range(len(prompts)))
        self._eos_set = set(backend.eos_ids)

    def step(self) -> list[int]:
        """Sample the next token of every unfinished row; return the rows this step ended.

        A row ends at an EOS (not added to ``generated``) or with its
        ``max_new_tokens``-th token. Stepping a finished batch is an error.
        """
        if self.finished:
            raise BackendError("this GenerationBatch is finished; start a new one")
        b = self.backend
        last_only = {"logits_to_keep": 1} if b._keep_logits else {}
        with b._lock, torch.inference_mode():
            logits = b.model(input_ids=self.input_ids, attention_mask=self.attention,
                             position_ids=self.positions, use_cache=True,
                             **{b._cache_kw or "past_key_values": self.cache},
                             **last_only).logits[:, -1, :]
            nxt = sample_tokens(logits, self.seeds, position=self.t,
                                temperature=self.temperature)
            nxt = torch.where(self.done, torch.full_like(nxt, b.pad_id), nxt)
            self.done |= torch.isin(nxt, self.eos)
        self.t += 1
        tokens = nxt.cpu().tolist()
        ended, still = [], []
        for row in self._open:
            if tokens[row] in self._eos_set:  # the EOS ends the row and is not part of its text
                ended.append(row)
            else:
                self.generated[row].append(tokens[row])
                still.append(row)
        if self.t == self.max_new_tokens or not still:
            ended = sorted(ended + still)
            still = []
            self.finished = True
            self.cache = None  # free the KV cache now, not when the batch object goes
        else:
            self.input_ids = nxt.unsqueeze(1)
            self.attention = torch.cat(
                [self.attention, self.attention.new_ones((self.attention.shape[0], 1))], dim=1)
            self.positions = self.positions[:, -1:] + 1
        self._open = still
        return ended
