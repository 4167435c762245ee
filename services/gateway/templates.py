"""google.api.HttpRule path templates: parse, match, expand.

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb     = ":" LITERAL ;

A variable without "=" binds one segment ("{x}" is "{x=*}"); "**" binds the rest of the path
(one or more segments, slashes included) and may only come last. Matching is on the
percent-decoded path, so a resource name sent as one percent-encoded segment
("/v1/experiments%2Fabc") matches "/v1/{name=experiments/*}" too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LITERAL = re.compile(r"[^/{}*:=]+")


class TemplateError(ValueError):
    """A malformed path template in a proto annotation (a build-time bug, not user input)."""


@dataclass(frozen=True)
class Segment:
    """One path segment: a literal, "*" (one segment) or "**" (the rest)."""

    kind: str  # "literal" | "*" | "**"
    text: str = ""


@dataclass(frozen=True)
class Variable:
    field_path: str  # e.g. "name", "experiment.name", "metadata.run"
    segments: tuple[Segment, ...]  # what the variable matches, e.g. experiments/*


@dataclass(frozen=True)
class PathTemplate:
    source: str
    parts: tuple[Segment | Variable, ...]
    verb: str | None
    _pattern: re.Pattern[str] = field(compare=False, repr=False)

    @property
    def variables(self) -> tuple[Variable, ...]:
        return tuple(p for p in self.parts if isinstance(p, Variable))

    @property
    def literal_count(self) -> int:
        """How specific the template is: more literal segments win ties between matches."""
        count = 0
        for part in self.parts:
            segments = part.segments if isinstance(part, Variable) else (part,)
            count += sum(1 for s in segments if s.kind == "literal")
        return count + (1 if self.verb else 0)

    def match(self, path: str) -> dict[str, str] | None:
        """Field path -> bound value for a request path (decoded here), or None."""
        found = self._pattern.fullmatch(unquote(path))
        if found is None:
            return None
        return {
            variable.field_path: found.group(f"v{index}")
            for index, variable in enumerate(self.variables)
        }

    def expand(self, values: dict[str, str]) -> str:
        """The path for the given variable values (for tests and docs)."""
        out = []
        for part in self.parts:
            if isinstance(part, Variable):
                out.append(values[part.field_path])
            else:
                out.append(part.text if part.kind == "literal" else "-")
        return "/" + "/".join(out) + (f":{self.verb}" if self.verb else "")


def _segment_regex(segment: Segment, last: bool) -> str:
    if segment.kind == "literal":
        return re.escape(segment.text)
    if segment.kind == "*":
        return r"[^/]+"
    return r".+" if last else r"[^/]+(?:/[^/]+)*"


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
    flat: list[Segment] = []
    for part in parts:
        flat.extend(part.segments if isinstance(part, Variable) else (part,))
    if any(s.kind == "**" for s in flat[:-1]):
        raise TemplateError(f"{source}: '**' may only be the last segment")
    regex = []
    for index_part, part in enumerate(parts):
        last_part = index_part == len(parts) - 1
        if isinstance(part, Variable):
            inner = "/".join(
                _segment_regex(s, last_part and i == len(part.segments) - 1)
                for i, s in enumerate(part.segments)
            )
            variable_index = sum(1 for p in parts[:index_part] if isinstance(p, Variable))
            regex.append(f"(?P<v{variable_index}>{inner})")
        else:
            regex.append(_segment_regex(part, last_part))
    pattern = "/" + "/".join(regex) + (re.escape(f":{verb}") if verb else "")
    return PathTemplate(source, parts, verb, re.compile(pattern))
