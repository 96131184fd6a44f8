// @ts-check
/**
 * Broadcast and presence against a scripted server: what the client sends and
 * when (queued until synced, re-tracked after a reconnect), how it settles its
 * promises, and how it turns presence_state and presence_diff into a state
 * with join/leave/sync events.
 */

import assert from "node:assert/strict";
import { afterEach, beforeEach, test } from "node:test";
import { WebSocket } from "ws";
import { BroadcasterError, createClient } from "../dist/index.js";
import { FakeServer } from "./support/fake-server.js";
import { eventually, sleep, within } from "./support/wait.js";

/** @typedef {import("./support/fake-server.js").FakeConnection} FakeConnection */

/** @type {FakeServer} */
let server;
/** @type {import("../dist/index.js").BroadcasterClient[]} */
let clients = [];

beforeEach(async () => {
  server = await FakeServer.start();
  clients = [];
});

afterEach(async () => {
  for (const client of clients) client.close();
  await server.close();
});

function connect() {
  const client = createClient(server.url, {
    WebSocket,
    reconnect: { initialDelayMs: 20, maxDelayMs: 100, jitter: 0 },
  });
  clients.push(client);
  return client;
}

/**
 * Answer the subscribe of `tableId` with subscribed and synced (and an empty presence_state unless told otherwise).
 * @param {FakeConnection} connection
 * @param {string} [tableId]
 * @param {Record<string, unknown> | null} [presences]
 */
async function sync(connection, tableId = "t1", presences = {}) {
  const subscribe = await connection.next((m) => m["type"] === "subscribe" && m["table_id"] === tableId);
  assert.equal(subscribe["presence"], true, "presence is always asked for");
  connection.send([
    { type: "subscribed", ref: subscribe["ref"], table_id: tableId },
    { type: "synced", table_id: tableId, cursor: "c1" },
  ]);
  if (presences !== null) connection.send({ type: "presence_state", table_id: tableId, presences });
  return subscribe;
}

/**
 * @param {string} ref
 * @param {Record<string, unknown>} meta
 */
function wire(ref, meta) {
  return { ...meta, phx_ref: ref };
}

/**
 * A promise's outcome without letting a rejection go unhandled.
 * @param {Promise<unknown>} promise
 */
function settled(promise) {
  /** @type {{ state: "pending" | "resolved" | "rejected", error?: unknown }} */
  const outcome = { state: "pending" };
  promise.then(
    () => (outcome.state = "resolved"),
    (/** @type {unknown} */ error) => {
      outcome.state = "rejected";
      outcome.error = error;
    },
  );
  return outcome;
}

test("a broadcast waits until the table is synced, then is sent and resolves on `sent`", async () => {
  const client = connect();
  const table = client.table("t1");
  const first = settled(table.broadcast("cursor", { x: 1 }));
  const connection = await server.connection(0);
  await sync(connection);
  const message = await connection.nextOfType("broadcast");
  assert.deepEqual(
    { ...message, ref: 0 },
    { type: "broadcast", ref: 0, table_id: "t1", event: "cursor", payload: { x: 1 }, self: false },
  );
  await sleep(30);
  assert.equal(first.state, "pending", "not resolved before the server answers");
  connection.send({ type: "sent", ref: message["ref"], table_id: "t1" });
  await eventually(() => first.state === "resolved", { label: "resolved on sent" });

  // Synced now: sent at once. self, and a missing payload sent as null.
  const second = table.broadcast("ping", undefined, { self: true });
  const echo = await connection.nextOfType("broadcast");
  assert.equal(echo["self"], true);
  assert.equal(echo["payload"], null);
  connection.send({ type: "sent", ref: echo["ref"], table_id: "t1" });
  await within(second, 2_000, "the second broadcast");
});

