// A typical Supabase chat app, its supabase-js front ends unmodified, on plain Postgres.
//
// tests/e2e/test_supabase.py makes, with the auth schema's uid(), jwt() and
// role() as docs/supabase.md gives them, and publishes rooms, messages and
// profiles:
//   rooms (id uuid primary key default gen_random_uuid(), name text)
//     row-level security: members read their rooms (a policy calling auth.uid())
//   memberships (room_id uuid, user_id uuid, primary key (room_id, user_id))
//     row-level security: each user reads its own; not published
//   messages (id bigint generated always as identity primary key, room_id uuid,
//             author uuid, body text, sent_at timestamptz default now(),
//             pinned bool default false, meta jsonb, n int)
//     row-level security: members read their rooms' messages (a policy reading
//     current_setting('request.jwt.claims') itself)
//   profiles (id uuid primary key, name text), without row-level security: the
//     authorizer, broadcaster_authorize, lets every token read it
// ROLE is the app's `authenticated` role, ANON its `anon` role: both may select
// every table, no policy grants anon a row. Tokens are signed with JWT_SECRET
// as Supabase Auth signs them: sub, role, aud and exp, no table_ids.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import pg from "pg";
import * as helpers from "./helpers.mjs";
import { collector, signed, subscribe } from "./helpers.mjs";

const { ROLE, ANON } = process.env;
const db = new pg.Client({ connectionString: process.env.DATABASE_URL });
await db.connect();
after(() => db.end());

// The tables whose DELETEs, not checked, carry only the key in old_record.
const SECURED = new Set(["rooms", "messages"]);
const images = new Map();

// Runs `sql` (an INSERT, UPDATE or DELETE of `table`, without RETURNING) and
// returns, for each row it wrote, the event it is to cause, as supabase-js
// hands it over: `${table}:${id}` and [eventType, new, old].
async function write(table, sql, params = []) {
  const type = sql.trimStart().split(/\s/)[0].toUpperCase();
  const { rows } = await db.query(`${sql} RETURNING to_jsonb(${table}.*) AS image`, params);
  return rows.map(({ image }) => {
    const key = `${table}:${image.id}`;
    const before = images.get(key);
    images.set(key, image);
    if (type === "INSERT") return { key, image, event: [type, image, {}] };
    if (type === "UPDATE") return { key, image, event: [type, image, before] };
    const old = SECURED.has(table) ? { id: image.id } : image;
    return { key, image, event: [type, {}, old] };
  });
}

// Events grouped by row, each row's in the order they came: the order between
// rows is not promised.
const byRow = (events) => {
  const rows = {};
  for (const { key, event } of events) (rows[key] ??= []).push(event);
  return rows;
};
const received = (payloads) =>
  byRow(
    payloads.map((p) => ({
      key: `${p.table}:${p.eventType === "DELETE" ? p.old.id : p.new.id}`,
      event: [p.eventType, p.new, p.old],
    })),
  );

// Two users, each in a room of their own, both in a third.
const ADA = randomUUID();
const BOB = randomUUID();
const [ADAS, BOBS, SHARED] = (
  await write("rooms", "INSERT INTO rooms (name) VALUES ('ada''s'), ('bob''s'), ('shared')")
).map(({ image }) => image.id);
await db.query(
  "INSERT INTO memberships (room_id, user_id) VALUES ($1, $2), ($3, $4), ($5, $2), ($5, $4)",
  [ADAS, ADA, BOBS, BOB, SHARED],
);

const USER = { role: ROLE, aud: "authenticated" };
const ANONYMOUS = { role: ANON, iss: "supabase" };

// A supabase-js app with a token of `claims`.
function app(claims) {
  const token = signed({ exp: Math.floor(Date.now() / 1000) + 300, ...claims });
  return helpers.supabase(process.env.BROADCASTER_URL, token);
}

// `client`'s channel `name`, with one binding of `binding`'s parameters (every
// event of public.messages unless they say otherwise), joined: its status,
// error and what it receives.
async function listen(client, name, binding = {}) {
  const changes = collector();
  const channel = client
    .channel(name)
    .on("postgres_changes", { event: "*", schema: "public", table: "messages", ...binding }, (p) =>
      changes.push(p),
    );
  const [status, error] = await subscribe(channel);
  return { client, channel, status, error, changes };
}

