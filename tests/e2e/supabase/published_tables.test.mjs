// Unmodified supabase-js apps on tables published with `broadcaster publish`:
// `messages`, `rooms` and `app."Room Members"` are published, `drafts` is not
// (tests/e2e/test_supabase.py makes and publishes them, then passes
// BROADCASTER_URL, DATABASE_URL and PYTHON, the interpreter that runs the
// broadcaster command).
//
// messages (id bigint generated always as identity primary key, room_id int,
//           body text, tags text[], at timestamptz default now(), meta jsonb)
// rooms (id int primary key, name text)
// app."Room Members" (room_id int, "user" text, since date, primary key (room_id, "user"))
// drafts (id int primary key, body text)
// typed (a column of each type) is made and published by its own test.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import pg from "pg";
import * as helpers from "./helpers.mjs";
import { collector, subscribe, within } from "./helpers.mjs";

const db = new pg.Client({ connectionString: process.env.DATABASE_URL });
await db.connect();
after(() => db.end());

// `broadcaster publish TABLE`, as a user runs it.
async function publish(table) {
  const command = [process.env.PYTHON, ["-m", "broadcaster", "publish", table]];
  const { stdout } = await within(promisify(execFile)(...command), `publishing ${table}`);
  assert.match(stdout, /: published, key: /);
}

// A client of the server; the `postgres_changes` data it receives, before
// supabase-js converts it, go to `raw` (through the client's own logger).
function supabase({ raw, ...realtime } = {}) {
  const logger = (kind, _message, payload) => {
    if (raw && kind === "receive" && payload?.data?.columns) raw.push(payload.data);
  };
  return helpers.supabase(process.env.BROADCASTER_URL, "anon-key", { ...realtime, logger });
}

// The channel `name` with one binding per entry of `filters` (a filter, null
// for none, or the binding's own parameters), each with its collector.
function channelOf(client, name, table, filters) {
  const collectors = filters.map(() => collector());
  let channel = client.channel(name);
  filters.forEach((filter, index) => {
    const binding = {
      event: "*",
      schema: "public",
      table,
      ...(typeof filter === "string" ? { filter } : filter),
    };
    channel = channel.on("postgres_changes", binding, (p) => collectors[index].push(p));
  });
  return [channel, collectors];
}

// The columns supabase-js converts `record` values by, as the server names their types.
const MESSAGE_COLUMNS = [
  { name: "id", type: "int8" },
  { name: "room_id", type: "int4" },
  { name: "body", type: "text" },
  { name: "tags", type: "_text" },
  { name: "at", type: "timestamptz" },
  { name: "meta", type: "jsonb" },
];

// A message as the table holds it after each write (what RETURNING gives):
// numbers, arrays and objects as JSON has them, `at` as Postgres writes it.
const IMAGE = "to_jsonb(messages.*) AS image";
// Four writes to a message of room $1 (the UPDATEs and the DELETE: of id $2), in order.
const WRITES = [
  [
    "INSERT",
    `INSERT INTO messages (room_id, body, tags, meta)
     VALUES ($1, 'hello', '{a,"b c"}', '{"n": 1}') RETURNING ${IMAGE}`,
  ],
  [
    "UPDATE",
    `UPDATE messages SET body = 'edited', at = '2026-11-26T10:00:00.123456+02:00'
     WHERE id = $2 AND room_id = $1 RETURNING ${IMAGE}`,
  ],
  [
    "UPDATE",
    `UPDATE messages SET tags = '{}', meta = '{"n": 2, "deep": {"x": [1, null]}}'
     WHERE id = $2 AND room_id = $1 RETURNING ${IMAGE}`,
  ],
  ["DELETE", `DELETE FROM messages WHERE id = $2 AND room_id = $1 RETURNING ${IMAGE}`],
];

// The four writes to a new message in each of `rooms`, interleaved (every
// message's INSERT, then every message's first UPDATE, ...), each its own
// transaction, none waiting for an event. Each message's images, in order.
async function fourWrites(rooms) {
  const messages = rooms.map((room) => ({ room, id: null, images: [] }));
  for (const [, sql] of WRITES) {
    for (const message of messages) {
      const params = message.id === null ? [message.room] : [message.room, message.id];
      const { rows } = await db.query(sql, params);
      message.id ??= rows[0].image.id;
      message.images.push(rows[0].image);
    }
  }
  return messages;
}

