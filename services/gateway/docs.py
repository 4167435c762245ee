"""GET /docs: the OpenAPI document as one self-contained HTML page, rendered on the server.

No scripts, fonts or stylesheets from elsewhere (the gateway may run offline): operations
grouped by tag, each with its parameters, request and response schemas linking to an
anchored section per schema. Every piece of text is escaped.
"""

from __future__ import annotations

import re
from html import escape
from typing import Any

JSON = dict[str, Any]

_SCHEMA_PREFIX = "#/components/schemas/"
_RESPONSE_PREFIX = "#/components/responses/"
_CODE = re.compile(r"`([^`]+)`")

_STYLE = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2733}
header{background:#243447;color:#fff;padding:1.2em 2em}
header h1{margin:0;font-size:1.6em}
main{display:flex;align-items:flex-start}
nav{position:sticky;top:0;max-height:100vh;overflow:auto;min-width:17em;padding:1em;
background:#f4f6f8;border-right:1px solid #dde2e8;font-size:.9em}
nav ul{list-style:none;padding-left:.8em;margin:.2em 0}
article{padding:1em 2em;max-width:70em;min-width:0}
section.op{border:1px solid #dde2e8;border-radius:6px;padding:.4em 1.2em 1em;margin:1.2em 0}
h3 code{font-size:1em;word-break:break-all}
.method{display:inline-block;min-width:4.5em;text-align:center;border-radius:4px;color:#fff;
font:bold .8em monospace;padding:.25em .5em;margin-right:.6em;vertical-align:middle}
.get{background:#2f7bbf}.post{background:#3a9a5b}.patch{background:#b07d12}
.put{background:#7a5bb0}.delete{background:#c0392b}
table{border-collapse:collapse;width:100%;margin:.5em 0;font-size:.92em}
th,td{border:1px solid #dde2e8;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f4f6f8}
code{background:#f0f2f5;padding:0 .25em;border-radius:3px}
.desc p{margin:.4em 0}
.flag{font-size:.8em;color:#6a7580}
"""


def _inline(text: str) -> str:
    """Escape, then turn `code` spans into <code>."""
    return _CODE.sub(lambda m: f"<code>{m.group(1)}</code>", escape(text))


def _text(text: str) -> str:
    """A description as HTML: paragraphs, "- " lists and "## " headings (a Markdown subset)."""
    blocks: list[str] = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = [line.strip() for line in block.split("\n") if line.strip()]
        if not lines:
            continue
        if lines[0].startswith("#"):
            heading = lines.pop(0).lstrip("#").strip()
            blocks.append(f"<h4>{_inline(heading)}</h4>")
            if not lines:
                continue
        if all(line.startswith("- ") for line in lines[:1]):
            items: list[str] = []
            for line in lines:
                if line.startswith("- ") or not items:
                    items.append(line.removeprefix("- "))
                else:
                    items[-1] += " " + line
            blocks.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
        else:
            blocks.append(f"<p>{_inline(' '.join(lines))}</p>")
    return f'<div class="desc">{"".join(blocks)}</div>' if blocks else ""


def _anchor(kind: str, name: str) -> str:
    return escape(f"{kind}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}", quote=True)


def _schema_link(name: str) -> str:
    return f'<a href="#{_anchor("schema", name)}"><code>{escape(name)}</code></a>'


def type_html(schema: JSON) -> str:
    """A schema's type in a few words, with links to named schemas."""
    if not isinstance(schema, dict):
        return "any"
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return _schema_link(ref.removeprefix(_SCHEMA_PREFIX))
    for combinator in ("oneOf", "anyOf"):
        if combinator in schema:
            return " | ".join(type_html(s) for s in schema[combinator])
    kind = schema.get("type")
    if kind == "array":
        return f"array of {type_html(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map of string to {type_html(schema['additionalProperties'])}"
    if "enum" in schema:
        values = ", ".join(f"<code>{escape(str(v))}</code>" for v in schema["enum"])
        return f"{escape(str(kind or 'value'))}: one of {values}"
    if kind is None:
        return "any JSON value"
    text = escape(str(kind))
    if "format" in schema:
        text += f" ({escape(str(schema['format']))})"
    if "pattern" in schema:
        text += f' <span class="flag">matching <code>{escape(str(schema["pattern"]))}</code></span>'
    return text


def _parameters(operation: JSON) -> str:
    parameters = operation.get("parameters") or []
    if not parameters:
        return ""
    rows = []
    for parameter in parameters:
        required = '<span class="flag">required</span>' if parameter.get("required") else ""
        rows.append(
            "<tr>"
            f"<td><code>{escape(str(parameter['name']))}</code> {required}</td>"
            f"<td>{escape(str(parameter['in']))}</td>"
            f"<td>{type_html(parameter.get('schema', {}))}</td>"
            f"<td>{_text(str(parameter.get('description', '')))}</td>"
            "</tr>"
        )
    return (
        "<h4>Parameters</h4><table><tr><th>Name</th><th>In</th><th>Type</th>"
        f"<th>Description</th></tr>{''.join(rows)}</table>"
    )


def _content(content: JSON) -> str:
    items = [
        f"<li><code>{escape(media)}</code>: {type_html(entry.get('schema', {}))}</li>"
        for media, entry in content.items()
    ]
    return f"<ul>{''.join(items)}</ul>" if items else ""


def _request_body(operation: JSON) -> str:
    body = operation.get("requestBody")
    if not body:
        return ""
    required = ' <span class="flag">required</span>' if body.get("required") else ""
    return (
        f"<h4>Request body{required}</h4>{_text(str(body.get('description', '')))}"
        f"{_content(body.get('content', {}))}"
    )


def _responses(operation: JSON, document: JSON) -> str:
    rows = []
    shared = document.get("components", {}).get("responses", {})
    for status, response in operation.get("responses", {}).items():
        ref = response.get("$ref") if isinstance(response, dict) else None
        if isinstance(ref, str):
            response = shared.get(ref.removeprefix(_RESPONSE_PREFIX), {})
        rows.append(
            f"<tr><td><code>{escape(str(status))}</code></td>"
            f"<td>{_text(str(response.get('description', '')))}"
            f"{_content(response.get('content', {}))}</td></tr>"
        )
    return f"<h4>Responses</h4><table><tr><th>Status</th><th>Body</th></tr>{''.join(rows)}</table>"


def _operations_by_tag(document: JSON) -> dict[str, list[tuple[str, str, JSON]]]:
    grouped: dict[str, list[tuple[str, str, JSON]]] = {
        str(tag["name"]): [] for tag in document.get("tags", [])
    }
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            for tag in operation.get("tags") or ["default"]:
                grouped.setdefault(str(tag), []).append((str(path), str(method), operation))
    return grouped


def _schema_section(name: str, schema: JSON) -> str:
    parts = [f'<section class="schema" id="{_anchor("schema", name)}">']
    parts.append(f"<h3><code>{escape(name)}</code></h3>")
    parts.append(_text(str(schema.get("description", ""))))
    properties = schema.get("properties")
    if isinstance(properties, dict) and properties:
        required = set(schema.get("required", []))
        rows = []
        for prop, prop_schema in properties.items():
            flags = []
            if prop in required:
                flags.append("required")
            if isinstance(prop_schema, dict) and prop_schema.get("readOnly"):
                flags.append("output only")
            flag_html = f' <span class="flag">{escape(", ".join(flags))}</span>' if flags else ""
            description = (
                prop_schema.get("description", "") if isinstance(prop_schema, dict) else ""
            )
            rows.append(
                f"<tr><td><code>{escape(str(prop))}</code>{flag_html}</td>"
                f"<td>{type_html(prop_schema)}</td><td>{_text(str(description))}</td></tr>"
            )
        parts.append(
            "<table><tr><th>Property</th><th>Type</th><th>Description</th></tr>"
            f"{''.join(rows)}</table>"
        )
    elif not properties:
        parts.append(
            f"<p>Type: {type_html({k: v for k, v in schema.items() if k != 'description'})}</p>"
        )
    parts.append("</section>")
    return "".join(parts)


def render_docs(document: JSON) -> str:
    """The whole page for an OpenAPI document."""
    info = document.get("info", {})
    title = escape(f"{info.get('title', 'API')} {info.get('version', '')}".strip())
    grouped = _operations_by_tag(document)
    tag_descriptions = {
        str(t["name"]): str(t.get("description", "")) for t in document.get("tags", [])
    }
    schemas: JSON = document.get("components", {}).get("schemas", {})

    nav = ["<nav><strong>Operations</strong><ul>"]
    for tag, operations in grouped.items():
        nav.append(f'<li><a href="#{_anchor("tag", tag)}">{escape(tag)}</a><ul>')
        for _, _, operation in operations:
            op_id = str(operation.get("operationId", ""))
            nav.append(f'<li><a href="#{_anchor("op", op_id)}">{escape(op_id)}</a></li>')
        nav.append("</ul></li>")
    nav.append('</ul><strong><a href="#schemas">Schemas</a></strong><ul>')
    nav.extend(f'<li><a href="#{_anchor("schema", n)}">{escape(n)}</a></li>' for n in schemas)
    nav.append("</ul></nav>")

    body = [f"<h2>Overview</h2>{_text(str(info.get('description', '')))}"]
    body.append(
        '<p>Machine-readable: <a href="/openapi.json"><code>/openapi.json</code></a> '
        f"(OpenAPI {escape(str(document.get('openapi', '')))}).</p>"
    )
    for tag, operations in grouped.items():
        body.append(f'<h2 id="{_anchor("tag", tag)}">{escape(tag)}</h2>')
        body.append(_text(tag_descriptions.get(tag, "")))
        for path, method, operation in operations:
            op_id = str(operation.get("operationId", ""))
            body.append(
                f'<section class="op" id="{_anchor("op", op_id)}">'
                f'<h3><span class="method {escape(method, quote=True)}">'
                f"{escape(method.upper())}</span><code>{escape(path)}</code></h3>"
                f"<p><strong>{escape(str(operation.get('summary', '')))}</strong> "
                f'<span class="flag">operationId <code>{escape(op_id)}</code></span></p>'
                f"{_text(str(operation.get('description', '')))}"
                f"{_parameters(operation)}{_request_body(operation)}"
                f"{_responses(operation, document)}</section>"
            )
    body.append('<h2 id="schemas">Schemas</h2>')
    body.extend(_schema_section(str(name), schema) for name, schema in schemas.items())

    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title><style>{_STYLE}</style></head><body>"
        f"<header><h1>{title}</h1></header><main>{''.join(nav)}"
        f"<article>{''.join(body)}</article></main></body></html>\n"
    )