// listen(), once the channel is subscribed: what it receives.
async function joined(client, name, binding = {}) {
  const { status, error, changes } = await listen(client, name, binding);
  assert.equal(status, "SUBSCRIBED", `${name}: ${error}`);
  return changes;
}

// Waits until `changes` has the events of `expected`, then checks they are all it has.
async function gets(changes, expected, what) {
  const got = await changes.next(expected.length, what);
  assert.deepEqual(received(got), byRow(expected), what);
  assert.equal(changes.seen.length, expected.length, `${what}: nothing else`);
}

test("two users in different rooms each get their rooms' messages, filtered or not", async () => {
  const ada = app({ ...USER, sub: ADA });
  const bob = app({ ...USER, sub: BOB });
  const adas = {
    all: await joined(ada, "messages"),
    own: await joined(ada, "messages:own", { filter: `room_id=eq.${ADAS}` }),
    // Not her room: its policy lets nothing of it through, but DELETEs.
    bobs: await joined(ada, "messages:bobs", { filter: `room_id=eq.${BOBS}` }),
    pinned: await joined(ada, "messages:pinned", { filter: "pinned=eq.true" }),
  };
  const bobs = {
    all: await joined(bob, "messages"),
    pinned: await joined(bob, "messages:pinned", { filter: "pinned=eq.true" }),
  };

  const insert = (room, author, body, pinned) =>
    write(
      "messages",
      `INSERT INTO messages (room_id, author, body, pinned, meta, n)
       VALUES ($1, $2, $3, $4, $5, 1)`,
      [room, author, body, pinned, { by: body }],
    );
  const [a] = await insert(ADAS, ADA, "a1", false);
  const [b] = await insert(BOBS, BOB, "b1", true);
  const [c] = await insert(SHARED, ADA, "c1", true);
  const update = (id, sql) => write("messages", `UPDATE messages SET ${sql} WHERE id = $1`, [id]);
  const [a2] = await update(a.image.id, "body = 'a1 pinned', pinned = true");
  const [b2] = await update(b.image.id, "body = 'b1 edited', n = n + 1");
  const [c2] = await update(c.image.id, "pinned = false");
  // Rows are checked as they are when the server reads their changes: the
  // deletes wait until these have been delivered.
  await adas.all.next(4, "ada's inserts and updates");
  await bobs.all.next(4, "bob's inserts and updates");
  const remove = (id) => write("messages", "DELETE FROM messages WHERE id = $1", [id]);
  const [a3] = await remove(a.image.id);
  const [b3] = await remove(b.image.id);
  const [c3] = await remove(c.image.id);

  // The channels without a filter get the last write: once it has come, the
  // connection's other channels have had what they were to get.
  await gets(adas.all, [a, c, a2, c2, a3, b3, c3], "ada's rooms' messages, every delete");
  await gets(adas.own, [a, a2, a3], "ada's room's messages");
  await gets(adas.bobs, [b3], "only the delete of bob's room's message");
  // Matched on the row an UPDATE leaves and the row a DELETE removed.
  await gets(adas.pinned, [c, a2, a3, b3], "ada's pinned messages, the pinned ones' deletes");
  await gets(bobs.all, [b, c, b2, c2, a3, b3, c3], "bob's rooms' messages, every delete");
  await gets(bobs.pinned, [b, c, b2, a3, b3], "bob's pinned messages, the pinned ones' deletes");
});