for (const vsn of ["2.0.0", "1.0.0"]) {
  test(`vsn ${vsn}: room_id=eq.5 gets each write of room 5 as an event, converted`, async () => {
    const raw = [];
    const client = supabase({ vsn, raw });
    const [channel, [room5, updates]] = channelOf(client, `room:5:${vsn}`, "messages", [
      "room_id=eq.5",
      { event: "UPDATE", filter: "room_id=eq.5" },
    ]);
    const [status, error] = await subscribe(channel);
    assert.equal(status, "SUBSCRIBED", String(error));

    // Room 6's messages are written between room 5's, and must not arrive.
    const [first, , second] = await fourWrites([5, 6, 5]);
    const events = await room5.next(8, "four events for each message of room 5");
    for (const { id, images } of [first, second]) {
      const mine = events.filter((p) => (p.eventType === "DELETE" ? p.old : p.new).id === id);
      assert.deepEqual(
        mine.map((p) => p.eventType),
        WRITES.map(([op]) => op),
        `message ${id}: one event per write, in commit order`,
      );
      const [inserted, edited, retagged, deleted] = mine;
      for (const payload of mine) {
        assert.equal(payload.schema, "public");
        assert.equal(payload.table, "messages");
        assert.match(payload.commit_timestamp, /^\d{4}-\d\d-\d\dT/);
      }
      assert.deepEqual(inserted.new, images[0]);
      assert.deepEqual(inserted.old, {});
      assert.deepEqual(edited.new, images[1]);
      assert.deepEqual(edited.old, images[0], "an UPDATE's old is the whole old row");
      assert.deepEqual(retagged.new, images[2]);
      assert.deepEqual(retagged.old, images[1]);
      assert.deepEqual(deleted.new, {});
      assert.deepEqual(deleted.old, images[3], "a DELETE's old is the whole row");
      // What supabase-js hands the app, value by value.
      assert.equal(typeof inserted.new.id, "number");
      assert.equal(inserted.new.room_id, 5);
      assert.deepEqual(inserted.new.tags, ["a", "b c"]);
      assert.deepEqual(retagged.new.tags, []);
      assert.equal(typeof inserted.new.at, "string");
      assert.equal(Date.parse(edited.new.at), Date.parse("2026-11-26T08:00:00.123Z"));
      assert.deepEqual(inserted.new.meta, { n: 1 });
      assert.deepEqual(retagged.new.meta, { n: 2, deep: { x: [1, null] } });
    }
    assert.equal(room5.seen.length, 8);
    // The channel's UPDATE-only binding got the UPDATEs alone.
    const updated = await updates.next(4, "the UPDATEs of room 5");
    assert.deepEqual(
      updated.map((p) => [p.eventType, p.new]),
      events.filter((p) => p.eventType === "UPDATE").map((p) => [p.eventType, p.new]),
    );
    // On the wire: the table's columns with their types' names.
    assert.equal(raw.length, 8, "one message for each change, naming both bindings");
    for (const data of raw) assert.deepEqual(data.columns, MESSAGE_COLUMNS);
  });
}

test("an UPDATE is matched on the row it leaves; a DELETE on the row it removed", async () => {
  const client = supabase();
  const [channel, [room55]] = channelOf(client, "room:55", "messages", ["room_id=eq.55"]);
  assert.equal((await subscribe(channel))[0], "SUBSCRIBED");
  const { rows } = await db.query(
    "INSERT INTO messages (room_id, body) VALUES (66, 'moving') RETURNING id",
  );
  const [{ id }] = rows;
  await db.query("UPDATE messages SET room_id = 55 WHERE id = $1", [id]);
  await db.query("UPDATE messages SET room_id = 66, body = 'gone' WHERE id = $1", [id]);
  await db.query("UPDATE messages SET room_id = 55, body = 'back' WHERE id = $1", [id]);
  await db.query("DELETE FROM messages WHERE id = $1", [id]);
  const events = await room55.next(3, "the moves into room 55 and the delete");
  assert.deepEqual(
    events.map((p) => [p.eventType, p.new.body, p.old.room_id]),
    [
      ["UPDATE", "moving", 66],
      ["UPDATE", "back", 66],
      ["DELETE", undefined, 55],
    ],
  );
  assert.equal(room55.seen.length, 3);
});

