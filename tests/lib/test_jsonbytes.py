"""lib.jsonbytes: the nesting of JSON read from its bytes agrees with the parsed document."""

from __future__ import annotations

import json
import random

import orjson
import pytest

from lib.jsonbytes import brackets_outside_strings, depth_at_end, nesting_exceeds

# Strings that look like structure: brackets, quotes, escaped quotes and backslashes.
TRICKY = ["", "x", "]]]}}}", "[[{{", '"', "\\", '\\"', '"]"', "\\\\", '\\\\"[', "é[", "\u2028"]


def _depth(value) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


def _document(rng: random.Random, depth: int):
    roll = rng.random()
    if depth <= 0 or roll < 0.2:
        return rng.choice([*TRICKY, 0, -1.5e300, None, True])
    if roll < 0.6:
        return [_document(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(TRICKY) + str(i): _document(rng, depth - 1) for i in range(rng.randint(0, 3))}


def test_it_agrees_with_the_parser_on_random_documents():
    rng = random.Random(7)
    for round_ in range(3000):
        document = _document(rng, rng.randint(1, 9))
        # Both encoders: orjson (compact) and json (spaces, \\u escapes, indentation).
        raw = orjson.dumps(document) if round_ % 2 else json.dumps(document, indent=round_ % 3 or None).encode()
        depth = _depth(document)
        for limit in (0, 1, 2, 4, 8):
            assert nesting_exceeds(raw, limit) == (depth > limit), (raw, depth, limit)


@pytest.mark.parametrize(("raw", "depth"), [
    (b"{}", 1), (b"[]", 1), (b'{"a": [1]}', 2), (b'{"a": "[[[[[["}', 1), (b'["\\\\", ["\\""], "]"]', 2),
    (b'{"k\\"[": {"v": "\\\\\\"{{"}}', 2), (b"1", 0), (b'"[["', 0),
])
def test_it_counts_levels_outside_strings(raw, depth):
    assert nesting_exceeds(raw, depth) is False
    assert nesting_exceeds(raw, depth - 1) is (depth > 0)


def test_it_handles_the_depths_the_encoder_refuses():
    deep = b'{"a":' * 1500 + b"1" + b"}" * 1500
    assert nesting_exceeds(deep, 64) and not nesting_exceeds(deep, 1500)
    wide = b"[" + b"[]," * 100_000 + b"[]]"
    assert not nesting_exceeds(wide, 2) and nesting_exceeds(wide, 1)


def test_it_leaves_invalid_json_to_the_parser():
    assert nesting_exceeds(b"]]]]" * 40, 2) is False  # unbalanced: not a verdict on depth


def test_it_tells_the_depth_at_the_end_of_a_prefix():
    body = b'{"id": "x{[", "choices": [{"delta": {"content": "}}"}}], "model": "m"}'
    assert depth_at_end(body[:body.index(b'"model"')]) == 1
    assert depth_at_end(body[:body.index(b'"content"')]) == 4
    assert brackets_outside_strings(b'data: {"a": ["]"]}') == b"(())"