test("broadcasts from others reach on('broadcast'); a refused broadcast rejects without ending the subscription", async () => {
  const client = connect();
  const table = client.table("t1");
  const connection = await server.connection(0);
  await sync(connection);
  await within(table.whenSynced(), 2_000, "synced");
  /** @type {unknown[]} */
  const received = [];
  table.on("broadcast", (e) => received.push(e));
  /** @type {unknown[]} */
  const tableErrors = [];
  table.on("error", (e) => tableErrors.push(e));
  connection.send([
    { type: "broadcast", table_id: "t1", event: "hello", payload: { from: "B" } },
    { type: "broadcast", table_id: "other", event: "not-ours", payload: 1 },
  ]);
  await eventually(() => received.length === 1, { label: "the broadcast" });
  assert.deepEqual(received, [{ tableId: "t1", event: "hello", payload: { from: "B" } }]);

  const big = table.broadcast("big", { blob: "x".repeat(10_000) });
  const message = await connection.nextOfType("broadcast");
  connection.send({
    type: "error",
    code: "too_large",
    message: "a broadcast travels by NOTIFY",
    ref: message["ref"],
    table_id: "t1",
  });
  await assert.rejects(big, (error) => error instanceof BroadcasterError && error.code === "too_large");
  assert.equal(table.synced, true, "the subscription goes on");
  assert.deepEqual(tableErrors, []);
  await assert.rejects(table.broadcast(""), TypeError);
});

test("pending broadcasts and tracks reject on disconnect; after close, requests reject", async () => {
  const client = connect();
  const table = client.table("t1");
  const connection = await server.connection(0);
  await sync(connection);
  await within(table.whenSynced(), 2_000, "synced");
  const broadcast = settled(table.broadcast("e", 1));
  const track = settled(table.presence.track({ name: "Ada" }));
  await connection.nextOfType("track");
  connection.close(1011, "boom");
  await eventually(() => broadcast.state === "rejected" && track.state === "rejected", { label: "both rejected" });
  assert.ok(broadcast.error instanceof BroadcasterError);
  assert.equal(broadcast.error.code, "disconnected");
  assert.match(broadcast.error.message, /connection was lost.*broadcast/);
  assert.ok(track.error instanceof BroadcasterError);
  assert.equal(track.error.code, "disconnected");
  client.close();
  await assert.rejects(table.broadcast("after", 1), (error) => error instanceof BroadcasterError);
});

test("with no connection open or opening, a broadcast rejects at once; an untrack resolves", async () => {
  const client = createClient(server.url, { WebSocket, token: "static" });
  clients.push(client);
  const table = client.table("t1");
  const connection = await server.connection(0);
  await connection.nextOfType("auth");
  // A refused static token: offline until reconnectNow().
  connection.close(4001, "unauthorized");
  await eventually(() => client.status === "offline", { label: "offline" });
  const tracked = settled(table.presence.track({ name: "Ada" }));
  await assert.rejects(
    table.broadcast("e", 1),
    (error) => error instanceof BroadcasterError && error.code === "disconnected",
  );
  await eventually(() => tracked.state === "rejected", { label: "the track rejects" });
  assert.deepEqual(table.presence.tracked, { name: "Ada" }, "still the intent for the next connection");
  await within(table.presence.untrack(), 2_000, "untrack");
  assert.equal(table.presence.tracked, null);
});

