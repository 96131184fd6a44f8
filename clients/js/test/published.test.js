// @ts-check
/**
 * Published tables against a scripted server: rows keyed by the change's `id`
 * (a composite key, a column named `id` that is not the key), the filter on
 * every subscribe (resumes included), refusals (`bad_filter`, `unavailable`)
 * and one filter per table.
 */

import assert from "node:assert/strict";
import { afterEach, beforeEach, test } from "node:test";
import { WebSocket } from "ws";
import { createClient } from "../dist/index.js";
import { FakeServer } from "./support/fake-server.js";
import { eventually, sleep, within } from "./support/wait.js";

/** @typedef {import("../dist/index.js").BroadcasterClient} BroadcasterClient */
/** @typedef {{ room_id: number, seq: number, id: number, body: string }} Message */

const MESSAGES = "public.messages";
const ROOM_5 = "room_id=eq.5";

/** @type {FakeServer} */
let server;
/** @type {BroadcasterClient[]} */
let clients = [];

beforeEach(async () => {
  server = await FakeServer.start();
  clients = [];
});

afterEach(async () => {
  for (const client of clients) client.close();
  await server.close();
});

/** @param {import("../dist/index.js").ClientOptions} [options] */
function connect(options = {}) {
  const client = createClient(server.url, {
    WebSocket,
    reconnect: { initialDelayMs: 20, maxDelayMs: 100, jitter: 0 },
    ...options,
  });
  clients.push(client);
  return client;
}

/**
 * A change of public.messages, keyed (room_id, seq), as the server sends it:
 * the key in `id`, the table's columns in `row` (an ordinary column is named
 * id); a DELETE's row holds the key.
 * @param {"INSERT" | "UPDATE" | "DELETE"} op
 * @param {number} room
 * @param {number} seq
 * @param {number} version
 * @param {{ body?: string, cursor?: string }} [options]
 */
function change(op, room, seq, version, options = {}) {
  const id = `[${room}, ${seq}]`;
  const row =
    op === "DELETE"
      ? { id, table_id: MESSAGES, version }
      : { room_id: room, seq, id: 100 + seq, body: options.body ?? "", version };
  return {
    type: "change",
    table_id: MESSAGES,
    op,
    id,
    row,
    ...(options.cursor === undefined ? {} : { cursor: options.cursor }),
  };
}

/**
 * Take the subscribe for the table on `connection` and answer `subscribed`.
 * @param {import("./support/fake-server.js").FakeConnection} connection
 */
async function acceptSubscribe(connection) {
  const subscribe = await connection.next((m) => m["type"] === "subscribe" && m["table_id"] === MESSAGES);
  connection.send({ type: "subscribed", ref: subscribe["ref"], table_id: MESSAGES });
  return subscribe;
}

test("rows are keyed by the change's id, not by a column named id", async () => {
  const client = connect();
  /** @type {import("../dist/index.js").LivePublishedTable<Message>} */
  const room = client.publishedTable(MESSAGES, { filter: ROOM_5 });
  assert.equal(room.filter, ROOM_5);
  const connection = await server.connection(0);
  const subscribe = await acceptSubscribe(connection);
  assert.deepEqual(
    { ...subscribe, ref: 0 },
    { type: "subscribe", ref: 0, table_id: MESSAGES, filter: ROOM_5, snapshot: true, presence: true },
  );
  connection.send([
    change("INSERT", 5, 1, 0, { body: "a" }),
    change("INSERT", 5, 2, 0, { body: "b" }),
    { type: "synced", table_id: MESSAGES, cursor: "c1" },
  ]);
  await within(room.whenSynced(), 2_000, "synced");
  assert.deepEqual(
    room.rows().map((r) => r.id),
    [101, 102],
    "the column id is the row's own",
  );
  assert.deepEqual(room.get("[5, 1]"), { room_id: 5, seq: 1, id: 101, body: "a", version: 0 });

  /** @type {string[]} */
  const events = [];
  room.on("update", (e) => events.push(`update ${e.id} ${e.row.body} ${String(e.old?.body)}`));
  room.on("delete", (e) => events.push(`delete ${e.id} v${e.version} ${e.previous.body}`));
  const edited = change("UPDATE", 5, 1, 7, { body: "edited", cursor: "c2" });
  connection.send([
    { ...edited, old: { room_id: 5, seq: 1, id: 101, body: "a" } },
    change("UPDATE", 5, 1, 6, { body: "older", cursor: "c2" }),
    change("DELETE", 5, 2, 8, { cursor: "c2" }),
  ]);
  await eventually(() => room.cursor === "c2", { label: "the live batch" });
  assert.deepEqual(events, ["update [5, 1] edited a", "delete [5, 2] v8 b"]);
  assert.deepEqual([...room.rows()], [{ room_id: 5, seq: 1, id: 101, body: "edited", version: 7 }]);
});

