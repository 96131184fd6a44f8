"""The top-level members of a JSON object, found in its text: where each starts and ends.

Row images are JSON text Postgres wrote (``to_jsonb``). Cutting one to some
columns, or reading its values one at a time, needs only where each member
starts and ends: its values are copied, never re-encoded (a ``numeric`` keeps
every digit), and a value nested deeper than Python's parser goes (about a
thousand levels, which ``jsonb`` allows) is skipped over without recursion.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Final

__all__ = ["members", "only_members"]

_DECODER: Final = json.JSONDecoder()


def members(text: str) -> list[tuple[str, str, str]]:
    """Each member of the JSON object ``text``: its name, its text and its value's text.

    The member's text runs from its name's opening quote to its value's end.
    ``text`` must be a JSON object; anything else raises :class:`ValueError`.
    """
    found: list[tuple[str, str, str]] = []
    try:
        at = _skip_space(text, 0)
        if text[at] != "{":
            raise ValueError("not a JSON object")
        at = _skip_space(text, at + 1)
        while text[at] != "}":
            start = at
            name, at = _DECODER.raw_decode(text, at)
            at = _skip_space(text, at)
            if text[at] != ":":
                raise ValueError(f"not a JSON object: no ':' at {at}")
            value_start = _skip_space(text, at + 1)
            end = _value_end(text, value_start)
            found.append((name, text[start:end], text[value_start:end]))
            at = _skip_space(text, end)
            if text[at] == ",":
                at = _skip_space(text, at + 1)
            elif text[at] != "}":
                raise ValueError(f"not a JSON object: no ',' at {at}")
    except IndexError:
        raise ValueError("not a JSON object: it ends too early") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not a JSON object: {exc}") from None
    return found


def only_members(text: str, names: Collection[str]) -> str:
    """The JSON object ``text`` with only its members called one of ``names``.

    Each kept member is copied as written; ``text`` itself comes back when
    every member is kept.
    """
    kept: list[str] = []
    dropped = False
    for name, member, _ in members(text):
        if name in names:
            kept.append(member)
        else:
            dropped = True
    return "{" + ", ".join(kept) + "}" if dropped else text


def _skip_space(text: str, at: int) -> int:
    while text[at : at + 1] in (" ", "\t", "\n", "\r"):
        at += 1
    return at


def _value_end(text: str, at: int) -> int:
    """Where the JSON value starting at ``at`` ends."""
    try:
        return _DECODER.raw_decode(text, at)[1]
    except RecursionError:
        return _nested_value_end(text, at)


def _nested_value_end(text: str, at: int) -> int:
    """Where the array or object starting at ``at`` ends, found without recursion."""
    depth = 0
    while True:
        char = text[at]
        if char == '"':
            at = _DECODER.raw_decode(text, at)[1]
            continue
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth == 0:
                return at + 1
        at += 1
