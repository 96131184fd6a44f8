"""JSON from clients, parsed with a bound on its nesting: every protocol's parser uses it.

Sans-I/O. Python's JSON parser and encoder recurse. Arrays nested thirty
thousand deep fit in a 64 KiB message and make the parser raise
RecursionError; nesting just under Python's recursion limit parses, then makes
the encoder fail when the value is sent on from deeper in the stack (a
broadcast, a presence). No real message nests more than a few levels, so
anything deeper than :data:`MAX_DEPTH` is refused as invalid JSON.
"""

from __future__ import annotations

import json
from typing import Any, Final

__all__ = ["MAX_DEPTH", "loads"]

MAX_DEPTH: Final = 128
"""Arrays and objects a client's JSON may nest; far below Python's recursion limit (1000)."""


def loads(text: str | bytes, **options: Any) -> Any:
    """``json.loads(text, **options)``; ValueError for invalid JSON, or JSON nested too deep."""
    try:
        value = json.loads(text, **options)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from None
    if _containers(text) > MAX_DEPTH and _deeper_than_max(value):
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    return value


def _containers(text: str | bytes) -> int:
    """At least the arrays and objects in ``text`` (brackets in strings count too)."""
    if isinstance(text, str):
        return text.count("[") + text.count("{")
    return text.count(b"[") + text.count(b"{")


def _deeper_than_max(value: Any) -> bool:
    """Does ``value`` nest arrays and objects deeper than :data:`MAX_DEPTH`?

    Iterative: a recursive walk would meet the very limit it guards against.
    """
    if not isinstance(value, dict | list):
        return False
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]
    while stack:
        container, depth = stack.pop()
        children = container.values() if isinstance(container, dict) else container
        for child in children:
            if isinstance(child, dict | list):
                if depth >= MAX_DEPTH:
                    return True
                stack.append((child, depth + 1))
    return False