test("in, neq, like, is.null, not.eq and the others, each decided by Postgres", async () => {
  // Each filter and the messages (by body) it matches.
  const filters = {
    "room_id=in.(17,18)": ["hello a", "hello b", "witness"],
    // A null room_id is not "not 17": the condition is NULL, as in SQL.
    "room_id=neq.17": ["hello b", "bye c"],
    "body=like.hello%": ["hello a", "hello b", "hello d"],
    "room_id=is.null": ["hello d"],
    "room_id=not.eq.17": ["hello b", "bye c"],
    "room_id=gte.18": ["hello b", "bye c"],
    'body=in.("hello a","bye c")': ["hello a", "bye c"],
    "body=ilike.HELLO _": ["hello a", "hello b", "hello d"],
    "body=match.^(bye|wit)": ["bye c", "witness"],
    "room_id=isdistinct.17": ["hello b", "bye c", "hello d"],
    "tags=eq.{x,y}": ["hello b"],
    'meta=eq.{"k": [1, 2]}': ["bye c"],
    "body=eq.witness": ["witness"],
  };
  const client = supabase();
  const channels = Object.entries(filters).map(([filter, expected], index) => {
    const [channel, [changes]] = channelOf(client, `operators:${index}`, "messages", [filter]);
    return { filter, expected, channel, changes };
  });
  for (const { filter, channel } of channels) {
    const [status, error] = await subscribe(channel);
    assert.equal(status, "SUBSCRIBED", `${filter}: ${error}`);
  }
  await db.query(
    `INSERT INTO messages (room_id, body, tags, meta) VALUES
       (17, 'hello a', '{}', null),
       (18, 'hello b', '{x,y}', null),
       (19, 'bye c', null, '{"k": [1, 2]}'),
       (null, 'hello d', null, null)`,
  );
  // Written last, to one connection: once the witness's channel has it, every
  // channel has had the earlier inserts it was to get.
  await db.query("INSERT INTO messages (room_id, body) VALUES (17, 'witness')");
  const witness = channels.at(-1);
  await witness.changes.next(1, "the witness");
  for (const { filter, expected, changes } of channels) {
    const got = await changes.next(expected.length, `the inserts ${filter} matches`);
    assert.deepEqual(got.map((p) => p.new.body).sort(), [...expected].sort(), filter);
    assert.equal(changes.seen.length, expected.length, `${filter} got only those`);
  }
});