test("the filter goes with every subscribe: the first, and the resume after a lost connection", async () => {
  const client = connect();
  const room = client.publishedTable(MESSAGES, { filter: ROOM_5 });
  const first = await server.connection(0);
  await acceptSubscribe(first);
  first.send([change("INSERT", 5, 1, 0), { type: "synced", table_id: MESSAGES, cursor: "c1" }]);
  await room.whenSynced();
  first.close(1001, "going away");

  const second = await server.connection(1);
  const resume = await acceptSubscribe(second);
  assert.deepEqual(
    { ...resume, ref: 0 },
    { type: "subscribe", ref: 0, table_id: MESSAGES, filter: ROOM_5, cursor: "c1", presence: true },
  );
  second.send([change("INSERT", 5, 2, 4), { type: "synced", table_id: MESSAGES, cursor: "c2" }]);
  await eventually(() => room.cursor === "c2", { label: "resumed" });
  assert.deepEqual(
    room
      .rows()
      .map((r) => `${String(r.room_id)}/${String(r.seq)}`)
      .sort(),
    ["5/1", "5/2"],
  );
});

test("a change whose key is not a string is dropped as malformed", async () => {
  const client = connect();
  /** @type {string[]} */
  const errors = [];
  client.on("error", (e) => errors.push(e.code));
  const table = client.publishedTable(MESSAGES);
  const connection = await server.connection(0);
  await acceptSubscribe(connection);
  const { id: _, ...keyless } = change("INSERT", 5, 1, 0);
  connection.send([keyless, { ...change("INSERT", 5, 2, 0), id: 52 }, change("INSERT", 5, 3, 0)]);
  connection.send({ type: "synced", table_id: MESSAGES, cursor: "c1" });
  await table.whenSynced();
  // The first has only the row's own id column (a number) to go by: not a key.
  assert.deepEqual(
    table.rows().map((r) => r.seq),
    [3],
  );
  assert.deepEqual(errors, ["malformed_frame"]);
});

