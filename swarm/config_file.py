"""Reading a config file: YAML text parsed with limits, because a config is data.

A config may come from someone else (a shared example, a run directory's
manifest, a sweep). PyYAML's safe loader builds no Python objects, but it
still expands aliases by reference: 467 bytes of nested aliases ("billion
laughs") become a structure that pydantic walks for minutes and gigabytes.
So before anything is built the text's event stream is measured: the file's
size, its nesting depth, how many aliases it uses and how many values it
would hold once every alias is expanded; a recursive alias is refused.
"""

from __future__ import annotations

import os

import yaml

from swarm.errors import ConfigError

__all__ = ["read_yaml", "parse_yaml", "shorten", "MAX_CONFIG_BYTES", "MAX_DEPTH",
           "MAX_ALIASES", "MAX_VALUES"]

#: Largest config file read (a config with an inline degree list of 10^5 agents fits).
MAX_CONFIG_BYTES = 4 * 1024**2
#: Deepest nesting of mappings and lists.
MAX_DEPTH = 32
#: Most aliases (``*name``) a config may use.
MAX_ALIASES = 64
#: Most values (scalars, mappings and lists) once every alias is expanded.
MAX_VALUES = 1_000_000
#: Characters of a user's value shown in an error message.
SHOWN = 200


def shorten(value, limit: int = SHOWN) -> str:
    """``repr(value)`` cut to ``limit`` characters, saying how long it was.

    >>> shorten("x" * 1000, 10)
    "'xxxxxxxx... (1,002 characters)"
    """
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 1]}... ({len(text):,} characters)"


def read_yaml(path: str | os.PathLike):
    """Parse a YAML config file within the limits above, or raise ConfigError."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory; give the config file's path") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES // 1024**2} MiB; a config "
                          "names its data (edgelist.path, personas), it does not hold it")
    if b"\0" in data:
        raise ConfigError(f"{path}: a binary file, not a YAML config")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8"
                          ) from None
    raw = parse_yaml(text, path)
    if raw is None:
        raise ConfigError(f"{path}: the config file is empty")
    return raw


def parse_yaml(text: str, source: str = "<config>"):
    """Parse YAML ``text`` after checking depth, aliases and expanded size.

    Examples
    --------
    >>> parse_yaml("a: &x [1, 2]\\nb: *x")
    {'a': [1, 2], 'b': [1, 2]}
    >>> parse_yaml("a: &a [*a]")
    Traceback (most recent call last):
    ...
    swarm.errors.ConfigError: <config>: line 1: alias *a refers to a value that contains it
    """
    try:
        _measure(text, source)
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}: not valid YAML{at}: {problem}") from None


def _measure(text: str, source: str) -> None:
    """Walk the event stream once: depth, aliases and the size after expansion."""
    # Each open mapping or list counts its values; an anchored node's total is
    # remembered so that every alias to it adds that many.
    stack: list[list] = []  # [anchor, values so far]
    sizes: dict[str, int] = {}
    aliases = total = 0

    def add(count: int) -> None:
        nonlocal total
        total += count
        if stack:
            stack[-1][1] += count
        if total > MAX_VALUES:
            raise ConfigError(f"{source}: expands to more than {MAX_VALUES:,} values (through "
                              "YAML aliases); write the values out or shorten the config")

    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        line = event.start_mark.line + 1 if event.start_mark else 0
        if isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise ConfigError(f"{source}: more than {MAX_ALIASES} YAML aliases (*name); "
                                  "write the values out")
            if event.anchor not in sizes:
                if any(open_anchor == event.anchor for open_anchor, _ in stack):
                    raise ConfigError(f"{source}: line {line}: alias *{event.anchor} refers "
                                      "to a value that contains it")
                continue  # an unknown anchor: the loader reports it
            add(sizes[event.anchor])
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor:
                sizes[event.anchor] = 1
            add(1)
        elif isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            stack.append([event.anchor, 0])
            if len(stack) > MAX_DEPTH:
                raise ConfigError(f"{source}: line {line}: nested deeper than {MAX_DEPTH} "
                                  "levels")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            # Its values were counted as they came; now the mapping or list itself.
            anchor, inner = stack.pop()
            if anchor:
                sizes[anchor] = inner + 1
            add(1)
            if stack:
                stack[-1][1] += inner