test("table '*' gets the published tables of its schema, schema '*' of every schema", async () => {
  const client = supabase();
  const [channel, [publicTables]] = channelOf(client, "wildcard", "*", [null]);
  const [everywhere, [everySchema]] = channelOf(client, "everywhere", "*", [{ schema: "*" }]);
  const [members, [byName]] = channelOf(client, "members", "Room Members", [
    { schema: "app", filter: "user=eq.ada" },
  ]);
  // Bound by name on the same connection: `rows` is published, but not one of '*'.
  const [witness, [logged]] = channelOf(client, "rows", "rows", ["table_id=eq.not-by-wildcard"]);
  for (const joined of [channel, everywhere, members, witness]) {
    const [status, error] = await subscribe(joined);
    assert.equal(status, "SUBSCRIBED", String(error));
  }
  await db.query("INSERT INTO drafts (id, body) VALUES (1, 'unpublished')");
  await db.query("INSERT INTO rows (id, table_id) VALUES ('r1', 'not-by-wildcard')");
  // The connection has had the change of rows: had it been the wildcards' too,
  // it would have come before anything written from now on.
  await logged.next(1, "the change of rows");

  await db.query("INSERT INTO rooms (id, name) VALUES (1, 'lobby'), (2, 'attic')");
  await db.query("INSERT INTO messages (room_id, body) VALUES (1, 'in the lobby')");
  await db.query("UPDATE rooms SET name = 'hall' WHERE id = 1");
  await db.query("DELETE FROM rooms WHERE id = 1");
  await db.query(
    `INSERT INTO app."Room Members" VALUES (2, 'ada', '2026-01-02'), (2, 'bob', null)`,
  );
  // A TRUNCATE is a DELETE of each row.
  await db.query("TRUNCATE rooms");
  // Each table's changes come in commit order; two tables' as each is read.
  const rooms = [
    ["INSERT", { id: 1, name: "lobby" }, {}],
    ["INSERT", { id: 2, name: "attic" }, {}],
    ["UPDATE", { id: 1, name: "hall" }, { id: 1, name: "lobby" }],
    ["DELETE", {}, { id: 1, name: "hall" }],
    ["DELETE", {}, { id: 2, name: "attic" }],
  ];
  const messages = [["INSERT", { room_id: 1, body: "in the lobby" }, {}]];
  const roomMembers = [
    ["INSERT", { room_id: 2, user: "ada", since: "2026-01-02" }, {}],
    ["INSERT", { room_id: 2, user: "bob", since: null }, {}],
  ];
  // `events` of schema.table, with only the columns of `expected`'s records.
  const of = (events, schema, table, expected) =>
    events
      .filter((p) => p.schema === schema && p.table === table)
      .map((p, index) => {
        const columns = Object.keys(expected[index]?.[1] ?? {});
        const picked = columns.length
          ? Object.fromEntries(columns.map((column) => [column, p.new[column]]))
          : p.new;
        return [p.eventType, picked, p.old];
      });
  const publicEvents = await publicTables.next(6, "the changes of rooms and messages");
  assert.deepEqual(of(publicEvents, "public", "rooms", rooms), rooms);
  assert.deepEqual(of(publicEvents, "public", "messages", messages), messages);
  const all = await everySchema.next(8, "the changes of every schema");
  assert.deepEqual(of(all, "public", "rooms", rooms), rooms);
  assert.deepEqual(of(all, "public", "messages", messages), messages);
  assert.deepEqual(of(all, "app", "Room Members", roomMembers), roomMembers);
  // Bound by its name, unquoted, with a filter on a column named user.
  const [ada] = await byName.next(1, "ada joining room 2");
  assert.deepEqual([ada.schema, ada.table, ada.new.user], ["app", "Room Members", "ada"]);

  // Once a later change of each table has come, nothing else is due.
  await db.query("INSERT INTO rooms (id, name) VALUES (3, 'last')");
  await db.query(`INSERT INTO app."Room Members" VALUES (3, 'ada', null)`);
  await publicTables.next(7, "the last room");
  await everySchema.next(10, "the last room and member");
  await byName.next(2, "ada joining room 3");
  assert.equal(publicTables.seen.length, 7);
  assert.equal(everySchema.seen.length, 10);
  assert.equal(byName.seen.length, 2);
});

test("a table published while the server runs: joins see it, earlier wildcards do not", async () => {
  const client = supabase();
  const [before, [earlier]] = channelOf(client, "before-late", "*", [null]);
  assert.equal((await subscribe(before))[0], "SUBSCRIBED");
  await db.query("CREATE TABLE late (id int PRIMARY KEY, body text)");
  await publish("public.late");
  const [channel, [late]] = channelOf(client, "late", "late", [null]);
  const [after_, [everything]] = channelOf(client, "after-late", "*", [null]);
  for (const joined of [channel, after_]) {
    const [status, error] = await subscribe(joined);
    assert.equal(status, "SUBSCRIBED", String(error));
  }
  await db.query("INSERT INTO late (id, body) VALUES (1, 'published late')");
  await db.query("INSERT INTO rooms (id, name) VALUES (4, 'after late')");
  const inserted = { table: "late", new: { id: 1, body: "published late" } };
  const [bound] = await late.next(1, "the insert into late");
  assert.deepEqual({ table: bound.table, new: bound.new }, inserted);
  const both = await everything.next(2, "the inserts into late and rooms");
  assert.deepEqual(
    both.map((p) => [p.table, p.new.id]).sort(),
    [
      ["late", 1],
      ["rooms", 4],
    ],
  );
  // The wildcard joined before late was published gets the room and nothing of
  // late: the connection has had late's insert, and a connection's channels
  // get a change in the order they joined.
  const [room] = await earlier.next(1, "the room");
  assert.deepEqual([room.table, room.new.name], ["rooms", "after late"]);
  assert.equal(earlier.seen.length, 1);
});

