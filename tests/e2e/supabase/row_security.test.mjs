// Row-level security on a published table, seen from supabase-js apps of two users.
//
// tests/e2e/test_supabase.py makes and publishes
//   notes (id bigint primary key, owner text, body text, secret text)
// with row-level security: its policy lets the role ROLE select the notes whose
// owner is the token's sub, and ROLE may select id, owner and body, not secret.
// The server runs with authentication on (JWT_SECRET); tokens list the table in
// their table_ids claim, so the default authorizer lets them join.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import pg from "pg";
import * as helpers from "./helpers.mjs";
import { collector, eventually, signed, subscribe, within } from "./helpers.mjs";

const ROLE = process.env.ROLE;
const db = new pg.Client({ connectionString: process.env.DATABASE_URL });
await db.connect();
after(() => db.end());

function token(claims) {
  return signed({
    table_ids: ["public.notes"],
    exp: Math.floor(Date.now() / 1000) + 300,
    ...claims,
  });
}

// A user's app: a supabase-js client with a token of `claims`, its channel on
// notes (every app names it alike: its messages are built once for every app
// that sees the same, and apart for the others), with `binding`'s parameters,
// what the channel hands the app and what came on the wire before supabase-js
// converted it. `options` are createClient's others.
async function app(claims, binding = {}, options = {}) {
  const raw = [];
  const logger = (kind, _message, payload) => {
    if (kind === "receive" && payload?.data?.columns) raw.push(payload.data);
  };
  const key = token(claims);
  const client = helpers.supabase(process.env.BROADCASTER_URL, key, { logger }, options);
  const changes = collector();
  const channel = client
    .channel("notes")
    .on(
      "postgres_changes",
      { event: "*", schema: "public", table: "notes", ...binding },
      (payload) => changes.push(payload),
    );
  const [status, error] = await subscribe(channel);
  return { client, status, error, changes, raw };
}

const summary = (p) => [p.eventType, p.new, p.old];

test("each user gets its own notes, never their secret; deletes reach everyone", async () => {
  const ada = await app({ sub: "ada", role: ROLE });
  const bob = await app({ sub: "bob", role: ROLE });
  for (const user of [ada, bob]) assert.equal(user.status, "SUBSCRIBED", String(user.error));

  await db.query("INSERT INTO notes VALUES (1, 'ada', 'a1', 'ada''s secret')");
  await db.query("INSERT INTO notes VALUES (2, 'bob', 'b2', 'bob''s secret')");
  await db.query("UPDATE notes SET body = 'a1 edited' WHERE id = 1");
  await db.query("UPDATE notes SET body = 'b2 edited', secret = 'new' WHERE id = 2");
  // The rows are checked as they are when the server reads the changes: the
  // next writes wait until these have been delivered.
  assert.deepEqual((await ada.changes.next(2, "ada's insert and update")).map(summary), [
    ["INSERT", { id: 1, owner: "ada", body: "a1" }, {}],
    ["UPDATE", { id: 1, owner: "ada", body: "a1 edited" }, { id: 1, owner: "ada", body: "a1" }],
  ]);
  assert.deepEqual((await bob.changes.next(2, "bob's insert and update")).map(summary), [
    ["INSERT", { id: 2, owner: "bob", body: "b2" }, {}],
    ["UPDATE", { id: 2, owner: "bob", body: "b2 edited" }, { id: 2, owner: "bob", body: "b2" }],
  ]);

  // Handed to bob: the update is checked on the row as it now is, bob's.
  await db.query("UPDATE notes SET owner = 'bob' WHERE id = 1");
  const [, , handed] = await bob.changes.next(3, "the note handed to bob");
  assert.deepEqual(summary(handed), [
    "UPDATE",
    { id: 1, owner: "bob", body: "a1 edited" },
    { id: 1, owner: "ada", body: "a1 edited" },
  ]);

  // DELETEs are not checked (the row is gone): both get them, cut to the key.
  await db.query("DELETE FROM notes WHERE id = 1");
  await db.query("DELETE FROM notes WHERE id = 2");
  const deletes = [
    ["DELETE", {}, { id: 1 }],
    ["DELETE", {}, { id: 2 }],
  ];
  // Two rows' changes: each row's in commit order, the two in either.
  const last = (events, count) =>
    events
      .slice(-count)
      .map(summary)
      .sort((a, b) => a[2].id - b[2].id);
  assert.deepEqual(last(await ada.changes.next(4, "ada's deletes"), 2), deletes);
  assert.deepEqual(last(await bob.changes.next(5, "bob's deletes"), 2), deletes);
  // The deletes came after everything else of the table: nothing more is due.
  assert.equal(ada.changes.seen.length, 4, "ada got none of bob's notes, nor the handed one");
  assert.equal(bob.changes.seen.length, 5);

  // On the wire: never secret, in the records or in the columns.
  for (const data of [...ada.raw, ...bob.raw]) {
    assert.deepEqual(
      data.columns.map((column) => [column.name, column.type]),
      [
        ["id", "int8"],
        ["owner", "text"],
        ["body", "text"],
      ],
    );
    for (const image of [data.record, data.old_record]) {
      assert.ok(image === undefined || !("secret" in image), JSON.stringify(data));
    }
  }
});

