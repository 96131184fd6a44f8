"""Unit tests for broadcaster.payloads: decoding the NOTIFY payloads of triggers.sql."""

from __future__ import annotations

import json
from typing import Any

import pytest

from broadcaster.exceptions import BroadcasterError, PayloadError
from broadcaster.payloads import OPS, Change, decode

ROW = (
    '{"id" : "r1", "table_id" : "t1", "data" : {"b": 1, "a": "é"}, '
    '"enriching_columns" : null, "version" : 42, '
    '"created_at" : "2024-01-02T03:04:05.000006Z", "updated_at" : "2024-01-02T03:04:05.000006Z"}'
)


def header(**fields: Any) -> str:
    """A header line as triggers.sql writes it, with ``fields`` replaced or added."""
    values: dict[str, Any] = {"op": "UPDATE", "table_id": "t1", "id": "r1", "version": 42}
    values.update(fields)
    return json.dumps(values)


def header_without(name: str) -> str:
    values: dict[str, Any] = {"op": "UPDATE", "table_id": "t1", "id": "r1", "version": 42}
    del values[name]
    return json.dumps(values)


def test_ops_are_the_three_trigger_operations() -> None:
    assert frozenset({"INSERT", "UPDATE", "DELETE"}) == OPS


@pytest.mark.parametrize("op", sorted(OPS))
def test_inline_row_is_kept_verbatim(op: str) -> None:
    change = decode(header(op=op) + "\n" + ROW)

    assert change == Change(op, "t1", "r1", 42, ROW)
    assert change.row_json is not None
    assert change.row_json == ROW  # not re-serialised: spacing and key order survive
    assert not change.needs_fetch


def test_row_line_is_everything_after_the_first_newline() -> None:
    row = '{"id": "r1",\n"data": "x"}'

    assert decode(header() + "\n" + row).row_json == row


@pytest.mark.parametrize("op", ["INSERT", "UPDATE"])
def test_reference_without_row_needs_fetch(op: str) -> None:
    change = decode(header(op=op))

    assert change == Change(op, "t1", "r1", 42, None)
    assert change.needs_fetch


def test_delete_reference_gets_a_minimal_row() -> None:
    change = decode(header(op="DELETE", table_id="tablé", id="ròw", version=7))

    assert not change.needs_fetch
    assert (change.op, change.table_id, change.id, change.version) == ("DELETE", "tablé", "ròw", 7)
    assert change.row_json is not None
    assert json.loads(change.row_json) == {"id": "ròw", "table_id": "tablé", "version": 7}
    # Non-ASCII stays as UTF-8 text, like the rows Postgres writes.
    assert "tablé" in change.row_json
    assert "ròw" in change.row_json


def test_version_may_be_a_bigint() -> None:
    assert decode(header(version=2**62) + "\n" + ROW).version == 2**62


def test_header_with_unicode_escapes_is_decoded() -> None:
    change = decode('{"op":"INSERT","table_id":"t\\u00e9","id":"r\\n1","version":1}')

    assert (change.table_id, change.id) == ("té", "r\n1")


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param("", id="empty"),
        pytest.param("not json", id="not-json"),
        pytest.param('{"op": "INSERT"', id="truncated"),
        pytest.param("\n" + ROW, id="empty-header"),
    ],
)
def test_malformed_header_is_a_payload_error(payload: str) -> None:
    with pytest.raises(PayloadError, match="not JSON"):
        decode(payload)


@pytest.mark.parametrize(
    "header_text", ["[]", '["INSERT", "t1", "r1", 1]', '"INSERT"', "1", "null"]
)
def test_header_that_is_not_an_object_is_a_payload_error(header_text: str) -> None:
    with pytest.raises(PayloadError, match="not a JSON object"):
        decode(header_text + "\n" + ROW)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(header(op="TRUNCATE"), id="truncate"),
        pytest.param(header(op="insert"), id="lowercase"),
        pytest.param(header(op=""), id="empty"),
        pytest.param(header(op=None), id="null"),
        pytest.param(header(op=1), id="number"),
        pytest.param(header_without("op"), id="missing"),
    ],
)
def test_unknown_op_is_a_payload_error(payload: str) -> None:
    with pytest.raises(PayloadError, match="unknown op"):
        decode(payload)


@pytest.mark.parametrize("op", [["INSERT"], {"INSERT": 1}], ids=repr)
def test_op_of_an_unhashable_type_is_a_payload_error(op: Any) -> None:
    # The dispatcher drops a payload that raises PayloadError and carries on;
    # anything else escapes its loop. A NOTIFY on the channel is all it takes.
    with pytest.raises(PayloadError):
        decode(header(op=op) + "\n" + ROW)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(header(table_id=1), id="table_id-number"),
        pytest.param(header(table_id=None), id="table_id-null"),
        pytest.param(header(table_id=["t1"]), id="table_id-list"),
        pytest.param(header_without("table_id"), id="table_id-missing"),
        pytest.param(header(id=1), id="id-number"),
        pytest.param(header(id=None), id="id-null"),
        pytest.param(header(id={"id": "r1"}), id="id-object"),
        pytest.param(header_without("id"), id="id-missing"),
    ],
)
def test_non_string_table_id_or_id_is_a_payload_error(payload: str) -> None:
    with pytest.raises(PayloadError, match="must be strings"):
        decode(payload + "\n" + ROW)


@pytest.mark.parametrize(
    "version",
    [True, False, "42", 42.0, 4.2, None, [42]],
    ids=repr,
)
def test_version_that_is_not_an_integer_is_a_payload_error(version: Any) -> None:
    with pytest.raises(PayloadError, match="version must be an integer"):
        decode(header(version=version) + "\n" + ROW)


def test_missing_version_is_a_payload_error() -> None:
    with pytest.raises(PayloadError, match="version must be an integer"):
        decode(header_without("version"))


@pytest.mark.parametrize("op", sorted(OPS))
def test_empty_row_line_is_a_payload_error(op: str) -> None:
    with pytest.raises(PayloadError, match="empty row line"):
        decode(header(op=op) + "\n")


def test_payload_error_is_a_broadcaster_error() -> None:
    with pytest.raises(BroadcasterError):
        decode("{")