test("presence_state then diffs: state by key without phx_ref, join/leave/sync events, a re-track replaces the meta", async () => {
  const client = connect();
  const table = client.table("t1");
  /** @type {string[]} */
  const events = [];
  table.presence.on("join", (e) =>
    events.push(`join ${e.key} ${e.newPresences.map((p) => p["name"]).join()} (had ${e.currentPresences.length})`),
  );
  table.presence.on("leave", (e) =>
    events.push(`leave ${e.key} ${e.leftPresences.map((p) => p["name"]).join()} (left ${e.currentPresences.length})`),
  );
  table.presence.on("sync", () => events.push("sync"));
  const connection = await server.connection(0);
  await sync(connection, "t1", { a: { metas: [wire("r1", { name: "Ada" })] } });
  await eventually(() => table.presence.synced, { label: "presence state" });
  assert.deepEqual(table.presence.state(), { a: [{ name: "Ada", presenceRef: "r1" }] });
  assert.deepEqual(events, ["join a Ada (had 0)", "sync"]);
  const before = table.presence.state();
  assert.equal(table.presence.state(), before, "the same object until it changes");

  events.length = 0;
  connection.send({
    type: "presence_diff",
    table_id: "t1",
    joins: { b: { metas: [wire("r2", { name: "Bob" })] }, a: { metas: [wire("r3", { name: "Ada 2" })] } },
    leaves: {},
  });
  await eventually(() => events.includes("sync"), { label: "the join" });
  assert.deepEqual(events, ["join b Bob (had 0)", "join a Ada 2 (had 1)", "sync"]);
  assert.notEqual(table.presence.state(), before);
  assert.deepEqual(table.presence.state(), {
    a: [
      { name: "Ada", presenceRef: "r1" },
      { name: "Ada 2", presenceRef: "r3" },
    ],
    b: [{ name: "Bob", presenceRef: "r2" }],
  });

  // Re-track: a leave of the old meta and a join of the new, same phx_ref.
  events.length = 0;
  connection.send({
    type: "presence_diff",
    table_id: "t1",
    joins: { b: { metas: [wire("r2", { name: "Bob", typing: true })] } },
    leaves: { b: { metas: [wire("r2", { name: "Bob" })] } },
  });
  await eventually(() => events.includes("sync"), { label: "the re-track" });
  assert.deepEqual(events, ["leave b Bob (left 0)", "join b Bob (had 0)", "sync"]);
  assert.deepEqual(table.presence.state()["b"], [{ name: "Bob", typing: true, presenceRef: "r2" }]);

  events.length = 0;
  connection.send({
    type: "presence_diff",
    table_id: "t1",
    joins: {},
    leaves: { a: { metas: [wire("r1", { name: "Ada" })] }, b: { metas: [wire("r2", { name: "Bob", typing: true })] } },
  });
  await eventually(() => events.includes("sync"), { label: "the leaves" });
  assert.deepEqual(events, ["leave a Ada (left 1)", "leave b Bob (left 0)", "sync"]);
  assert.deepEqual(table.presence.state(), { a: [{ name: "Ada 2", presenceRef: "r3" }] });
});

test("diffs that come before presence_state are applied after it", async () => {
  const client = connect();
  const table = client.table("t1");
  const connection = await server.connection(0);
  await sync(connection, "t1", null);
  connection.send([
    { type: "presence_diff", table_id: "t1", joins: { b: { metas: [wire("r2", { name: "Bob" })] } }, leaves: {} },
    { type: "presence_diff", table_id: "t1", joins: {}, leaves: { a: { metas: [wire("r1", { name: "Ada" })] } } },
  ]);
  await sleep(50);
  assert.equal(table.presence.synced, false);
  assert.deepEqual(table.presence.state(), {});
  // The state was read after the join of b (it has it) but before a left.
  connection.send({
    type: "presence_state",
    table_id: "t1",
    presences: { a: { metas: [wire("r1", { name: "Ada" })] }, b: { metas: [wire("r2", { name: "Bob" })] } },
  });
  await eventually(() => table.presence.synced, { label: "presence state" });
  assert.deepEqual(table.presence.state(), { b: [{ name: "Bob", presenceRef: "r2" }] });
});

