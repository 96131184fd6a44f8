"""broadcaster.core.members: a JSON object's members, found in its text."""

from __future__ import annotations

import json

import pytest

from broadcaster.core.members import members, only_members

IMAGE = '{"id": 7, "price": 1.10, "tags": ["a", "]"], "note": "{\\"x\\": 1}", "meta": {"k": null}}'


def test_members_are_named_and_copied_as_written() -> None:
    assert members(IMAGE) == [
        ("id", '"id": 7', "7"),
        ("price", '"price": 1.10', "1.10"),
        ("tags", '"tags": ["a", "]"]', '["a", "]"]'),
        ("note", '"note": "{\\"x\\": 1}"', '"{\\"x\\": 1}"'),
        ("meta", '"meta": {"k": null}', '{"k": null}'),
    ]


@pytest.mark.parametrize("text", ["{}", " { } ", "{\n}"])
def test_an_empty_object_has_no_members(text: str) -> None:
    assert members(text) == []


def test_a_name_with_escapes_is_decoded() -> None:
    assert [name for name, _, _ in members('{"a\\"b": 1, "\\u00e9": 2}')] == ['a"b', "é"]


def test_only_members_keeps_the_named_ones_in_their_order() -> None:
    assert only_members(IMAGE, {"meta", "id"}) == '{"id": 7, "meta": {"k": null}}'
    assert json.loads(only_members(IMAGE, {"price"})) == {"price": 1.1}


def test_only_members_keeps_a_numbers_digits() -> None:
    text = '{"n": 12345678901234567890.123456789012345678, "drop": 1}'
    assert only_members(text, {"n"}) == '{"n": 12345678901234567890.123456789012345678}'


def test_only_members_returns_the_text_itself_when_nothing_is_dropped() -> None:
    assert only_members(IMAGE, {"id", "price", "tags", "note", "meta", "other"}) is IMAGE


def test_only_members_can_keep_none() -> None:
    assert only_members(IMAGE, set()) == "{}"


def test_a_value_nested_deeper_than_python_parses_is_skipped_over() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    text = f'{{"deep": {deep}, "id": 1}}'
    assert only_members(text, {"id"}) == '{"id": 1}'
    assert only_members(text, {"deep"}) == f'{{"deep": {deep}}}'


@pytest.mark.parametrize(
    "text", ["", "[1]", '"x"', "{", '{"a"}', '{"a" 1}', '{"a": 1', '{"a": 1 "b": 2}', '{"a": }']
)
def test_anything_but_an_object_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a JSON object"):
        members(text)