test("a filter and the policy both decide; a wildcard channel is checked alike", async () => {
  const pinned = await app({ sub: "ada", role: ROLE }, { filter: "body=like.pinned%" });
  const everything = await app({ sub: "ada", role: ROLE }, { table: "*" });
  for (const user of [pinned, everything]) {
    assert.equal(user.status, "SUBSCRIBED", String(user.error));
  }
  await db.query(
    "INSERT INTO notes VALUES (10, 'ada', 'pinned a', 's'), (11, 'ada', 'other', 's')",
  );
  await db.query("INSERT INTO notes VALUES (12, 'bob', 'pinned b', 's')");
  // Written last: once it has come, the earlier notes have come or never will.
  await db.query("INSERT INTO notes VALUES (13, 'ada', 'pinned last', 's')");
  const bodies = (events) => events.map((p) => p.new.body);
  assert.deepEqual(bodies(await pinned.changes.next(2, "ada's pinned notes")), [
    "pinned a",
    "pinned last",
  ]);
  assert.deepEqual(bodies(await everything.changes.next(3, "ada's notes")), [
    "pinned a",
    "other",
    "pinned last",
  ]);
  assert.equal(pinned.changes.seen.length, 2);
  assert.equal(everything.changes.seen.length, 3);
  assert.ok(everything.raw.every((data) => !("secret" in data.record)));
});

test("after setAuth with another user's token, the channel sees that user's notes", async () => {
  // As an app whose auth is not Supabase's passes its tokens: supabase-js asks
  // accessToken() for the current one on setAuth().
  let current = token({ sub: "ada", role: ROLE });
  const user = await app({ sub: "ada", role: ROLE }, {}, { accessToken: async () => current });
  assert.equal(user.status, "SUBSCRIBED", String(user.error));
  current = token({ sub: "bob", role: ROLE });
  await user.client.realtime.setAuth();
  // The new token decides from the first read that checks it: bob writes, a
  // note at a time, until one of his comes through.
  await within(
    (async () => {
      for (let id = 100; user.changes.seen.length === 0; id++) {
        await db.query("INSERT INTO notes VALUES ($1, 'bob', 'for bob', 's')", [id]);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    })(),
    "a note of bob's",
  );
  await db.query("INSERT INTO notes VALUES (200, 'ada', 'for ada', 's')");
  await db.query("INSERT INTO notes VALUES (201, 'bob', 'for bob', 's')");
  // Once bob's last note has come, ada's, written before it, has come or never will.
  await eventually(() => user.changes.seen.some((p) => p.new.id === 201), "bob's last note");
  assert.deepEqual(
    user.changes.seen.filter((p) => p.new.owner !== "bob"),
    [],
    "no note of ada's after the new token",
  );
});

for (const [what, claims, reason] of [
  [
    "a token without a role claim",
    { sub: "ada" },
    "public.notes has row-level security: join with a token whose role claim names " +
      "the Postgres role to check its rows as",
  ],
  [
    "a token whose role does not exist",
    { sub: "ada", role: `${ROLE}_missing` },
    `public.notes has row-level security and role '${ROLE}_missing' does not exist in ` +
      `Postgres: CREATE ROLE ${ROLE}_missing NOLOGIN, and grant it`,
  ],
]) {
  test(`${what} is refused on notes with the reason`, async () => {
    const { status, error } = await app(claims);
    assert.equal(status, "CHANNEL_ERROR");
    assert.equal(String(error?.message ?? error), reason);
  });
}