test("joining a room brings its messages and the room, leaving it ends them", async () => {
  const bob = app({ ...USER, sub: BOB });
  const messages = await joined(bob, "joining:messages");
  const rooms = await joined(bob, "joining:rooms", { table: "rooms" });
  const say = (body, room = ADAS) =>
    write("messages", "INSERT INTO messages (room_id, body) VALUES ($1, $2)", [room, body]);
  const rename = (name, room = ADAS) =>
    write("rooms", "UPDATE rooms SET name = $2 WHERE id = $1", [room, name]);
  const membership = [ADAS, BOB];
  // Rows are checked as they are when the server reads their changes: each
  // step waits until bob has what was written before it in his own room.
  const step = async (count) => {
    await messages.next(count, "bob's messages so far");
    await rooms.next(count, "bob's rooms so far");
  };

  await say("before bob");
  await rename("ada's, before bob");
  const [first] = await say("bob's first", BOBS);
  const [firstName] = await rename("bob's, first", BOBS);
  await step(1);
  await db.query("INSERT INTO memberships (room_id, user_id) VALUES ($1, $2)", membership);
  const [said] = await say("with bob");
  const [renamed] = await rename("ada's, with bob");
  await step(2);
  await db.query("DELETE FROM memberships WHERE room_id = $1 AND user_id = $2", membership);
  await say("after bob");
  await rename("ada's, after bob");
  // Written last: once these have come, bob has had what he was to get.
  const [last] = await say("bob's last", BOBS);
  const [lastName] = await rename("bob's, last", BOBS);
  await gets(messages, [first, said, last], "the message said while bob was in ada's room");
  await gets(rooms, [firstName, renamed, lastName], "the room renamed while bob was in it");
});

test("anon gets no message nor room, but profiles; wildcards get what policies allow", async () => {
  const anon = app(ANONYMOUS);
  const anons = {
    messages: await joined(anon, "messages"),
    rooms: await joined(anon, "rooms", { table: "rooms" }),
    profiles: await joined(anon, "profiles", { table: "profiles" }),
    everything: await joined(anon, "everything", { table: "*" }),
  };
  const ada = await joined(app({ ...USER, sub: ADA }), "everything", { table: "*" });
  const bob = await joined(app({ ...USER, sub: BOB }), "everything", { table: "*" });

  const [bobsRoom] = await write("rooms", "UPDATE rooms SET name = 'bob''s, now' WHERE id = $1", [
    BOBS,
  ]);
  const [adasRoom] = await write("rooms", "UPDATE rooms SET name = 'ada''s, now' WHERE id = $1", [
    ADAS,
  ]);
  const say = (room, body) =>
    write("messages", "INSERT INTO messages (room_id, body) VALUES ($1, $2)", [room, body]);
  const [toBob] = await say(BOBS, "to bob");
  const [toAda] = await say(ADAS, "to ada");
  const profiles = await write(
    "profiles",
    "INSERT INTO profiles (id, name) VALUES ($1, 'ada'), ($2, 'bob')",
    [ADA, BOB],
  );
  const [renamed] = await write("profiles", "UPDATE profiles SET name = 'Ada' WHERE id = $1", [
    ADA,
  ]);
  // Rows are checked as they are when the server reads their changes: the
  // deletes wait until these have been delivered.
  await ada.next(5, "ada's room, message and profiles");
  await bob.next(5, "bob's room, message and profiles");
  // The last write of each table reaches everyone: DELETEs are not checked.
  const [gone] = await write("profiles", "DELETE FROM profiles WHERE id = $1", [BOB]);
  const deleted = await write("messages", "DELETE FROM messages WHERE id IN ($1, $2)", [
    toBob.image.id,
    toAda.image.id,
  ]);
  const [spare] = await write("rooms", "INSERT INTO rooms (name) VALUES ('spare')");
  const [closed] = await write("rooms", "DELETE FROM rooms WHERE id = $1", [spare.image.id]);
  const everyone = [...profiles, renamed, gone, ...deleted, closed];

  await gets(anons.everything, everyone, "anon's wildcard: profiles and the deletes");
  await gets(anons.messages, deleted, "anon's messages: the deletes alone");
  await gets(anons.rooms, [closed], "anon's rooms: the delete alone");
  await gets(anons.profiles, [...profiles, renamed, gone], "every profile");
  await gets(ada, [adasRoom, toAda, ...everyone], "ada's wildcard: her room and message");
  await gets(bob, [bobsRoom, toBob, ...everyone], "bob's wildcard: his room and message");
});

