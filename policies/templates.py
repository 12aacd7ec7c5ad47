"""Prompt templates as data: named fields and format specs, never Python attributes.

The decide stage of LLM-style agents renders one prompt per distinct agent
state from a template that comes from a user's config or from a run
directory someone else wrote. A plain ``str.format`` over live objects would
let such a template walk attributes (``{persona.__init__.__globals__}``) to
the process's environment, so a template may only name declared fields
(``{exposures}``, ``{memory}``), one persona column (``{persona.role}``),
each with a plain format spec (``{influence:.2f}``, ``{persona:>10}``).
:func:`check_template_syntax` refuses anything else when a config is
validated, and :class:`TemplateFormatter` renders by looking names up in a
dict of plain values, so a template that slipped past validation still
reaches nothing else.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

__all__ = [
    "MAX_WIDTH",
    "Persona",
    "TemplateError",
    "TemplateFormatter",
    "check_template_syntax",
    "render_template",
    "template_fields",
]

#: The largest width or precision a format spec may give: enough to pad or cut
#: any field of a prompt, small enough that ``{x:>999999999}`` cannot make a
#: gigabyte string out of one field.
MAX_WIDTH = 1000

# The format-spec mini-language (docs.python.org, "Format Specification
# Mini-Language"): [[fill]align][sign][z][#][0][width][grouping][.precision][type].
# The fill may be any character but a brace, since braces would nest fields.
_FORMAT_SPEC = re.compile(
    r"(?:[^{}]?[<>=^])?[-+ ]?z?\#?0?(?P<width>\d+)?[_,]?(?:\.(?P<precision>\d+))?"
    r"[bcdeEfFgGnosxX%]?"
)

#: What a template may contain, for error messages.
ALLOWED = ("{NAME} for a declared field (the env's observation fields, persona, memory, "
           "actions, step; choice in text templates) or {persona.COLUMN} for a persona "
           "column, each with an optional plain format spec such as {x:.2f} or {x:>10}")


class TemplateError(ValueError):
    """A template uses something other than named fields with plain format specs."""


class Persona:
    """One persona row: ``{persona}`` renders its description, ``{persona.COLUMN}`` a column.

    Columns are values in a dict, looked up by name; they are not attributes,
    so a template cannot reach anything but the row's own plain values.

    Examples
    --------
    >>> p = Persona({"agent": 3, "role": "journalist", "description": "a reporter"})
    >>> str(p), p.column("role"), format(p, ">12")
    ('a reporter', 'journalist', '  a reporter')
    """

    __slots__ = ("_row",)

    def __init__(self, row: Mapping[str, Any]):
        self._row = dict(row)

    @property
    def columns(self) -> list[str]:
        """The row's column names."""
        return list(self._row)

    def column(self, name: str) -> Any:
        """The value of column ``name``, or a TemplateError naming the columns there are."""
        try:
            return self._row[name]
        except KeyError:
            raise TemplateError(f"{{persona.{name}}}: the persona table has no column {name!r}; "
                                f"its columns: {self.columns}") from None

    def __str__(self) -> str:
        for key in ("description", "persona", "name"):
            if key in self._row:
                return str(self._row[key])
        return "; ".join(f"{k}: {v}" for k, v in self._row.items() if k != "agent")

    def __repr__(self) -> str:
        return f"Persona({self._row!r})"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def _field_text(name: str, spec: str | None, conversion: str | None) -> str:
    return ("{" + name + (f"!{conversion}" if conversion else "")
            + (f":{spec}" if spec else "") + "}")


def _refusal(name: str, spec: str | None, conversion: str | None) -> str | None:
    """Why field ``{name!conversion:spec}`` is not allowed, or None when it is."""
    if name == "" or name[0].isdigit():
        return "positional fields ({} or {0}) are not allowed; name the field, e.g. {exposures}"
    if "[" in name or "]" in name:
        return "indexing ([...]) is not allowed"
    head, dot, column = name.partition(".")
    if not head.isidentifier():
        return "a field name must be an identifier, e.g. {exposures}"
    if dot and head != "persona":
        return "attribute access is not allowed (the one dotted form is {persona.COLUMN})"
    if dot and (not column.isidentifier() or column.startswith("_")):
        return ("{persona.COLUMN} names one persona column, an identifier not starting "
                "with _")
    if conversion is not None:
        return "conversions (!r, !s, !a) are not allowed"
    if spec and ("{" in spec or "}" in spec):
        return "a format spec may not contain fields ({x:{y}})"
    if spec:
        return _spec_refusal(spec)
    return None


@functools.lru_cache(maxsize=1024)
def _spec_refusal(spec: str) -> str | None:
    match = _FORMAT_SPEC.fullmatch(spec)
    if match is None:
        return (f"{spec!r} is not a plain format spec "
                "([[fill]align][sign][z][#][0][width][grouping][.precision][type], "
                "e.g. .2f or >10)")
    for part in ("width", "precision"):
        if match[part] is not None and int(match[part]) > MAX_WIDTH:
            return f"the {part} in {spec!r} is over {MAX_WIDTH}"
    return None


