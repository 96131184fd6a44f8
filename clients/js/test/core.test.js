// @ts-check
/**
 * The store and connection semantics against a scripted server: frames as
 * objects and arrays, version dedupe and tombstones, reset, resume from the
 * cursor, ref counting, heartbeat, backoff and the browser wake-ups.
 */

import assert from "node:assert/strict";
import { afterEach, beforeEach, test } from "node:test";
import { WebSocket } from "ws";
import { createClient } from "../dist/index.js";
import { FakeServer, row } from "./support/fake-server.js";
import { eventually, sleep, within } from "./support/wait.js";

/** @typedef {import("../dist/index.js").BroadcasterClient} BroadcasterClient */

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
 * Take the subscribe for `tableId` on `connection` and answer `subscribed`.
 * @param {import("./support/fake-server.js").FakeConnection} connection
 * @param {string} [tableId]
 */
async function acceptSubscribe(connection, tableId = "t1") {
  const subscribe = await connection.next((m) => m["type"] === "subscribe" && m["table_id"] === tableId);
  connection.send({ type: "subscribed", ref: subscribe["ref"], table_id: tableId });
  return subscribe;
}

/**
 * @param {string} id
 * @param {number} version
 * @param {Record<string, unknown>} [data]
 * @param {string} [cursor]
 */
function upsert(id, version, data = {}, cursor, op = "UPDATE") {
  return { type: "change", table_id: "t1", op, row: row(id, version, data), ...(cursor ? { cursor } : {}) };
}

/**
 * @param {string} id
 * @param {number} version
 * @param {string} [cursor]
 */
function remove(id, version, cursor) {
  return {
    type: "change",
    table_id: "t1",
    op: "DELETE",
    row: { id, table_id: "t1", version },
    ...(cursor ? { cursor } : {}),
  };
}

/** @param {import("../dist/index.js").LiveTable} table */
function snapshotOf(table) {
  return Object.fromEntries(table.rows().map((r) => [r.id, { version: r.version, data: r.data }]));
}

test("a snapshot then live changes, from single-message and batched frames", async () => {
  const client = connect();
  const table = client.table("t1");
  /** @type {string[]} */
  const events = [];
  table.on("insert", (e) => events.push(`insert ${e.id} ${e.kind}`));
  table.on("update", (e) => events.push(`update ${e.id} ${e.kind}`));
  /** @type {number[]} */
  const batchSizes = [];
  table.on("change", (e) => batchSizes.push(e.changed.size));

  const connection = await server.connection(0);
  const subscribe = await connection.nextOfType("subscribe");
  assert.deepEqual(
    { ...subscribe, ref: 0 },
    { type: "subscribe", ref: 0, table_id: "t1", snapshot: true, presence: true },
  );
  connection.send([
    { type: "subscribed", ref: subscribe["ref"], table_id: "t1" },
    upsert("r1", 1, { n: 1 }, undefined, "INSERT"),
    upsert("r2", 2, { n: 2 }, undefined, "INSERT"),
  ]);
  connection.send({ type: "synced", table_id: "t1", cursor: "c1" });
  await within(table.whenSynced(), 2_000, "synced");
  assert.equal(table.cursor, "c1");
  assert.deepEqual(snapshotOf(table), { r1: { version: 1, data: { n: 1 } }, r2: { version: 2, data: { n: 2 } } });
  assert.equal(client.status, "live");
  assert.equal(client.isConnected, true);

  connection.send(upsert("r1", 3, { n: 10 }, "c2"));
  await eventually(() => table.get("r1")?.version === 3, { label: "r1 v3" });
  assert.equal(table.cursor, "c2");
  connection.send({ type: "cursor", table_id: "t1", cursor: "c3" });
  await eventually(() => table.cursor === "c3", { label: "cursor c3" });

  assert.deepEqual(events, ["insert r1 snapshot", "insert r2 snapshot", "update r1 live"]);
  // One change event per frame, however many rows it carried.
  assert.deepEqual(batchSizes, [2, 1]);
});