test("the auth helpers read the claims a check runs with", async () => {
  // As the server checks a row: the role set, the token's claims in request.jwt.claims.
  const claims = { ...USER, sub: ADA };
  await db.query("BEGIN");
  try {
    await db.query(`SET LOCAL ROLE ${ROLE}`);
    await db.query("SELECT set_config('request.jwt.claims', $1, true)", [JSON.stringify(claims)]);
    const { rows } = await db.query(
      "SELECT auth.uid() AS uid, auth.role() AS role, auth.jwt() AS jwt, current_user",
    );
    assert.deepEqual(rows, [{ uid: ADA, role: ROLE, jwt: claims, current_user: ROLE }]);
  } finally {
    await db.query("ROLLBACK");
  }
});

// Every operator on each type of column: the messages below (all in ada's
// room, as ada sees them: a null in every column in one) and the filters, each
// with the messages it matches, or the reason it is refused.
const U = (last) => `00000000-0000-4000-8000-00000000000${last}`;
const ROWS = {
  m1: {
    n: 1,
    body: "hello world",
    at: "2026-01-01T10:00Z",
    author: U(1),
    pinned: true,
    meta: { k: 1 },
  },
  m2: {
    n: 2,
    body: "hello there",
    at: "2026-01-02T10:00Z",
    author: U(2),
    pinned: false,
    meta: { k: 2, tags: ["a"] },
  },
  m3: { n: 3, body: "bye", at: "2026-01-03T10:00Z", author: U(3), pinned: true, meta: { k: 3 } },
  nulls: { n: null, body: null, at: null, author: null, pinned: null, meta: null },
  // Written last.
  witness: {
    n: 100,
    body: "witness",
    at: "2030-01-01T00:00Z",
    author: "ffffffff-ffff-4fff-bfff-ffffffffffff",
    pinned: false,
    meta: { w: true },
  },
};
const UNLIKE = (column, type, operator, sign) =>
  `filter '${column}=${operator}.x' on public.messages: operator does not exist: ${type} ${sign} ` +
  `text: ${operator} takes text columns (text, varchar, char, citext)`;
const PATTERNS = [
  ["like", "~~"],
  ["ilike", "~~*"],
  ["match", "~"],
  ["imatch", "~*"],
];
const NOT_BOOLEAN = (column, type) =>
  `filter '${column}=is.true' on public.messages: argument of IS TRUE must be type boolean, ` +
  `not type ${type}: is.true, is.false and is.unknown take boolean columns; is.null takes any`;
