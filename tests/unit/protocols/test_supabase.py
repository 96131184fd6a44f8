"""broadcaster.protocols.supabase: postgres_changes bindings, change payloads, Supabase's texts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from broadcaster.core.changes import Change
from broadcaster.core.published import Column, PublishedTable
from broadcaster.exceptions import FilterError
from broadcaster.protocols import supabase
from broadcaster.protocols.phoenix import Message
from broadcaster.protocols.supabase import COLUMNS, Binding
from tests.support.sessions import batch, binding, change, row

# Binding routes and filters


@pytest.mark.parametrize(
    ("text", "tables"),
    [
        ("table_id=eq.abc", ("abc",)),
        ("table_id=eq.a-b_c.d", ("a-b_c.d",)),
        ("table_id=in.(a,b)", ("a", "b")),
        ("table_id=in.( a , b )", ("a", "b")),
        ('table_id=in.("a b", c)', ("a b", "c")),
        ("table_id=in.(a,b),table_id=in.(b,c)", ("b",)),
        ("table_id=eq.a,id=eq.r1", ("a",)),
        ("id=eq.r1", None),
        ("table_id=neq.a", None),
        ("version=gt.10", None),
        ("", None),
    ],
)
def test_a_binding_routes_by_its_table_id_filters(
    text: str, tables: tuple[str, ...] | None
) -> None:
    assert Binding.parse(binding(text)).tables == tables


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("data=gt.1", "use eq, neq, in"),
        ("table_id=like.a*", "unsupported operator"),
        ("table_id", "column=operator.value"),
        ("table_id=in.(a,b", "parentheses"),
        ("table_id=in.()", "table_id"),
        ("table_id=eq.a,table_id=eq.b", "matches no table_id"),
        ("version=eq.x", "version"),
    ],
)
def test_a_binding_refuses_a_filter_with_a_reason(text: str, why: str) -> None:
    with pytest.raises(FilterError) as caught:
        Binding.parse(binding(text))
    assert why in str(caught.value)


def test_filter_error_is_a_value_error() -> None:
    assert issubclass(FilterError, ValueError)


def test_a_binding_checks_its_filters_on_the_record_or_the_deleted_key() -> None:
    parsed = Binding.parse(binding("id=in.(r1,r2),version=gt.5"))
    assert parsed.matches(change("UPDATE", "ta", "r1", 6), row("ta", "r1", 6))
    assert parsed.matches(change("INSERT", "tb", "r2", 9), row("tb", "r2", 9))
    assert not parsed.matches(change("UPDATE", "ta", "r1", 5), row("ta", "r1", 5))
    assert not parsed.matches(change("UPDATE", "ta", "r3", 6), row("ta", "r3", 6))
    deleted = change("DELETE", "ta", "r1", 7)
    assert parsed.matches(deleted, {"id": "r1", "table_id": "ta", "version": 7})
    on_time = Binding.parse(binding("created_at=gt.2020-01-01"))
    # A DELETE carries only the key: a filter on another column cannot pass.
    assert not on_time.matches(deleted, {"id": "r1", "table_id": "ta", "version": 7})


# Binding.parse


def test_binding_event_defaults_to_every_event() -> None:
    parsed = Binding.parse({"schema": "public", "table": "rows", "filter": "table_id=eq.a"})
    assert parsed.event == "*"
    assert parsed.tables == ("a",)


def test_binding_schema_defaults_to_public() -> None:
    parsed = Binding.parse({"table": "rows", "event": "INSERT", "filter": "table_id=in.(a,b)"})
    assert (parsed.event, parsed.tables) == ("INSERT", ("a", "b"))


@pytest.mark.parametrize("event", ["*", "INSERT", "UPDATE", "DELETE"])
def test_binding_events(event: str) -> None:
    assert Binding.parse(binding("table_id=eq.a", event)).event == event


@pytest.mark.parametrize("event", ["TRUNCATE", "", None, 1, "ALL"])
def test_binding_refuses_other_events(event: Any) -> None:
    with pytest.raises(FilterError) as caught:
        Binding.parse({**binding("table_id=eq.a", None), "event": event})
    assert "event must be one of" in str(caught.value)


@pytest.mark.parametrize("event", [["INSERT"], {"op": "INSERT"}])
def test_binding_refuses_an_event_that_is_not_a_string(event: Any) -> None:
    # A JSON array or object as event must be refused with a reason like any
    # other bad event, not escape as a TypeError (unhashable in the set test).
    with pytest.raises(FilterError):
        Binding.parse({**binding("table_id=eq.a", None), "event": event})


@pytest.mark.parametrize(
    "entry",
    [
        {"schema": None, "table": "rows", "filter": "table_id=eq.a"},
        {"schema": "public", "filter": "table_id=eq.a"},
        {"schema": "public", "table": ""},
        {"schema": "public", "table": "rows", "filter": 5},
    ],
)
def test_binding_refuses_a_binding_without_names(entry: dict[str, Any]) -> None:
    with pytest.raises(FilterError):
        Binding.parse(entry)


@pytest.mark.parametrize(("schema", "table"), [("public", "*"), ("*", "*")])
def test_a_wildcard_binding_names_its_tables_until_resolved(schema: str, table: str) -> None:
    parsed = Binding.parse({"schema": schema, "table": table})

    assert parsed.relation == (schema, table)
    assert parsed.published is None


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ({"schema": "public", "table": "*", "filter": "id=eq.1"}, "a filter needs one table"),
        ({"schema": "*", "table": "rows"}, "name the table's schema"),
    ],
)
def test_binding_refuses_wildcards_it_cannot_serve_with_the_reason(
    entry: dict[str, Any], reason: str
) -> None:
    with pytest.raises(FilterError) as caught:
        Binding.parse(entry)
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    "entry",
    [
        {"schema": "private", "table": "rows", "filter": "table_id=eq.a"},
        {"schema": "public", "table": "messages", "filter": "room_id=eq.5"},
        {"table": "messages"},
    ],
)
def test_a_binding_on_another_table_names_it_until_resolved(entry: dict[str, Any]) -> None:
    parsed = Binding.parse(entry)

    assert parsed.relation == (entry.get("schema", "public"), entry["table"])
    assert parsed.filter == entry.get("filter", "")
    assert parsed.published is None
    assert not parsed.matches(change("INSERT", "t1", "r1", 1), row("t1", "r1", 1))


def test_a_resolved_binding_routes_to_its_table_and_takes_postgres_decision() -> None:
    table = PublishedTable(
        "public",
        "messages",
        (Column("id", "bigint", "int8"), Column("room_id", "bigint", "int8")),
        ("id",),
    )
    resolved = Binding.parse({"table": "messages", "filter": "room_id=eq.5"}).resolve(
        [table], "room 5"
    )
    inserted = Change("INSERT", "public.messages", "1", 3, '{"id": 1, "room_id": 5}')

    assert resolved.tables == ("public.messages",)
    assert resolved.matches(inserted, {}, lambda check: check == "room 5")
    assert not resolved.matches(inserted, {}, lambda check: False)
    assert not resolved.matches(inserted, {})
    assert not resolved.matches(inserted._replace(table_id="t1"), {}, lambda check: True)


def test_a_published_table_change_carries_its_record_and_columns_as_the_table_has_them() -> None:
    table = PublishedTable(
        "public",
        "messages",
        (Column("id", "bigint", "int8"), Column("tags", "text[]", "_text")),
        ("id",),
    )
    resolved = Binding.parse({"table": "messages"}).resolve([table], None)
    shape = supabase.Shape("2.0.0", "realtime:room", (resolved,))
    updated = Change(
        "UPDATE", "public.messages", "1", 9, '{"id": 1, "tags": ["a"]}', '{"id": 1, "tags": []}'
    )

    data = data_of(shape(batch("public.messages", updated)))

    assert data["schema"] == "public"
    assert data["table"] == "messages"
    assert data["columns"] == [{"name": "id", "type": "int8"}, {"name": "tags", "type": "_text"}]
    assert data["record"] == {"id": 1, "tags": ["a"]}
    assert data["old_record"] == {"id": 1, "tags": []}


@pytest.mark.parametrize("filter", [None, ""])
def test_a_binding_without_a_filter_routes_to_every_table(filter: Any) -> None:
    entry = {"schema": "public", "table": "rows"}
    if filter is not None:
        entry["filter"] = filter
    assert Binding.parse(entry).tables is None


@pytest.mark.parametrize("filter", [5, ["table_id=eq.a"]])
def test_a_binding_filter_must_be_a_string(filter: Any) -> None:
    with pytest.raises(FilterError) as caught:
        Binding.parse({"schema": "public", "table": "rows", "filter": filter})
    assert "must be a string" in str(caught.value)


@pytest.mark.parametrize("entry", [None, "table_id=eq.a", ["table_id=eq.a"], 3])
def test_binding_must_be_an_object(entry: Any) -> None:
    with pytest.raises(FilterError):
        Binding.parse(entry)


def test_binding_ids_are_deterministic_and_equal_for_equal_entries() -> None:
    one = {"event": "INSERT", "schema": "public", "table": "rows", "filter": "table_id=eq.a"}
    same_reordered = {
        "filter": "table_id=eq.a",
        "table": "rows",
        "schema": "public",
        "event": "INSERT",
    }
    assert Binding.parse(one).id == Binding.parse(dict(one)).id
    assert Binding.parse(one).id == Binding.parse(same_reordered).id
    assert Binding.parse(one) == Binding.parse(same_reordered)


def test_binding_ids_differ_for_different_entries() -> None:
    ids = {
        Binding.parse(binding("table_id=eq.a", "INSERT")).id,
        Binding.parse(binding("table_id=eq.a", "UPDATE")).id,
        Binding.parse(binding("table_id=eq.b", "INSERT")).id,
        Binding.parse(binding("table_id=in.(a,b)", "INSERT")).id,
    }
    assert len(ids) == 4


def test_binding_ids_are_positive_31_bit_integers() -> None:
    for n in range(500):
        binding_id = Binding.parse(binding(f"table_id=eq.t{n}", "*")).id
        assert isinstance(binding_id, int)
        assert 0 < binding_id <= 0x7FFFFFFF


def test_binding_matches_its_event_and_tables() -> None:
    inserts = Binding.parse(binding("table_id=in.(a,b)", "INSERT"))
    every = Binding.parse(binding("table_id=eq.a", "*"))
    key = {"id": "r", "table_id": "a", "version": 1}
    assert inserts.matches(change("INSERT", "a", "r", 1), row("a", "r", 1))
    assert inserts.matches(change("INSERT", "b", "r", 1), row("b", "r", 1))
    assert not inserts.matches(change("UPDATE", "a", "r", 1), row("a", "r", 1))
    assert not inserts.matches(change("INSERT", "c", "r", 1), row("c", "r", 1))
    assert every.matches(change("DELETE", "a", "r", 1), key)
    assert not every.matches(change("DELETE", "b", "r", 1), {**key, "table_id": "b"})


def test_columns_describe_the_rows_table() -> None:
    assert [c["name"] for c in COLUMNS] == [
        "id",
        "table_id",
        "data",
        "enriching_columns",
        "version",
        "created_at",
        "updated_at",
    ]


# Supabase's texts


def test_a_system_message_names_the_channel_without_its_prefix() -> None:
    assert supabase.system("realtime:room", "error", "why") == Message(
        "realtime:room",
        "system",
        {"extension": "postgres_changes", "status": "error", "message": "why", "channel": "room"},
    )
    assert supabase.system("realtime:room", "error", "why", "system").payload["extension"] == (
        "system"
    )


@pytest.mark.parametrize(
    ("overdue", "text"),
    [
        (0.0, "Token has expired 0 seconds ago"),
        (-0.2, "Token has expired 0 seconds ago"),
        (2.9, "Token has expired 2 seconds ago"),
        (61.0, "Token has expired 61 seconds ago"),
    ],
)
def test_token_expired_says_how_long_ago_in_whole_seconds(overdue: float, text: str) -> None:
    assert supabase.token_expired(overdue) == text


def test_a_row_nested_deeper_than_the_parser_goes_is_still_delivered() -> None:
    # Python's json parser stops at about a thousand levels; Postgres' jsonb
    # does not. Such a column cannot be matched, but the change is not lost.
    deep = "[" * 5_000 + "]" * 5_000
    row_json = (
        '{"id" : "r1", "table_id" : "t1", "data" : {"a": ' + deep + ', "s": "}]\\""}, '
        '"enriching_columns" : [], '
        '"created_at" : "2024-04-01T09:00:00+00:00", "updated_at" : "2024-04-01T09:00:00+00:00"}'
    )
    every = Binding.parse(binding(None))
    by_table = Binding.parse(binding("table_id=eq.t1"))
    by_data = Binding.parse(binding('data=eq.{"a":1}'))
    # Not JSON's null either, which data=neq.1 would match.
    by_other_data = Binding.parse(binding("data=neq.1"))
    shape = supabase.Shape("2.0.0", "realtime:room", (every, by_table, by_data, by_other_data))

    sent = shape(batch("t1", Change("INSERT", "t1", "r1", 1, row_json)))

    assert f'"ids":[{every.id},{by_table.id}]'.encode() in sent
    assert f'"record":{row_json[:-1]},"version":1}}'.encode() in sent


def data_of(sent: bytes) -> dict[str, Any]:
    """The ``data`` of the one ``postgres_changes`` message in ``sent`` (vsn 2.0.0 frames)."""
    start = sent.index(b"[")
    message = json.loads(sent[start:])
    data: dict[str, Any] = message[4]["data"]
    return data


def test_a_change_past_a_mebibyte_keeps_its_small_values_as_postgres_wrote_them() -> None:
    table = PublishedTable(
        "public",
        "prices",
        (
            Column("id", "bigint", "int8"),
            Column("price", "numeric", "numeric"),
            Column("big", "numeric", "numeric"),
            Column("body", "text", "text"),
        ),
        ("id",),
    )
    resolved = Binding.parse({"table": "prices"}).resolve([table], None)
    shape = supabase.Shape("2.0.0", "realtime:room", (resolved,))
    exact = "12345678901234567890.123456789012345678901"
    image = '{"id": 9007199254740993, "price": ' + exact + ', "big": 1' + "0" * 400
    image += ', "body": "' + "x" * 1_100_000 + '"}'

    sent = shape(batch("public.prices", Change("INSERT", "public.prices", "1", 9, image)))

    # Every digit, as Postgres wrote it (not 1.2345678901234568e+19), and
    # the 401-digit number dropped as a long value, not sent as Infinity.
    assert f'"record":{{"id": 9007199254740993, "price": {exact}}}'.encode() in sent
    assert data_of(sent)["errors"] == [supabase.PAYLOAD_TOO_LARGE]


@pytest.mark.parametrize("op", ["INSERT", "UPDATE", "DELETE"])
def test_a_change_past_a_mebibyte_keeps_its_small_values_as_supabase_does(op: str) -> None:
    large = {**row("t1", "r1", 2), "data": {"s": "x" * 600_000}}
    old = {**large, "enriching_columns": ["email"]}
    del old["version"]
    row_json = json.dumps({"id": "r1", "table_id": "t1", "version": 2} if op == "DELETE" else large)
    the_change = Change(op, "t1", "r1", 2, row_json, None if op == "INSERT" else json.dumps(old))
    shape = supabase.Shape("2.0.0", "realtime:room", (Binding.parse(binding("data=neq.{}")),))

    data = data_of(shape(batch("t1", the_change)))

    if op == "INSERT":
        # One image of 600 KB fits: nothing is cut.
        assert (data["record"], data["errors"]) == (large, None)
    elif op == "DELETE":
        assert (data["old_record"], data["errors"]) == (old, None)
        assert "record" not in data
    else:
        # Both images, 1.2 MB: only their values of at most 64 bytes are left.
        assert data["errors"] == [supabase.PAYLOAD_TOO_LARGE]
        assert data["record"] == {key: value for key, value in large.items() if key != "data"}
        assert data["old_record"] == {key: value for key, value in old.items() if key != "data"}
