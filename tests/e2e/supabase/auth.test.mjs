// supabase-js against a server with authentication on: tokens, refused joins, setAuth,
// token expiry, heartbeats.
//
// Run by tests/e2e/test_supabase.py with BROADCASTER_URL, DATABASE_URL and
// JWT_SECRET (the server's BROADCASTER_JWT_SECRET; table_ids claim).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import pg from "pg";
import * as helpers from "./helpers.mjs";
import { eventually, signed, subscribe } from "./helpers.mjs";

const db = new pg.Client({ connectionString: process.env.DATABASE_URL });
await db.connect();
after(() => db.end());

const supabase = (key, realtime = {}) =>
  helpers.supabase(process.env.BROADCASTER_URL, key, realtime);

function jwt(claims) {
  return signed({
    role: "authenticated",
    sub: "user-1",
    exp: Math.floor(Date.now() / 1000) + 300,
    ...claims,
  });
}

function on(client, table, changes) {
  return client
    .channel(`auth:${table}:${Math.random()}`)
    .on(
      "postgres_changes",
      { event: "*", schema: "public", table: "rows", filter: `table_id=eq.${table}` },
      (payload) => changes.push(payload),
    );
}

test("the anon key (a JWT apikey) authenticates a join without a session", async () => {
  const changes = [];
  const client = supabase(jwt({ table_ids: ["a1"] }));
  assert.equal((await subscribe(on(client, "a1", changes)))[0], "SUBSCRIBED");
  await db.query("INSERT INTO rows (id, table_id) VALUES ('x1', 'a1')");
  await eventually(() => changes.length === 1, "the change");
});

test("a refused join shows CHANNEL_ERROR with the reason", async () => {
  const client = supabase(jwt({ table_ids: ["a1"] }));
  const [status, error] = await subscribe(on(client, "not-mine", []));
  assert.equal(status, "CHANNEL_ERROR");
  assert.match(String(error?.message ?? error), /forbidden/);

  const bad = supabase("not-a-jwt");
  const [badStatus, badError] = await subscribe(on(bad, "a1", []));
  assert.equal(badStatus, "CHANNEL_ERROR");
  assert.match(String(badError?.message ?? badError), /unauthorized/);
});

test("setAuth sends a fresh access_token; a bad one ends the channel", async () => {
  const client = supabase(jwt({ table_ids: ["a2"] }));
  const changes = [];
  const channel = on(client, "a2", changes);
  assert.equal((await subscribe(channel))[0], "SUBSCRIBED");
  await client.realtime.setAuth(jwt({ table_ids: ["a2"], sub: "user-2" }));
  await db.query("INSERT INTO rows (id, table_id) VALUES ('x2', 'a2')");
  await eventually(() => changes.length === 1, "the change after a refresh");

  await client.realtime.setAuth("garbage");
  await eventually(() => channel.statuses.includes("CLOSED"), "the channel to close");
});

test("a token that expires ends its channel as Supabase does; later rows never arrive", async () => {
  const changes = [];
  const systems = [];
  const exp = Math.floor(Date.now() / 1000) + 3;
  const client = supabase(jwt({ table_ids: ["e1"], exp }));
  const channel = on(client, "e1", changes).on("system", {}, (payload) => systems.push(payload));
  assert.equal((await subscribe(channel))[0], "SUBSCRIBED");
  const witnessed = [];
  const witness = supabase(jwt({ table_ids: ["e1"] }));
  assert.equal((await subscribe(on(witness, "e1", witnessed)))[0], "SUBSCRIBED");
  await db.query("INSERT INTO rows (id, table_id) VALUES ('e-before', 'e1')");
  await eventually(() => changes.length === 1, "the change before expiry");

  await eventually(() => channel.statuses.includes("CLOSED"), "the channel to close at expiry");
  assert.ok(Date.now() / 1000 >= exp);
  const ended = systems.filter((payload) => payload.status === "error");
  assert.equal(ended.length, 1);
  assert.equal(ended[0].extension, "system");
  assert.match(ended[0].message, /^Token has expired \d+ seconds ago$/);

  await db.query("INSERT INTO rows (id, table_id) VALUES ('e-after', 'e1')");
  // The server writes a change to its subscribers in one round: had the
  // expired channel still been one, it would have had the row by now.
  await eventually(() => witnessed.length === 2, "the witness to receive the later row");
  assert.deepEqual(
    changes.map((change) => change.new.id),
    ["e-before"],
  );
});

test("heartbeats keep the connection up", async () => {
  const statuses = [];
  const client = supabase(jwt({ table_ids: ["a3"] }), {
    heartbeatIntervalMs: 200,
    heartbeatCallback: (status) => statuses.push(status),
  });
  assert.equal((await subscribe(on(client, "a3", [])))[0], "SUBSCRIBED");
  await eventually(() => statuses.filter((s) => s === "ok").length >= 3, "three heartbeat replies");
  assert.ok(!statuses.includes("timeout"));
});

test("a configured publishable key authenticates as its role; an unknown one does not", async () => {
  // The key maps to {role: "anon"}; it carries no table_ids, so the default
  // claim authorizer then refuses the table: forbidden, not unauthorized.
  const known = supabase("sb_publishable_test_key");
  const [status, error] = await subscribe(on(known, "a1", []));
  assert.equal(status, "CHANNEL_ERROR");
  assert.match(String(error?.message ?? error), /forbidden/);

  const unknown = supabase("sb_publishable_someone_elses");
  const [unknownStatus, unknownError] = await subscribe(on(unknown, "a1", []));
  assert.equal(unknownStatus, "CHANNEL_ERROR");
  assert.match(String(unknownError?.message ?? unknownError), /unauthorized/);
});