// Pattern operators and is.true on a column that is not of their type.
const refusals = (column, type) => [
  ...PATTERNS.map(([operator, sign]) => [
    `${column}=${operator}.x`,
    UNLIKE(column, type, operator, sign),
  ]),
  ...(type === "boolean" ? [] : [[`${column}=is.true`, NOT_BOOLEAN(column, type)]]),
];
const OPERATORS = {
  "int (n)": [
    ["n=eq.2", ["m2"]],
    ["n=neq.2", ["m1", "m3", "witness"]],
    ["n=lt.2", ["m1"]],
    ["n=lte.2", ["m1", "m2"]],
    ["n=gt.2", ["m3", "witness"]],
    ["n=gte.2", ["m2", "m3", "witness"]],
    ["n=in.(1,3)", ["m1", "m3"]],
    ["n=is.null", ["nulls"]],
    ["n=isdistinct.2", ["m1", "m3", "nulls", "witness"]],
    ["n=not.in.(1,3)", ["m2", "witness"]],
    ...refusals("n", "integer"),
  ],
  "text (body)": [
    ["body=eq.bye", ["m3"]],
    ["body=neq.bye", ["m1", "m2", "witness"]],
    ["body=lt.hello world", ["m2", "m3"]],
    ["body=lte.hello there", ["m2", "m3"]],
    ["body=gt.hello there", ["m1", "witness"]],
    ["body=gte.hello world", ["m1", "witness"]],
    ["body=in.(bye,witness)", ["m3", "witness"]],
    ["body=like.hello%", ["m1", "m2"]],
    ["body=ilike.HELLO W%", ["m1"]],
    ["body=match.^(bye|wit)", ["m3", "witness"]],
    ["body=imatch.WORLD$", ["m1"]],
    ["body=is.null", ["nulls"]],
    ["body=isdistinct.bye", ["m1", "m2", "nulls", "witness"]],
    ["body=not.like.hello%", ["m3", "witness"]],
    ["body=is.true", NOT_BOOLEAN("body", "text")],
  ],
  "timestamptz (sent_at)": [
    // An instant, whatever its offset.
    ["sent_at=eq.2026-01-02T12:00:00+02:00", ["m2"]],
    ["sent_at=neq.2026-01-02T10:00:00Z", ["m1", "m3", "witness"]],
    ["sent_at=lt.2026-01-02T10:00:00Z", ["m1"]],
    ["sent_at=lte.2026-01-02T10:00:00Z", ["m1", "m2"]],
    ["sent_at=gt.2026-01-02T10:00:00Z", ["m3", "witness"]],
    // Without an offset: UTC.
    ["sent_at=gte.2026-01-02T10:00:00", ["m2", "m3", "witness"]],
    ["sent_at=in.(2026-01-01T10:00:00Z,2026-01-03T11:00:00+01:00)", ["m1", "m3"]],
    ["sent_at=is.null", ["nulls"]],
    ["sent_at=isdistinct.2026-01-02T10:00:00Z", ["m1", "m3", "nulls", "witness"]],
    ["sent_at=not.lt.2026-01-02T10:00:00Z", ["m2", "m3", "witness"]],
    ...refusals("sent_at", "timestamp with time zone"),
  ],
  "uuid (author)": [
    [`author=eq.${U(2)}`, ["m2"]],
    [`author=neq.${U(2)}`, ["m1", "m3", "witness"]],
    [`author=lt.${U(2)}`, ["m1"]],
    [`author=lte.${U(2)}`, ["m1", "m2"]],
    [`author=gt.${U(2)}`, ["m3", "witness"]],
    [`author=gte.${U(2)}`, ["m2", "m3", "witness"]],
    [`author=in.(${U(1)},${U(3)})`, ["m1", "m3"]],
    ["author=is.null", ["nulls"]],
    [`author=isdistinct.${U(2)}`, ["m1", "m3", "nulls", "witness"]],
    [`author=not.in.(${U(1)},${U(3)})`, ["m2", "witness"]],
    ...refusals("author", "uuid"),
  ],
  "bool (pinned)": [
    ["pinned=eq.true", ["m1", "m3"]],
    ["pinned=neq.true", ["m2", "witness"]],
    ["pinned=lt.true", ["m2", "witness"]],
    ["pinned=lte.false", ["m2", "witness"]],
    ["pinned=gt.false", ["m1", "m3"]],
    ["pinned=gte.true", ["m1", "m3"]],
    ["pinned=in.(false)", ["m2", "witness"]],
    ["pinned=is.true", ["m1", "m3"]],
    ["pinned=is.false", ["m2", "witness"]],
    ["pinned=is.unknown", ["nulls"]],
    ["pinned=is.null", ["nulls"]],
    ["pinned=isdistinct.true", ["m2", "nulls", "witness"]],
    // NOT (null IS TRUE) is true: the null row matches.
    ["pinned=not.is.true", ["m2", "nulls", "witness"]],
    ...refusals("pinned", "boolean"),
  ],
  "jsonb (meta)": [
    // Equal as jsonb: key order does not matter.
    ['meta=eq.{"tags": ["a"], "k": 2}', ["m2"]],
    ['meta=neq.{"k":1}', ["m2", "m3", "witness"]],
    // jsonb's order: objects by their number of keys, then keys, then values.
    ['meta=lt.{"k":3}', ["m1"]],
    ['meta=lte.{"k":3}', ["m1", "m3"]],
    ['meta=gt.{"k":3}', ["m2", "witness"]],
    ['meta=gte.{"k":3}', ["m2", "m3", "witness"]],
    ['meta=in.("{\\"k\\":1}","{\\"k\\":3}")', ["m1", "m3"]],
    ["meta=is.null", ["nulls"]],
    ['meta=isdistinct.{"k":1}', ["m2", "m3", "nulls", "witness"]],
    ['meta=not.eq.{"k":1}', ["m2", "m3", "witness"]],
    ...refusals("meta", "jsonb"),
  ],
};