test("track and untrack: sent once synced, settled by tracked/untracked; untrack with nothing tracked resolves at once", async () => {
  const client = connect();
  const table = client.table("t1");
  await within(table.presence.untrack(), 2_000, "an untrack with nothing to undo");
  const tracked = table.presence.track({ name: "Ada" }, { key: "user-1" });
  assert.deepEqual(table.presence.tracked, { name: "Ada" });
  const connection = await server.connection(0);
  await sync(connection);
  const track = await connection.nextOfType("track");
  assert.deepEqual(
    { ...track, ref: 0 },
    { type: "track", ref: 0, table_id: "t1", meta: { name: "Ada" }, key: "user-1" },
  );
  connection.send({ type: "tracked", ref: track["ref"], table_id: "t1" });
  await within(tracked, 2_000, "tracked");

  const untracked = table.presence.untrack();
  assert.equal(table.presence.tracked, null);
  const untrack = await connection.nextOfType("untrack");
  assert.deepEqual({ ...untrack, ref: 0 }, { type: "untrack", ref: 0, table_id: "t1" });
  connection.send({ type: "untracked", ref: untrack["ref"], table_id: "t1" });
  await within(untracked, 2_000, "untracked");

  await assert.rejects(
    // @ts-expect-error: not an object
    table.presence.track("Ada"),
    TypeError,
  );
});

test("after a reconnect, what was tracked is tracked again once synced, and the new presence_state replaces the state", async () => {
  const client = connect();
  const table = client.table("t1");
  /** @type {string[]} */
  const events = [];
  table.presence.on("join", (e) => events.push(`join ${e.key}`));
  table.presence.on("leave", (e) => events.push(`leave ${e.key}`));
  const first = await server.connection(0);
  await sync(first, "t1", { ghost: { metas: [wire("g", {})] }, b: { metas: [wire("rb", { name: "Bob" })] } });
  const tracked = table.presence.track({ name: "Ada" });
  const track = await first.nextOfType("track");
  assert.equal("key" in track, false, "no key: one presence per connection");
  first.send({ type: "tracked", ref: track["ref"], table_id: "t1" });
  await within(tracked, 2_000, "tracked");
  // Not answered: the connection drops first. It rejects, but stays the intent.
  const away = settled(table.presence.track({ name: "Ada", status: "away" }));
  await first.nextOfType("track");
  first.close(1011, "restart");
  await eventually(() => away.state === "rejected", { label: "the unanswered track rejects" });
  assert.deepEqual(table.presence.tracked, { name: "Ada", status: "away" });

  const second = await server.connection(1);
  const subscribe = await second.nextOfType("subscribe");
  await sleep(50);
  assert.equal(
    second.received.some((m) => m["type"] === "track"),
    false,
    "no track before the table is synced",
  );
  second.send([
    { type: "subscribed", ref: subscribe["ref"], table_id: "t1" },
    { type: "synced", table_id: "t1", cursor: "c2" },
  ]);
  const retrack = await second.nextOfType("track");
  assert.deepEqual(retrack["meta"], { name: "Ada", status: "away" }, "the latest meta asked for");
  second.send({ type: "tracked", ref: retrack["ref"], table_id: "t1" });
  events.length = 0;
  second.send({
    type: "presence_state",
    table_id: "t1",
    presences: { b: { metas: [wire("rb", { name: "Bob" })] }, me: { metas: [wire("rme", { name: "Ada" })] } },
  });
  await eventually(() => table.presence.synced, { label: "the new presence state" });
  assert.deepEqual(events.sort(), ["join me", "leave ghost"]);
  assert.deepEqual(table.presence.state(), {
    b: [{ name: "Bob", presenceRef: "rb" }],
    me: [{ name: "Ada", presenceRef: "rme" }],
  });
  await sleep(50);
  assert.equal(second.received.filter((m) => m["type"] === "track").length, 1, "re-tracked once");
});

test("a meta the server refuses is not re-tracked", async () => {
  const client = connect();
  const table = client.table("t1");
  const first = await server.connection(0);
  await sync(first);
  const tracked = table.presence.track({ blob: "x" });
  const track = await first.nextOfType("track");
  first.send({ type: "error", code: "too_large", message: "too large", ref: track["ref"] });
  await assert.rejects(tracked, (error) => error instanceof BroadcasterError && error.code === "too_large");
  assert.equal(table.presence.tracked, null);
  first.close(1011, "restart");
  const second = await server.connection(1);
  await sync(second);
  await within(table.whenSynced(), 2_000, "synced again");
  await sleep(50);
  assert.equal(
    second.received.some((m) => m["type"] === "track"),
    false,
  );
});