test("changes not newer than the held version are dropped; deleted ids stay deleted", async () => {
  const client = connect();
  const table = client.table("t1");
  const connection = await server.connection(0);
  await acceptSubscribe(connection);
  connection.send({ type: "synced", table_id: "t1", cursor: "c0" });
  await table.whenSynced();
  /** @type {string[]} */
  const events = [];
  for (const name of /** @type {const} */ (["insert", "update", "delete"])) {
    table.on(name, (e) => events.push(`${name} ${e.id}`));
  }

  connection.send(upsert("r1", 5, { v: 5 }, "c1"));
  connection.send([upsert("r1", 4, { v: 4 }, "c2"), upsert("r1", 5, { v: "5 again" }, "c3")]);
  await eventually(() => table.cursor === "c3", { label: "cursor c3" });
  // The cursor moved on although both changes were re-sends.
  assert.deepEqual(table.get("r1")?.data, { v: 5 });

  connection.send(remove("r1", 6, "c4"));
  connection.send(upsert("r1", 5, { v: "resurrected?" }, "c5", "INSERT"));
  // A delete of a row never held is remembered too.
  connection.send(remove("r2", 8, "c6"));
  connection.send(upsert("r2", 7, { v: 7 }, "c7", "INSERT"));
  await eventually(() => table.cursor === "c7", { label: "cursor c7" });
  assert.equal(table.get("r1"), undefined);
  assert.equal(table.get("r2"), undefined);

  // A re-insert has a newer version than the deletion, and is accepted.
  connection.send(upsert("r1", 9, { v: 9 }, "c8", "INSERT"));
  await eventually(() => table.get("r1")?.version === 9, { label: "r1 re-inserted" });
  assert.deepEqual(events, ["insert r1", "delete r1", "insert r1"]);
});

test("reset drops the rows and the remembered versions, and the snapshot that follows is kept", async () => {
  const client = connect();
  const table = client.table("t1");
  const connection = await server.connection(0);
  await acceptSubscribe(connection);
  connection.send([upsert("r1", 10, {}, undefined, "INSERT"), upsert("r2", 11, {}, undefined, "INSERT")]);
  connection.send({ type: "synced", table_id: "t1", cursor: "c1" });
  await table.whenSynced();
  connection.send(remove("r2", 12, "c2"));
  await eventually(() => !table.has("r2"), { label: "r2 deleted" });

  /** @type {string[]} */
  const resets = [];
  table.on("reset", (e) => resets.push(e.reason));
  /** @type {boolean[]} */
  const resetFlags = [];
  table.on("change", (e) => resetFlags.push(e.reset));
  // From another database (foreign_cursor): versions there are lower.
  connection.send([
    { type: "reset", table_id: "t1", reason: "foreign_cursor" },
    upsert("r2", 1, { other: true }, undefined, "INSERT"),
    upsert("r3", 2, {}, undefined, "INSERT"),
    { type: "synced", table_id: "t1", cursor: "d1" },
  ]);
  await eventually(() => table.cursor === "d1", { label: "synced after reset" });
  assert.deepEqual(resets, ["foreign_cursor"]);
  assert.deepEqual(resetFlags, [true]);
  assert.deepEqual(Object.keys(snapshotOf(table)).sort(), ["r2", "r3"]);
  assert.deepEqual(table.get("r2")?.data, { other: true });
});

test("after a lost connection it resumes from the last cursor; stale messages before subscribed are ignored", async () => {
  const client = connect();
  /** @type {string[]} */
  const errors = [];
  client.on("error", (e) => errors.push(`${e.code} ${e.closeCode ?? ""}`.trim()));
  /** @type {string[]} */
  const statuses = [];
  client.on("status", (s) => statuses.push(s));
  const table = client.table("t1");
  /** @type {string[]} */
  const kinds = [];
  table.on("insert", (e) => kinds.push(`${e.id} ${e.kind}`));
  table.on("update", (e) => kinds.push(`${e.id} ${e.kind}`));
  /** @type {boolean[]} */
  const resumed = [];
  table.on("synced", (e) => resumed.push(e.resumed));

  const first = await server.connection(0);
  await acceptSubscribe(first);
  first.send([upsert("r1", 1, {}, undefined, "INSERT"), { type: "synced", table_id: "t1", cursor: "c1" }]);
  await table.whenSynced();
  first.send(upsert("r2", 2, {}, "c2", "INSERT"));
  await eventually(() => table.cursor === "c2", { label: "cursor c2" });
  first.close(1011, "boom");

  const second = await server.connection(1);
  const subscribe = await second.nextOfType("subscribe");
  assert.equal(subscribe["cursor"], "c2");
  assert.equal(subscribe["snapshot"], undefined);
  assert.equal(table.synced, false);
  // Not this subscription's: the catch-up has not started.
  second.send(upsert("r9", 99, {}, "zz", "INSERT"));
  second.send([
    { type: "subscribed", ref: subscribe["ref"], table_id: "t1" },
    upsert("r1", 3, { changed: true }),
    upsert("r2", 2, {}),
    { type: "synced", table_id: "t1", cursor: "c3" },
  ]);
  await eventually(() => table.cursor === "c3", { label: "resumed" });
  assert.equal(table.has("r9"), false);
  assert.deepEqual(kinds, ["r1 snapshot", "r2 live", "r1 resume"]);
  assert.deepEqual(resumed, [false, true]);
  assert.ok(errors.includes("connection_closed 1011"), JSON.stringify(errors));
  assert.deepEqual(statuses, ["live", "reconnecting", "live"]);
});

