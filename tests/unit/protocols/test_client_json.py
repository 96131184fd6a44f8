"""Client JSON: nesting up to MAX_DEPTH parses, deeper is invalid, however deep."""

from __future__ import annotations

import json

import pytest

from broadcaster.protocols.client_json import MAX_DEPTH, loads


def nested(depth: int, kind: str = "array") -> str:
    if kind == "array":
        return "[" * depth + "]" * depth
    return '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)


@pytest.mark.parametrize("kind", ["array", "object"])
def test_nesting_up_to_the_limit_parses(kind: str) -> None:
    assert loads(nested(MAX_DEPTH, kind)) == json.loads(nested(MAX_DEPTH, kind))


@pytest.mark.parametrize("kind", ["array", "object"])
@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 990, 30_000])
def test_deeper_nesting_is_invalid_json(kind: str, depth: int) -> None:
    """Just past the limit, just under Python's recursion limit, and far past it."""
    with pytest.raises(ValueError, match="nested deeper than"):
        loads(nested(depth, kind))


def test_mixed_nesting_counts_arrays_and_objects_alike() -> None:
    text = '{"a":[' * (MAX_DEPTH // 2) + "1" + "]}" * (MAX_DEPTH // 2)
    assert loads(text) is not None
    with pytest.raises(ValueError, match="nested deeper than"):
        loads("[" + text + "]")


def test_brackets_inside_strings_and_wide_values_are_not_nesting() -> None:
    assert loads(json.dumps({"s": "[{" * 5000})) == {"s": "[{" * 5000}
    wide = [[i] for i in range(10_000)]
    assert loads(json.dumps(wide)) == wide


def test_bytes_and_options_are_passed_to_json() -> None:
    assert loads(b"[1, 2]") == [1, 2]
    with pytest.raises(ValueError, match="nested deeper than"):
        loads(nested(MAX_DEPTH + 1).encode())

    def refuse(name: str) -> None:
        raise ValueError(f"{name} refused")

    with pytest.raises(ValueError, match="NaN refused"):
        loads("[NaN]", parse_constant=refuse)
