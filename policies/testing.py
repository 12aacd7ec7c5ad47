"""Tiny local language models for tests and benchmarks of the LLM decide stage.

``make_tiny_model`` writes a causal LM with random weights and a small
byte-level BPE tokenizer, trained on the fly on a short built-in English
text, into a directory that ``TransformersBackend`` (or any ``transformers``
loader, with ``local_files_only=True``) opens like a real checkpoint. Nothing
is downloaded: tests, CI and benchmarks on machines without internet get a
model in well under a second. The text it writes is noise (random weights);
what the model is good for is exercising the scoring and sampling machinery
at a chosen size.

Examples
--------
>>> import tempfile
>>> from swarm.policies.testing import make_tiny_model
>>> from swarm.policies.backends.transformers_backend import TransformersBackend
>>> with tempfile.TemporaryDirectory() as tmp:
...     backend = TransformersBackend(make_tiny_model(tmp), device="cpu")
...     backend.score(["The agent read the post"], [" share", " ignore"]).shape
(1, 2)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["TINY_CORPUS", "make_tiny_model"]

# A few paragraphs in the register of the prompts LLM policies build, so the
# BPE learns merges for words such as " share", " ignore", " post", " agent".
TINY_CORPUS = """\
The agent reads the post from a neighbor and decides whether to share it or ignore it.
A post that many friends share is more likely to be shared again. An agent who has seen
the same story twice may ignore it the third time. Some agents like to reply, some agents
only read. The network is a graph of people; each person follows a few others and is
followed by some. When a story spreads through the graph it forms a cascade: one person
shares, their followers see it, a few of them share, and so on until nobody new shares.
Observation: you saw a post about the weather. Action: share. Observation: you saw a post
about a new phone. Action: ignore. Observation: three of your friends shared a post about
the election. Action: share. Observation: a stranger posted an advertisement. Action: ignore.
The model answers with one word: share, ignore, like, reply, follow or unfollow.
People share news, jokes, pictures and opinions. They like posts from close friends and
ignore posts from accounts they do not know. Trust grows when a friend shares something
true and falls when the story turns out to be false. A rumor can travel far in a short time
if the first people who share it have many followers. Most stories die after a few steps.
The simulator runs in rounds: observe, decide, apply, log and exchange. In each round every
agent looks at what its neighbors did, chooses an action, and the world changes. The log
records who did what and when, so that the cascade can be measured after the run: its size,
its depth, its structural virality and how fast it grew.
You are a person on a social network. Your friends posted the following messages today.
Decide what to do with the post you see now. Answer with the action only.
"""

_EOS = "<|endoftext|>"
_BOS = "<s>"
_PAD = "<pad>"


def _train_tokenizer(vocab_size: int, add_bos: bool):
    """A byte-level BPE fitted to ``TINY_CORPUS``, wrapped for ``transformers``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[_EOS, _BOS, _PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([TINY_CORPUS], trainer=trainer)
    # Raw offsets (no trimming of the leading space), so a continuation token
    # " share" starts exactly at len(prompt), as the scoring rule expects.
    byte_level = processors.ByteLevel(trim_offsets=False)
    if add_bos:
        # Like Llama tokenizers: a BOS before every plain text, so the first
        # real token is scored too.
        bos_id = tok.token_to_id(_BOS)
        template = processors.TemplateProcessing(
            single=f"{_BOS} $A", pair=f"{_BOS} $A {_BOS} $B", special_tokens=[(_BOS, bos_id)])
        tok.post_processor = processors.Sequence([byte_level, template])
    else:
        tok.post_processor = byte_level
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=_EOS, bos_token=_BOS,
                                   pad_token=_PAD)