test("a first load cut short is redone from a snapshot, dropping rows it no longer has", async () => {
  const client = connect();
  const table = client.table("t1");
  const first = await server.connection(0);
  await acceptSubscribe(first);
  first.send([upsert("r1", 1, {}, undefined, "INSERT"), upsert("r2", 2, {}, undefined, "INSERT")]);
  await eventually(() => table.size === 2, { label: "partial snapshot" });
  first.socket.terminate();

  const second = await server.connection(1);
  const subscribe = await acceptSubscribe(second);
  assert.equal(subscribe["snapshot"], true);
  second.send([upsert("r2", 2, {}, undefined, "INSERT"), { type: "synced", table_id: "t1", cursor: "c1" }]);
  await within(table.whenSynced(), 2_000, "synced");
  assert.deepEqual(Object.keys(snapshotOf(table)), ["r2"]);
});

test("one subscription per table however many handles; the last close unsubscribes", async () => {
  const client = connect();
  const a = client.table("t1");
  const b = client.table("t1");
  const other = client.table("t2");
  assert.notEqual(a, b);
  const connection = await server.connection(0);
  await acceptSubscribe(connection, "t1");
  await acceptSubscribe(connection, "t2");
  connection.send([upsert("r1", 1, {}, undefined, "INSERT"), { type: "synced", table_id: "t1", cursor: "c1" }]);
  await a.whenSynced();
  assert.equal(b.get("r1")?.version, 1);

  let aEvents = 0;
  a.on("change", () => (aEvents += 1));
  a.close();
  a.close(); // Idempotent: does not release b's share.
  connection.send(upsert("r2", 2, {}, "c2", "INSERT"));
  await eventually(() => b.has("r2"), { label: "b still live" });
  assert.equal(aEvents, 0, "a closed handle's listeners are removed");
  await sleep(50);
  assert.equal(connection.received.filter((m) => m["type"] === "subscribe").length, 2);
  assert.equal(
    connection.received.some((m) => m["type"] === "unsubscribe"),
    false,
  );

  b.close();
  const unsubscribe = await connection.nextOfType("unsubscribe");
  assert.equal(unsubscribe["table_id"], "t1");
  other.close();
  assert.equal((await connection.nextOfType("unsubscribe"))["table_id"], "t2");

  // A new handle subscribes again, from scratch.
  const again = client.table("t1");
  const resubscribe = await connection.nextOfType("subscribe");
  assert.equal(resubscribe["snapshot"], true);
  assert.equal(again.size, 0);
});

test("a table released and taken again within unsubscribeDelayMs keeps its subscription and rows", async () => {
  const client = connect({ unsubscribeDelayMs: 300 });
  const first = client.table("t1");
  const connection = await server.connection(0);
  await acceptSubscribe(connection);
  connection.send([upsert("r1", 1, {}, undefined, "INSERT"), { type: "synced", table_id: "t1", cursor: "c1" }]);
  await first.whenSynced();
  first.close();
  await sleep(50);
  const second = client.table("t1");
  assert.equal(second.get("r1")?.version, 1);
  await sleep(400);
  assert.deepEqual(
    connection.received.map((m) => m["type"]).filter((t) => t !== "ping"),
    ["subscribe"],
  );
});