// Joins the server refuses: supabase-js reports CHANNEL_ERROR with the reason,
// and the app's `system` listener hears it too.
for (const [what, table, filter, reason] of [
  [
    "a table that is not published",
    "drafts",
    undefined,
    "public.drafts is not published here: publish it with `broadcaster publish public.drafts`",
  ],
  [
    "a filter value that does not cast",
    "messages",
    "room_id=eq.abc",
    `filter 'room_id=eq.abc' on public.messages: invalid input syntax for type integer: "abc"`,
  ],
  [
    "a column the table does not have",
    "messages",
    "room=eq.5",
    "filter 'room=eq.5' on public.messages names unknown column 'room': " +
      "public.messages has id, room_id, body, tags, at, meta",
  ],
  [
    "a wildcard with a filter",
    "*",
    "room_id=eq.5",
    "a filter needs one table, not public.*: bind the table by its name",
  ],
]) {
  test(`${what} is refused with the reason`, async () => {
    // A client of its own: each refusal counts against its connection.
    const client = supabase();
    const systems = [];
    const [channel] = channelOf(client, `refused:${what}`, table, [filter]);
    channel.on("system", {}, (payload) => systems.push(payload));
    const [status, error] = await subscribe(channel);
    await client.removeChannel(channel);
    assert.equal(status, "CHANNEL_ERROR");
    assert.equal(String(error?.message ?? error), reason);
    assert.deepEqual(
      systems.map((payload) => [payload.status, payload.message]),
      [["error", reason]],
    );
  });
}

test("each Postgres type, as supabase-js converts it (docs/supabase.md, Types)", async () => {
  await db.query(`
    CREATE TYPE mood AS ENUM ('sad', 'happy');
    CREATE DOMAIN positive AS int4 CHECK (VALUE > 0);
    CREATE TABLE typed (
      id int8 PRIMARY KEY, price numeric, nan numeric, inf float8, flag bool,
      at timestamptz, local timestamp, day date, ref uuid, tags text[], nums int4[],
      doc jsonb, word jsonb, raw json, bytes bytea, mood mood, qty positive, nothing text
    )`);
  await publish("public.typed");
  const client = supabase();
  const [channel, [typed]] = channelOf(client, "typed", "typed", [null]);
  assert.equal((await subscribe(channel))[0], "SUBSCRIBED");
  await db.query(`INSERT INTO typed VALUES (
    9007199254740993, 12345678901234567890.123456789, 'NaN', 'Infinity', true,
    '2026-11-26 10:00:00.123456+00', '2026-11-26 10:00', '2026-11-26',
    '6F1C2A4E-9B7D-4C3A-8E21-5D0F7A9B3C11', '{a,"b c",NULL}', '{1,NULL,3}',
    '{"b": [1.50, true], "a": null}', '"123"', '{"b":1,  "a":2, "b":3}', '\\x00ff',
    'happy', 5, NULL)`);
  const [inserted] = await typed.next(1, "the typed row");
  const { at, ...rest } = inserted.new;
  assert.deepEqual(rest, {
    // JSON.parse reads numbers as doubles: past 2^53 and 17 digits, rounded.
    id: 9007199254740992,
    price: 12345678901234567000,
    // Strings through parseFloat: NaN stays a string, Infinity is a number.
    nan: "NaN",
    inf: Infinity,
    flag: true,
    local: "2026-11-26T10:00:00",
    day: "2026-11-26",
    ref: "6f1c2a4e-9b7d-4c3a-8e21-5d0f7a9b3c11",
    tags: ["a", "b c", null],
    nums: [1, null, 3],
    doc: { a: null, b: [1.5, true] },
    // A jsonb string is parsed again: "123" becomes 123.
    word: 123,
    raw: { a: 2, b: 3 },
    bytes: "\\x00ff",
    mood: "happy",
    qty: 5,
    nothing: null,
  });
  // In the writer's time zone, left as a string.
  assert.equal(new Date(at).toISOString(), "2026-11-26T10:00:00.123Z");
});