test("every operator on int, text, timestamptz, uuid, bool and jsonb, as Postgres does", async () => {
  // One app for the filters served, so that the witness's arrival means every
  // channel has had the earlier messages; one per type for the refused, each
  // refusal counting against its connection.
  const ada = app({ ...USER, sub: ADA });
  const served = [];
  for (const [type, filters] of Object.entries(OPERATORS)) {
    const refuser = app({ ...USER, sub: ADA });
    for (const [filter, expected] of filters) {
      if (typeof expected === "string") {
        const { channel, status, error } = await listen(refuser, `refused:${filter}`, { filter });
        await refuser.removeChannel(channel);
        assert.equal(status, "CHANNEL_ERROR", `${type}: ${filter}`);
        assert.equal(String(error?.message ?? error), expected, `${type}: ${filter}`);
      } else {
        const changes = await joined(ada, `operators:${filter}`, { filter });
        served.push({ filter, expected, changes });
      }
    }
  }
  const witnessed = await joined(ada, "operators:witness", { filter: "body=eq.witness" });

  const names = new Map();
  for (const [name, { n, body, at, author, pinned, meta }] of Object.entries(ROWS)) {
    const [{ image }] = await write(
      "messages",
      `INSERT INTO messages (room_id, n, body, sent_at, author, pinned, meta)
       VALUES ($1, $2, $3, $4, $5, $6, $7)`,
      [ADAS, n, body, at, author, pinned, meta],
    );
    names.set(image.id, name);
  }
  await witnessed.next(1, "the witness");
  for (const { filter, expected, changes } of served) {
    const got = await changes.next(expected.length, `the messages ${filter} matches`);
    assert.deepEqual(got.map((p) => names.get(p.new.id)).sort(), [...expected].sort(), filter);
    assert.equal(changes.seen.length, expected.length, `${filter} got only those`);
  }
});

// Filters Postgres refuses: supabase-js reports CHANNEL_ERROR with the reason.
for (const [what, filter, reason] of [
  [
    "a column messages does not have",
    "room=eq.x",
    "filter 'room=eq.x' on public.messages names unknown column 'room': " +
      "public.messages has id, room_id, author, body, sent_at, pinned, meta, n",
  ],
  [
    "a room that is no uuid",
    "room_id=eq.lobby",
    `filter 'room_id=eq.lobby' on public.messages: invalid input syntax for type uuid: "lobby"`,
  ],
  [
    "a number that is no integer",
    "n=gt.1.5",
    `filter 'n=gt.1.5' on public.messages: invalid input syntax for type integer: "1.5"`,
  ],
  [
    "a time that is none",
    "sent_at=gt.yesterday noon",
    `filter 'sent_at=gt.yesterday noon' on public.messages: invalid input syntax for type ` +
      `timestamp with time zone: "yesterday noon"`,
  ],
  [
    "a boolean that is none",
    "pinned=eq.maybe",
    `filter 'pinned=eq.maybe' on public.messages: invalid input syntax for type boolean: "maybe"`,
  ],
  [
    "JSON that does not parse",
    "meta=eq.{k:1}",
    "filter 'meta=eq.{k:1}' on public.messages: invalid input syntax for type json",
  ],
  [
    "a regular expression that does not compile",
    "body=match.(",
    "filter 'body=match.(' on public.messages: invalid regular expression: " +
      "parentheses () not balanced",
  ],
]) {
  test(`${what} is refused with the reason`, async () => {
    const user = app({ ...USER, sub: ADA });
    const { channel, status, error } = await listen(user, `refused:${what}`, { filter });
    await user.removeChannel(channel);
    assert.equal(status, "CHANNEL_ERROR");
    assert.equal(String(error?.message ?? error), reason);
  });
}