test("a refused filter is reported on the table and the client; other tables carry on", async () => {
  const client = connect();
  /** @type {import("../dist/index.js").BroadcasterError[]} */
  const clientErrors = [];
  client.on("error", (e) => clientErrors.push(e));
  const bad = client.publishedTable(MESSAGES, { filter: "nope=eq.1" });
  /** @type {import("../dist/index.js").BroadcasterError[]} */
  const tableErrors = [];
  bad.on("error", (e) => tableErrors.push(e));
  const other = client.table("t1");
  const connection = await server.connection(0);
  const subscribe = await connection.next((m) => m["type"] === "subscribe" && m["table_id"] === MESSAGES);
  connection.send({
    type: "error",
    ref: subscribe["ref"],
    code: "bad_filter",
    message: "filter 'nope=eq.1' on public.messages: unknown column nope",
    table_id: MESSAGES,
  });
  await eventually(() => tableErrors.length === 1, { label: "the table's error" });
  const [error] = tableErrors;
  assert.ok(error !== undefined);
  assert.equal(error.code, "bad_filter");
  assert.equal(error.tableId, MESSAGES);
  assert.match(error.message, /unknown column nope/);
  assert.deepEqual(
    clientErrors.map((e) => e.code),
    ["bad_filter"],
  );
  assert.equal(bad.synced, false);
  const t1 = await connection.next((m) => m["type"] === "subscribe" && m["table_id"] === "t1");
  connection.send([
    { type: "subscribed", ref: t1["ref"], table_id: "t1" },
    { type: "synced", table_id: "t1", cursor: "c1" },
  ]);
  await within(other.whenSynced(), 2_000, "the other table");
  await sleep(50);
  assert.equal(
    connection.received.filter((m) => m["type"] === "subscribe" && m["table_id"] === MESSAGES).length,
    1,
    "a refused filter is not sent again on this connection",
  );
});

test("a subscribe answered unavailable is sent again, with its filter, after the backoff", async () => {
  const client = connect();
  const room = client.publishedTable(MESSAGES, { filter: ROOM_5 });
  const connection = await server.connection(0);
  for (let attempt = 0; attempt < 2; attempt += 1) {
    const subscribe = await connection.next((m) => m["type"] === "subscribe" && m["table_id"] === MESSAGES);
    assert.equal(subscribe["filter"], ROOM_5);
    connection.send({
      type: "error",
      ref: subscribe["ref"],
      code: "unavailable",
      message: "the database could not be reached: subscribe again",
    });
  }
  await acceptSubscribe(connection);
  connection.send([change("INSERT", 5, 1, 0), { type: "synced", table_id: MESSAGES, cursor: "c1" }]);
  await within(room.whenSynced(), 2_000, "synced at the third subscribe");
  assert.equal(room.size, 1);
});

test("a table is held with one filter at a time", async () => {
  const client = connect();
  const room = client.publishedTable(MESSAGES, { filter: ROOM_5 });
  const same = client.publishedTable(MESSAGES, { filter: ROOM_5 });
  assert.throws(
    () => client.publishedTable(MESSAGES, { filter: "room_id=eq.6" }),
    (/** @type {import("../dist/index.js").BroadcasterError} */ e) =>
      e.code === "filter_conflict" && e.tableId === MESSAGES && /room_id=eq\.5/.test(e.message),
  );
  assert.throws(() => client.publishedTable(MESSAGES), { code: "filter_conflict" });
  for (const bad of ["", 5]) {
    // @ts-expect-error: plain JavaScript callers are not held to the types.
    assert.throws(() => client.publishedTable(MESSAGES, { filter: bad }), TypeError);
  }
  const connection = await server.connection(0);
  await acceptSubscribe(connection);
  connection.send([change("INSERT", 5, 1, 0), { type: "synced", table_id: MESSAGES, cursor: "c1" }]);
  await room.whenSynced();

  // Released by every handle, the table may be taken with another filter: a
  // new subscription, from a snapshot.
  room.close();
  same.close();
  const other = client.publishedTable(MESSAGES, { filter: "room_id=eq.6" });
  assert.equal(other.size, 0);
  const subscribe = await acceptSubscribe(connection);
  assert.deepEqual(
    [subscribe["filter"], subscribe["snapshot"], subscribe["cursor"]],
    ["room_id=eq.6", true, undefined],
  );
  connection.send([change("INSERT", 6, 1, 0), { type: "synced", table_id: MESSAGES, cursor: "c2" }]);
  await within(other.whenSynced(), 2_000, "the new filter's snapshot");
  assert.deepEqual(
    other.rows().map((r) => r["room_id"]),
    [6],
  );
  await sleep(50);
  assert.equal(
    connection.received.some((m) => m["type"] === "unsubscribe"),
    false,
    "the new subscribe replaces the old one on the server",
  );
});
