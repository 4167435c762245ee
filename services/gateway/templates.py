"""google.api.HttpRule path templates (google/api/http.proto, "Path template syntax"):
parse and match.

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb     = ":" LITERAL ;

Matching works on the raw (still percent-encoded) request path, as http.proto describes:

- The path is split on "/" into raw segments; an empty segment ("//", a trailing "/")
  never matches anything.
- The verb is split off the last segment at its last unencoded ":" ("%3A" is data, never
  a verb separator; clients percent-encode ":" inside variable values, as http.proto
  requires). A template with a verb matches only that verb, one without only paths
  without one: "/v1/experiments/E/runs/R:logMetrics" is never GetRun's
  "/v1/{name=experiments/*/runs/*}".
- "*" matches one segment, "**" zero or more (it may only come last), a literal the
  segment whose percent-decoded text equals it.
- Variable values are decoded per variable: one matching a single segment ("{x}",
  "{x=*}") is fully percent-decoded, so "/v1/{id}" on "/v1/a%2Fb" binds "a/b"; one
  spanning several segments ("{name=experiments/*}", "{path=**}") is decoded except
  "%2F"/"%2f", which stay encoded so the value's own slashes remain the only separators.
  A consequence: "/v1/experiments%2Fabc" is ONE segment and does not match
  "/v1/{name=experiments/*}".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LITERAL = re.compile(r"[^/{}*:=]+")
_ENCODED_SLASH = re.compile(r"(%2[Ff])")


class TemplateError(ValueError):
    """A malformed path template in a proto annotation (a build-time bug, not user input)."""


@dataclass(frozen=True)
class Segment:
    """One path segment: a literal, "*" (one segment) or "**" (zero or more, last only)."""

    kind: str  # "literal" | "*" | "**"
    text: str = ""


@dataclass(frozen=True)
class Variable:
    field_path: str  # e.g. "name", "experiment.name", "metadata.run"
    segments: tuple[Segment, ...]  # what the variable matches, e.g. experiments/*

    @property
    def single_segment(self) -> bool:
        """A variable matching exactly one segment ("{x}", "{x=*}"): fully decoded."""
        return len(self.segments) == 1 and self.segments[0].kind != "**"


@dataclass(frozen=True)
class PathTemplate:
    source: str
    parts: tuple[Segment | Variable, ...]
    verb: str | None
    # Every template segment with the index of the variable holding it (or None).
    _flat: tuple[tuple[Segment, int | None], ...] = field(compare=False, repr=False)

    @property
    def variables(self) -> tuple[Variable, ...]:
        return tuple(p for p in self.parts if isinstance(p, Variable))

    @property
    def literal_count(self) -> int:
        """How specific the template is: more literal segments win ties between matches."""
        count = sum(1 for segment, _ in self._flat if segment.kind == "literal")
        return count + (1 if self.verb else 0)

    def match(self, path: str) -> dict[str, str] | None:
        """Field path -> decoded value for a raw (percent-encoded) request path, or None."""
        if not path.startswith("/"):
            return None
        raw = path[1:].split("/")
        head, colon, verb = raw[-1].rpartition(":")
        if colon:
            if self.verb is None or unquote(verb) != self.verb:
                return None
            raw[-1] = head
        elif self.verb is not None:
            return None
        if "" in raw:
            return None
        flat = self._flat
        tail = flat[-1][0].kind == "**"
        if len(raw) != len(flat) and not (tail and len(raw) >= len(flat) - 1):
            return None
        taken: dict[int, list[str]] = {}
        for position, (segment, variable) in enumerate(flat):
            if segment.kind == "**":
                matched = raw[position:]
            else:
                matched = [raw[position]]
                if segment.kind == "literal" and unquote(raw[position]) != segment.text:
                    return None
            if variable is not None:
                taken.setdefault(variable, []).extend(matched)
        return {
            variable.field_path: _decode(taken.get(index, []), variable)
            for index, variable in enumerate(self.variables)
        }


def _decode(segments: list[str], variable: Variable) -> str:
    if variable.single_segment:
        return unquote(segments[0])
    return "/".join(
        "".join(
            piece if _ENCODED_SLASH.fullmatch(piece) else unquote(piece)
            for piece in _ENCODED_SLASH.split(segment)
        )
        for segment in segments
    )


def _parse_segments(text: str, allow_variables: bool, source: str) -> list[Segment | Variable]:
    parts: list[Segment | Variable] = []
    position = 0
    while True:
        if text.startswith("{", position):
            if not allow_variables:
                raise TemplateError(f"{source}: nested variable")
            close = text.find("}", position)
            if close < 0:
                raise TemplateError(f"{source}: unclosed variable")
            inner = text[position + 1 : close]
            field_path, _, pattern = inner.partition("=")
            if not all(_IDENT.fullmatch(p) for p in field_path.split(".")):
                raise TemplateError(f"{source}: bad field path {field_path!r}")
            segments = _parse_segments(pattern or "*", False, source)
            parts.append(Variable(field_path, tuple(s for s in segments if isinstance(s, Segment))))
            position = close + 1
        elif text.startswith("**", position):
            parts.append(Segment("**"))
            position += 2
        elif text.startswith("*", position):
            parts.append(Segment("*"))
            position += 1
        else:
            literal = _LITERAL.match(text, position)
            if literal is None:
                raise TemplateError(f"{source}: unexpected {text[position:]!r}")
            parts.append(Segment("literal", literal.group()))
            position = literal.end()
        if position == len(text):
            return parts
        if text[position] != "/":
            raise TemplateError(f"{source}: expected '/' at {text[position:]!r}")
        position += 1


def parse_template(source: str) -> PathTemplate:
    if not source.startswith("/"):
        raise TemplateError(f"{source}: a template starts with '/'")
    body, verb = source[1:], None
    # The verb follows the last segment; colons inside variables ("{x=a:b}") are not verbs.
    last_slash = body.rfind("/")
    closing = body.rfind("}")
    colon = body.rfind(":")
    if colon > max(last_slash, closing):
        body, verb = body[:colon], body[colon + 1 :]
        if not _LITERAL.fullmatch(verb):
            raise TemplateError(f"{source}: bad verb {verb!r}")
    parts = tuple(_parse_segments(body, True, source))
    flat: list[tuple[Segment, int | None]] = []
    variable_index = 0
    for part in parts:
        if isinstance(part, Variable):
            flat.extend((segment, variable_index) for segment in part.segments)
            variable_index += 1
        else:
            flat.append((part, None))
    if any(segment.kind == "**" for segment, _ in flat[:-1]):
        raise TemplateError(f"{source}: '**' may only be the last segment")
    names = [p.field_path for p in parts if isinstance(p, Variable)]
    if len(set(names)) != len(names):
        raise TemplateError(f"{source}: a field is bound by two variables")
    return PathTemplate(source, parts, verb, tuple(flat))
