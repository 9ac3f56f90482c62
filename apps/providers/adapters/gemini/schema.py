"""JSON Schema (what OpenAI tools and ``response_format`` carry) → the OpenAPI 3.0 subset Gemini's
``Schema`` accepts (https://ai.google.dev/api/caching#Schema).

Gemini parses request JSON strictly: a key its ``Schema`` message does not have (``additionalProperties``,
``$schema``, ``strict``, ``$defs``, ``const``…) fails the whole request with 400 "Unknown name". So the
schema is rebuilt from the keys Gemini knows: ``$ref`` is inlined from ``$defs``/``definitions`` (a few
levels deep), a ``type`` list with ``"null"`` becomes ``nullable``, ``const`` becomes a one-value ``enum``,
a ``format`` Gemini does not know for the type (``uri``, ``email``…) is dropped, and everything else
unknown is dropped (validation keywords only: the model still sees the shape).
"""

from __future__ import annotations

from typing import Any

_KEPT = frozenset({"type", "title", "description", "nullable", "enum", "maxItems", "minItems", "required",
                   "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example", "default",
                   "minimum", "maximum", "propertyOrdering"})
_MAX_REF_DEPTH = 8
# The only ``format`` values Gemini accepts, per type; any other (``uri``, ``email``…) is refused with a 400.
_FORMATS = {"string": {"enum", "date-time"}, "integer": {"int32", "int64"}, "number": {"float", "double"}}


def gemini_schema(schema: Any) -> dict[str, Any] | None:
    """``schema`` reduced to Gemini's subset, or None when it is not a JSON object."""
    if not isinstance(schema, dict):
        return None
    definitions = {**(schema.get("definitions") or {}), **(schema.get("$defs") or {})}
    return _reduce(schema, definitions, 0)


def _resolve(schema: dict[str, Any], definitions: dict[str, Any], depth: int) -> dict[str, Any]:
    ref = schema.get("$ref")
    if not isinstance(ref, str) or depth > _MAX_REF_DEPTH:
        return schema
    target = definitions.get(ref.rsplit("/", 1)[-1])
    if not isinstance(target, dict):
        return {k: v for k, v in schema.items() if k != "$ref"}
    return {**target, **{k: v for k, v in schema.items() if k != "$ref"}}


def _reduce(schema: dict[str, Any], definitions: dict[str, Any], depth: int) -> dict[str, Any]:
    schema = _resolve(schema, definitions, depth)
    out: dict[str, Any] = {key: value for key, value in schema.items() if key in _KEPT}
    kind = schema.get("type")
    if isinstance(kind, list):
        types = [t for t in kind if t != "null"]
        out["type"] = types[0] if types else "string"
        if "null" in kind:
            out["nullable"] = True
    if schema.get("format") in _FORMATS.get(str(out.get("type", "")).lower(), ()):
        out["format"] = schema["format"]
    if "const" in schema and "enum" not in out:
        out["enum"] = [schema["const"]]
    if isinstance(schema.get("properties"), dict):
        out["properties"] = {name: _reduce(value, definitions, depth + 1) if isinstance(value, dict) else {}
                             for name, value in schema["properties"].items()}
    if isinstance(schema.get("items"), dict):
        out["items"] = _reduce(schema["items"], definitions, depth + 1)
    variants = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(variants, list):
        out["anyOf"] = [_reduce(v, definitions, depth + 1) for v in variants if isinstance(v, dict)]
    return out
