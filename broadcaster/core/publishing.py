"""Publishing a table: the capture triggers it needs, or why it cannot have them.

Sans-I/O. A relation as the catalog describes it (:class:`Relation`, read by
:mod:`broadcaster.postgres.catalog`) goes in; :func:`plan_publish` and
:func:`plan_unpublish` return a :class:`Plan`: the statements to run (run by
:mod:`broadcaster.postgres.publishing`, under a short lock timeout) and the
one-line :class:`Outcome` to report.

A published table carries two triggers, :data:`CAPTURE_TRIGGER` and
:data:`TRUNCATE_TRIGGER`, which call ``triggers.sql``'s generic functions with
the same arguments (:func:`capture_arguments`): where its table_id comes from,
then its primary key's columns in key order. A table logs its changes under
its own name, ``schema.table`` (the argument ``''``); a partitioned table
under ``'=schema.table'``, because its triggers fire on each partition, under
the partition's name. ``rows`` is published by ``broadcaster migrate`` with a
function of its own (:data:`ROWS_FUNCTION`), each row under its ``table_id``
column.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .published import PublishedTable

__all__ = [
    "CAPTURE_FUNCTION",
    "CAPTURE_TRIGGER",
    "ROWS_FUNCTION",
    "TRUNCATE_FUNCTION",
    "TRUNCATE_TRIGGER",
    "Action",
    "Outcome",
    "Plan",
    "Publication",
    "Relation",
    "RelationKind",
    "Trigger",
    "capture_arguments",
    "plan_publish",
    "plan_unpublish",
    "publication",
    "table_names",
]

CAPTURE_TRIGGER = "broadcaster_capture"
TRUNCATE_TRIGGER = "broadcaster_capture_truncate"
CAPTURE_FUNCTION = "broadcaster_capture"
TRUNCATE_FUNCTION = "broadcaster_capture_truncate"
ROWS_FUNCTION = "broadcaster_capture_rows"
_OUR_FUNCTIONS = frozenset({CAPTURE_FUNCTION, TRUNCATE_FUNCTION, ROWS_FUNCTION})
# rows' capture function logs each row under this column (triggers.sql).
_ROWS_TABLE_ID_COLUMN = "table_id"
# The first argument of the generic functions that names the table_id to log.
_IDENTITY_PREFIX = "="
# The broadcaster's own tables: a capture on the change log would append to it
# for ever; the others are the servers' bookkeeping.
_OWN_TABLES = frozenset(
    {"broadcaster_changes", "broadcaster_state", "broadcaster_presence", "broadcaster_listeners"}
)
_SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema"})


class RelationKind(Enum):
    """What a relation is, from ``pg_class.relkind``."""

    TABLE = "r"
    PARTITIONED_TABLE = "p"
    VIEW = "v"
    MATERIALIZED_VIEW = "m"
    FOREIGN_TABLE = "f"
    #: A sequence, an index, a composite type, a TOAST table.
    OTHER = ""

    @classmethod
    def of(cls, relkind: str) -> RelationKind:
        """The kind of a ``relkind``."""
        for kind in cls:
            if kind.value == relkind:
                return kind
        return cls.OTHER


@dataclass(frozen=True)
class Trigger:
    """A trigger of a relation: the function it calls and the arguments it gives it."""

    function: str
    arguments: tuple[str, ...] = ()


@dataclass(frozen=True)
class Relation:
    """A relation as publishing sees it.

    ``table`` holds its schema, name, columns, primary key (empty: it has none)
    and row-level security. ``sql_name`` is its name as SQL spells it
    (``format('%I.%I')``). ``partition_of`` is the ``schema.table`` of the
    table it is a partition of. ``capture`` and ``truncate_capture`` are its
    triggers named :data:`CAPTURE_TRIGGER` and :data:`TRUNCATE_TRIGGER` (not
    the clones a partition gets of its parent's), if it has them.
    """

    table: PublishedTable
    sql_name: str
    kind: RelationKind = RelationKind.TABLE
    partition_of: str | None = None
    capture: Trigger | None = None
    truncate_capture: Trigger | None = None


@dataclass(frozen=True)
class Publication:
    """A published table and where its changes are logged.

    ``table_id`` is the table_id its changes are logged under; None for
    ``rows``, whose rows are each logged under the value of their
    ``table_id_column``. ``current`` is False when its triggers are not those
    ``broadcaster publish`` would give it now (its key changed, or a
    partitioned table was renamed): publishing it again re-creates them.
    """

    table: PublishedTable
    table_id: str | None
    table_id_column: str | None = None
    partitioned: bool = False
    current: bool = True

    def describe(self) -> str:
        """One line for ``broadcaster publish --list``."""
        notes = [f"key: {', '.join(self.table.key)}"]
        if self.table_id_column is not None:
            notes.append(f"each row logged under its {self.table_id_column} column")
            notes.append("published by broadcaster migrate")
        if self.partitioned:
            notes.append("partitioned")
        if self.table_id is not None and self.table_id != self.table.table_id:
            notes.append(f"logged as {self.table_id}")
        if not self.current:
            notes.append("out of date: publish it again")
        return f"{self.table.table_id} ({'; '.join(notes)})"


class Action(Enum):
    """What publishing or unpublishing a table did."""

    PUBLISHED = "published"
    REPUBLISHED = "republished"
    ALREADY_PUBLISHED = "already published"
    UNPUBLISHED = "unpublished"
    NOT_PUBLISHED = "not published"
    REFUSED = "refused"


@dataclass(frozen=True)
class Outcome:
    """The answer for one table: what was done, and a line saying it (or why not)."""

    table: str
    action: Action
    message: str

    @property
    def refused(self) -> bool:
        return self.action is Action.REFUSED

    @property
    def changed(self) -> bool:
        """Whether the table's triggers were created or dropped."""
        return self.action in (Action.PUBLISHED, Action.REPUBLISHED, Action.UNPUBLISHED)


@dataclass(frozen=True)
class Plan:
    """The statements to run, in one transaction, and the outcome once they have run."""

    outcome: Outcome
    statements: tuple[str, ...] = ()


def capture_arguments(relation: Relation) -> tuple[str, ...]:
    """The arguments of a published table's two triggers."""
    if relation.kind is RelationKind.PARTITIONED_TABLE:
        identity = _IDENTITY_PREFIX + relation.table.table_id
    else:
        identity = ""
    return (identity, *relation.table.key)


def publication(relation: Relation) -> Publication | None:
    """The publication of ``relation``, if it carries the broadcaster's capture trigger."""
    capture = relation.capture
    if capture is None:
        return None
    if capture.function == ROWS_FUNCTION:
        return Publication(relation.table, None, table_id_column=_ROWS_TABLE_ID_COLUMN)
    if capture.function != CAPTURE_FUNCTION:
        return None
    first = capture.arguments[0] if capture.arguments else ""
    table_id: str | None = relation.table.table_id
    column = None
    if first.startswith(_IDENTITY_PREFIX):
        table_id = first.removeprefix(_IDENTITY_PREFIX)
    elif first:
        table_id, column = None, first
    return Publication(
        relation.table,
        table_id,
        table_id_column=column,
        partitioned=relation.kind is RelationKind.PARTITIONED_TABLE,
        current=_is_current(relation),
    )


def plan_publish(name: str, relation: Relation | None) -> Plan:
    """What ``broadcaster publish NAME`` does to ``relation`` (None: no such relation)."""
    if relation is None:
        return _no_such_table(name)
    table = relation.table
    shown = table.table_id
    refusal = _refusal(relation)
    if refusal is not None:
        return _refused(shown, refusal)
    if _is_rows(relation):
        if relation.capture is not None and relation.capture.function == ROWS_FUNCTION:
            return Plan(
                Outcome(
                    shown,
                    Action.ALREADY_PUBLISHED,
                    f"{shown}: already published by broadcaster migrate,"
                    f" each row under its {_ROWS_TABLE_ID_COLUMN} column",
                )
            )
        return _refused(
            shown,
            f"{shown} is the broadcaster's rows table, which broadcaster migrate publishes"
            f" (each row under its {_ROWS_TABLE_ID_COLUMN} column): run broadcaster migrate",
        )
    for trigger_name, trigger in (
        (CAPTURE_TRIGGER, relation.capture),
        (TRUNCATE_TRIGGER, relation.truncate_capture),
    ):
        if trigger is not None and trigger.function not in _OUR_FUNCTIONS:
            return _refused(
                shown,
                f"{shown} has a trigger {trigger_name} that calls {trigger.function}(), not"
                f" the broadcaster's: rename or drop it (ALTER TRIGGER {trigger_name} ON"
                f" {relation.sql_name} RENAME TO ...), then publish again",
            )
    if not table.key:
        return _refused(
            shown,
            f"{shown} has no primary key: add one (ALTER TABLE {relation.sql_name}"
            " ADD PRIMARY KEY (...)) so that its changes can be identified",
        )
    key = ", ".join(table.key)
    if _is_current(relation):
        return Plan(
            Outcome(shown, Action.ALREADY_PUBLISHED, f"{shown}: already published, key: {key}")
        )
    arguments = _sql_arguments(capture_arguments(relation))
    creates = (
        f"CREATE TRIGGER {CAPTURE_TRIGGER} AFTER INSERT OR UPDATE OR DELETE"
        f" ON {relation.sql_name} FOR EACH ROW EXECUTE FUNCTION {CAPTURE_FUNCTION}({arguments})",
        f"CREATE TRIGGER {TRUNCATE_TRIGGER} BEFORE TRUNCATE"
        f" ON {relation.sql_name} FOR EACH STATEMENT"
        f" EXECUTE FUNCTION {TRUNCATE_FUNCTION}({arguments})",
    )
    with_partitions = (
        " with its partitions" if relation.kind is RelationKind.PARTITIONED_TABLE else ""
    )
    if relation.capture is None:
        outcome = Outcome(
            shown, Action.PUBLISHED, f"{shown}: published{with_partitions}, key: {key}"
        )
    else:
        outcome = Outcome(
            shown,
            Action.REPUBLISHED,
            f"{shown}: published again{with_partitions}, key: {key}"
            " (its triggers were out of date)",
        )
    # A truncate trigger left without its capture trigger is re-created too.
    return Plan(outcome, _drops(relation) + creates)


def plan_unpublish(name: str, relation: Relation | None) -> Plan:
    """What ``broadcaster unpublish NAME`` does to ``relation`` (None: no such relation)."""
    if relation is None:
        return _no_such_table(name)
    shown = relation.table.table_id
    if relation.partition_of is not None:
        return _refused(shown, _partition_refusal(relation, "unpublish"))
    if _is_rows(relation):
        return _refused(
            shown,
            f"{shown} is the broadcaster's rows table: broadcaster migrate publishes it,"
            " and it cannot be unpublished",
        )
    drops = _drops(relation)
    if not drops:
        return Plan(Outcome(shown, Action.NOT_PUBLISHED, f"{shown}: not published"))
    return Plan(
        Outcome(
            shown,
            Action.UNPUBLISHED,
            f"{shown}: unpublished (the changes logged so far stay in the log until pruned)",
        ),
        drops,
    )


def table_names(raw: str) -> tuple[str, ...]:
    """The table names of a comma-separated list, as written (``BROADCASTER_PUBLISH``).

    A comma between double quotes belongs to a name (``"a,b"``); blank entries
    are skipped. Raises :class:`ValueError` for a double quote left open.
    """
    names: list[str] = []
    current: list[str] = []
    quoted = False
    for char in raw:
        if char == '"':
            # A doubled quote inside a quoted name toggles twice: still quoted.
            quoted = not quoted
        if char == "," and not quoted:
            names.append("".join(current))
            current = []
        else:
            current.append(char)
    if quoted:
        raise ValueError(f"a double quote is left open in {raw!r}")
    names.append("".join(current))
    return tuple(name.strip() for name in names if name.strip())


def _no_such_table(name: str) -> Plan:
    return _refused(
        name,
        f"{name}: no such table (a name without a schema is looked up in search_path;"
        " a name with capitals or spaces needs double quotes: '\"My Table\"')",
    )


def _refused(shown: str, message: str) -> Plan:
    return Plan(Outcome(shown, Action.REFUSED, message))


def _refusal(relation: Relation) -> str | None:
    """Why ``relation`` cannot be published, if it cannot, whatever its triggers."""
    table = relation.table
    shown = table.table_id
    if relation.kind is RelationKind.VIEW:
        return f"{shown} is a view: only tables can be published; publish the tables it reads"
    if relation.kind is RelationKind.MATERIALIZED_VIEW:
        return (
            f"{shown} is a materialized view, whose refresh fires no row triggers:"
            " only tables can be published"
        )
    if relation.kind is RelationKind.FOREIGN_TABLE:
        return (
            f"{shown} is a foreign table, whose rows change on another server:"
            " only tables can be published"
        )
    if relation.kind is RelationKind.OTHER:
        return (
            f"{shown} is not a table (a sequence, an index or a type): only tables can be published"
        )
    if relation.partition_of is not None:
        return _partition_refusal(relation, "publish")
    if table.schema in _SYSTEM_SCHEMAS or table.schema.startswith("pg_toast"):
        return f"{shown} is a system catalog: only your own tables can be published"
    if table.name in _OWN_TABLES:
        return f"{shown} is the broadcaster's own table: it cannot be published"
    if "." in table.schema or "." in table.name:
        return (
            f"the name of {relation.sql_name} holds a dot, which would make its table_id"
            f" {shown} ambiguous: rename it without one"
            f" (ALTER TABLE {relation.sql_name} RENAME TO ...)"
        )
    return None


def _partition_refusal(relation: Relation, verb: str) -> str:
    return (
        f"{relation.table.table_id} is a partition of {relation.partition_of}:"
        f" {verb} {relation.partition_of}, whose changes are its partitions'"
    )


def _is_rows(relation: Relation) -> bool:
    """Whether ``relation`` is the broadcaster's ``rows``, published by ``migrate``."""
    if relation.capture is not None and relation.capture.function == ROWS_FUNCTION:
        return True
    # rows whose capture trigger was dropped: published as any table, its
    # changes would be logged under its own name instead of each row's table_id.
    return (
        relation.table.name == "rows"
        and relation.table.column(_ROWS_TABLE_ID_COLUMN) is not None
        and relation.kind is RelationKind.TABLE
    )


def _is_current(relation: Relation) -> bool:
    """Whether ``relation`` carries the triggers that publishing it would create."""
    if not relation.table.key:
        return False
    arguments = capture_arguments(relation)
    return relation.capture == Trigger(
        CAPTURE_FUNCTION, arguments
    ) and relation.truncate_capture == Trigger(TRUNCATE_FUNCTION, arguments)


def _drops(relation: Relation) -> tuple[str, ...]:
    """Statements dropping those of the two triggers ``relation`` has that are ours."""
    return tuple(
        f"DROP TRIGGER IF EXISTS {name} ON {relation.sql_name}"
        for name, trigger in (
            (CAPTURE_TRIGGER, relation.capture),
            (TRUNCATE_TRIGGER, relation.truncate_capture),
        )
        if trigger is not None and trigger.function in _OUR_FUNCTIONS
    )


def _sql_arguments(arguments: tuple[str, ...]) -> str:
    return ", ".join(_literal(argument) for argument in arguments)


def _literal(value: str) -> str:
    """``value`` as an SQL string literal, as Postgres' ``quote_literal`` writes it.

    With backslashes doubled in an ``E''`` literal, it reads the same whatever
    ``standard_conforming_strings`` is.
    """
    quoted = value.replace("'", "''")
    if "\\" in value:
        return "E'" + quoted.replace("\\", "\\\\") + "'"
    return "'" + quoted + "'"