# Rendering checks each field and spec again (a formatter may be handed a
# template that was never validated); caching keeps that off the hot path.
_name_refusal = functools.lru_cache(maxsize=1024)(lambda name: _refusal(name, None, None))


@functools.lru_cache(maxsize=256)
def _parse(template: str) -> tuple[tuple[str, str | None, str | None, None], ...]:
    """``string.Formatter.parse`` of a checked template (cached: rendering parses once)."""
    if not isinstance(template, str):
        raise TemplateError(f"a template must be a string; got {type(template).__name__}")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TemplateError(f"not a valid template ({exc}); write fields as {{name}} and "
                            "literal braces as {{ and }}") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        why = _refusal(name, spec, conversion)
        if why is not None:
            raise TemplateError(f"field {_field_text(name, spec, conversion)} is not allowed: "
                                f"{why}. A template may use {ALLOWED}")
    return tuple(parsed)


def check_template_syntax(template: str) -> str:
    """``template`` itself if it names fields only in allowed forms; else a TemplateError.

    Which names exist depends on the env (see ``check_template`` in
    :mod:`swarm.policies.llm`); this checks the forms, so a config can be
    refused before the env is known.

    Examples
    --------
    >>> check_template_syntax("You are {persona.role}; {influence:.2f}; {{literal}}")
    'You are {persona.role}; {influence:.2f}; {{literal}}'
    >>> try:
    ...     check_template_syntax("{persona.__init__.__globals__}")
    ... except TemplateError as exc:
    ...     print(str(exc).split(":")[0])
    field {persona.__init__.__globals__} is not allowed
    """
    _parse(template)
    return template


def template_fields(template: str) -> list[str]:
    """The top-level names a template uses, in order of first use (checked as above).

    Examples
    --------
    >>> template_fields("You are {persona.role}; {exposures} shared. {memory}")
    ['persona', 'exposures', 'memory']
    """
    names: list[str] = []
    for _, name, _, _ in _parse(template):
        if name is not None:
            head = name.partition(".")[0]
            if head not in names:
                names.append(head)
    return names


class TemplateFormatter(string.Formatter):
    """A ``string.Formatter`` that resolves only the names it is given.

    Fields are looked up in the keyword values by name; ``{persona.COLUMN}``
    reads a column of a :class:`Persona` (or a mapping) by name. Nothing is
    reached through ``getattr`` or ``[]``, conversions are refused, and format
    specs must be plain, so a template can render nothing but the values
    passed in.

    Examples
    --------
    >>> f = TemplateFormatter()
    >>> try:
    ...     f.format("{n!r} of {who.role}", n=7, who={"role": "x"})
    ... except TemplateError as exc:
    ...     print(str(exc).split(":")[0])
    field {n!r} is not allowed
    >>> f.format("{n:>3} of {persona.role}", n=7, persona=Persona({"role": "editors"}))
    '  7 of editors'
    """

    def parse(self, format_string: str) -> Iterator[tuple[str, str | None, str | None, None]]:
        return iter(_parse(format_string))

    def vformat(self, format_string: str, args: Sequence[Any],
                kwargs: Mapping[str, Any]) -> str:
        # No recursion into format specs (string.Formatter's would render fields
        # nested in a spec): the parse above has refused any spec with a brace.
        if args:
            raise TemplateError("templates take named values only")
        parts = []
        for literal, field_name, spec, conversion in self.parse(format_string):
            parts.append(literal)
            if field_name is not None:
                value, _ = self.get_field(field_name, args, kwargs)
                value = self.convert_field(value, conversion)
                parts.append(self.format_field(value, spec or ""))
        return "".join(parts)

    def get_field(self, field_name: str, args: Sequence[Any],
                  kwargs: Mapping[str, Any]) -> tuple[Any, str]:
        name, dot, column = field_name.partition(".")
        why = _name_refusal(field_name)
        if why is not None:
            raise TemplateError(f"field {{{field_name}}} is not allowed: {why}")
        if name not in kwargs:
            raise KeyError(name)
        value = kwargs[name]
        if dot:
            if isinstance(value, Persona):
                value = value.column(column)
            elif isinstance(value, Mapping):
                value = value[column]
            else:
                raise TemplateError(f"{{{field_name}}}: {name} has no columns")
        return value, name

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion is not None:
            raise TemplateError("conversions (!r, !s, !a) are not allowed in templates")
        return value

    def format_field(self, value: Any, format_spec: str) -> str:
        why = _spec_refusal(format_spec) if format_spec else None
        if why is not None or "{" in format_spec or "}" in format_spec:
            raise TemplateError(f"format spec {format_spec!r} is not allowed: "
                                f"{why or 'it contains a field'}")
        return format(value, format_spec)


_FORMATTER = TemplateFormatter()


def render_template(template: str, /, **values: Any) -> str:
    """``template`` rendered with ``values`` through :class:`TemplateFormatter`.

    Examples
    --------
    >>> render_template("{exposures} of {in_degree} shared; {influence:.2f}",
    ...                 exposures=2, in_degree=5, influence=0.125)
    '2 of 5 shared; 0.12'
    """
    return _FORMATTER.vformat(template, (), values)