def make_tiny_model(path: str | os.PathLike, *, arch: str = "gpt2", n_layer: int = 2,
                    hidden: int = 64, n_head: int = 4, vocab_words: int | None = None,
                    seed: int = 0) -> str:
    """Write a random-weight causal LM and its tokenizer into ``path``; return the path.

    Parameters
    ----------
    path : str or PathLike
        Directory to write (created if missing; files in it are overwritten).
    arch : {"gpt2", "llama"}
        ``gpt2`` (learned positions, tokenizer adds nothing) or ``llama``
        (rotary positions, RMSNorm, tokenizer puts a BOS before every text).
    n_layer, hidden, n_head : int
        Depth, width and attention heads; ``hidden`` must divide by ``n_head``.
        The defaults give about 0.2 M parameters; ``n_layer=12, hidden=768,
        n_head=12, vocab_words=50257`` gives a GPT-2-small-sized model for GPU
        benchmarks.
    vocab_words : int, optional
        The model's vocabulary size. The tokenizer learns as many BPE merges as
        the built-in corpus supports, up to this size (default 512; it learns
        463 tokens, about 200 merges); ids beyond what it learned are rows of the output layer that
        no text maps to, which gives a realistic softmax cost for benchmarks.
    seed : int
        Seeds the weight initialization: the same arguments give the same files.

    Returns
    -------
    str
        ``path``, for ``TransformersBackend(path)``.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     sorted(os.listdir(make_tiny_model(tmp)))[:2]
    ['config.json', 'generation_config.json']
    """
    import torch

    if arch not in ("gpt2", "llama"):
        raise ValueError(f"arch must be 'gpt2' or 'llama'; got {arch!r}")
    if min(n_layer, hidden, n_head) < 1 or hidden % n_head:
        raise ValueError("n_layer, hidden and n_head must be >= 1 and hidden must divide by "
                         f"n_head; got n_layer={n_layer}, hidden={hidden}, n_head={n_head}")
    # 256 byte symbols + 3 special tokens is the smallest vocabulary a
    # byte-level BPE can have.
    target = 512 if vocab_words is None else int(vocab_words)
    if target < 259:
        raise ValueError(f"vocab_words must be >= 259 (256 bytes + 3 special tokens); got {target}")

    tokenizer = _train_tokenizer(min(target, 4096), add_bos=arch == "llama")
    vocab_size = max(target, len(tokenizer))
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in (_EOS, _BOS, _PAD)}
    common = dict(vocab_size=vocab_size, bos_token_id=ids[_BOS], eos_token_id=ids[_EOS],
                  pad_token_id=ids[_PAD])

    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    if arch == "gpt2":
        config = GPT2Config(n_layer=n_layer, n_embd=hidden, n_head=n_head, n_positions=1024,
                            **common)
        cls = GPT2LMHeadModel
    else:
        config = LlamaConfig(num_hidden_layers=n_layer, hidden_size=hidden,
                             num_attention_heads=n_head, num_key_value_heads=n_head,
                             intermediate_size=4 * hidden, max_position_embeddings=2048,
                             tie_word_embeddings=True, **common)
        cls = LlamaForCausalLM
    # fork_rng: seeding must not disturb the caller's global torch stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config).eval()

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # Make the wrapper class explicit: left to the config's model_type,
    # AutoTokenizer could pick an architecture-specific class that rebuilds
    # the pipeline from vocab and merges and drops our post-processor.
    config_file = out / "tokenizer_config.json"
    tok_config = json.loads(config_file.read_text())
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_file.write_text(json.dumps(tok_config, indent=2))
    return str(out)


def main(argv: list[str] | None = None) -> None:
    """``python -m swarm.policies.testing DIR``: write a tiny model for demos and smoke tests."""
    import argparse

    ap = argparse.ArgumentParser(description="Write a tiny random-weight causal LM and its "
                                             "tokenizer into DIR (nothing is downloaded).")
    ap.add_argument("dir")
    ap.add_argument("--arch", default="gpt2", choices=["gpt2", "llama"])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    path = make_tiny_model(a.dir, arch=a.arch, n_layer=a.layers, hidden=a.hidden,
                           n_head=a.heads, vocab_words=a.vocab, seed=a.seed)
    print(f"wrote a tiny {a.arch} model to {path}")


if __name__ == "__main__":
    main()