test("a connection whose pongs stop is dropped and re-opened", async () => {
  server.answerPings = false;
  const client = connect({ heartbeatIntervalMs: 50, heartbeatTimeoutMs: 100 });
  /** @type {string[]} */
  const errors = [];
  client.on("error", (e) => errors.push(e.code));
  const table = client.table("t1");
  const first = await server.connection(0);
  await acceptSubscribe(first);
  first.send({ type: "synced", table_id: "t1", cursor: "c1" });
  await first.nextOfType("ping");
  const second = await server.connection(1, 3_000);
  assert.ok(errors.includes("heartbeat_timeout"));
  assert.equal((await second.nextOfType("subscribe"))["cursor"], "c1");
  await first.closed();
  assert.equal(table.cursor, "c1");
});

test("answered pings keep the connection", async () => {
  const client = connect({ heartbeatIntervalMs: 30, heartbeatTimeoutMs: 300 });
  client.table("t1");
  const connection = await server.connection(0);
  await acceptSubscribe(connection);
  await sleep(400);
  assert.ok(connection.received.filter((m) => m["type"] === "ping").length >= 5);
  assert.equal(server.connections.length, 1);
  assert.equal(client.status, "live");
});

test("reconnection delays grow exponentially up to the cap", async () => {
  /** @type {number[]} */
  const openedAt = [];
  server.wss.on("connection", (socket) => {
    openedAt.push(Date.now());
    socket.close(1011); // Accepted but never healthy: the backoff keeps growing.
  });
  connect({ reconnect: { initialDelayMs: 40, maxDelayMs: 320, jitter: 0 } });
  await eventually(() => openedAt.length >= 6, { ms: 5_000, label: "six attempts" });
  const gaps = openedAt.slice(1).map((at, i) => at - /** @type {number} */ (openedAt[i]));
  // 40, 80, 160, 320, 320 ms plus connection set-up time.
  const expected = [40, 80, 160, 320, 320];
  gaps.slice(0, 5).forEach((gap, i) => {
    const want = /** @type {number} */ (expected[i]);
    assert.ok(gap >= want - 5 && gap < want + 250, `gap ${i}: ${gap} ms, expected about ${want} (${gaps.join(", ")})`);
  });
});

test("in a browser, `online` and a visible tab reconnect at once instead of waiting for the backoff", async () => {
  const globals = /** @type {Record<string, unknown>} */ (/** @type {unknown} */ (globalThis));
  const fakeWindow = new EventTarget();
  const fakeDocument = Object.assign(new EventTarget(), { visibilityState: "hidden" });
  globals["window"] = fakeWindow;
  globals["document"] = fakeDocument;
  try {
    const client = connect({ reconnect: { initialDelayMs: 60_000, maxDelayMs: 60_000, jitter: 0 } });
    client.table("t1");
    const first = await server.connection(0);
    await acceptSubscribe(first);
    first.close(1001);
    await eventually(() => client.status === "reconnecting", { label: "reconnecting" });
    fakeWindow.dispatchEvent(new Event("online"));
    const second = await server.connection(1, 2_000);
    await acceptSubscribe(second);
    await eventually(() => client.status === "live", { label: "live again" });

    second.close(1001);
    await eventually(() => client.status === "reconnecting", { label: "reconnecting again" });
    fakeDocument.visibilityState = "visible";
    fakeDocument.dispatchEvent(new Event("visibilitychange"));
    await server.connection(2, 2_000);

    client.close();
    assert.equal(client.status, "offline");
  } finally {
    delete globals["window"];
    delete globals["document"];
  }
});

test("frames that are not protocol messages are reported and skipped", async () => {
  const client = connect();
  /** @type {string[]} */
  const errors = [];
  client.on("error", (e) => errors.push(e.code));
  const table = client.table("t1");
  const connection = await server.connection(0);
  await acceptSubscribe(connection);
  connection.socket.send("not json");
  connection.send([{ type: "change", table_id: "t1", op: "INSERT", row: { id: "r1" } }, { type: "future_message" }]);
  connection.send([upsert("r2", 2, {}, undefined, "INSERT"), { type: "synced", table_id: "t1", cursor: "c1" }]);
  await table.whenSynced();
  assert.deepEqual(Object.keys(snapshotOf(table)), ["r2"]);
  assert.deepEqual(errors, ["malformed_frame", "malformed_frame"]);
});

test("whenSynced rejects when the handle closes first; table() after close throws", async () => {
  const client = connect();
  const table = client.table("t1");
  const waiting = table.whenSynced();
  table.close();
  await assert.rejects(waiting, /closed before it synced/);
  client.close();
  assert.throws(() => client.table("t2"), /closed/);
});
