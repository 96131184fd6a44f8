// @ts-check
/**
 * Broadcast and presence against real servers and Postgres: two clients on
 * one table (on one server process, then on two), a re-track, a client that
 * leaves, and a connection lost and re-opened that tracks again by itself.
 */

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { WebSocket } from "ws";
import { createClient } from "../dist/index.js";
import { Backend } from "./support/backend.js";
import { eventually, sleep, within } from "./support/wait.js";

/** @type {Backend} */
let backend;
/** @type {import("./support/backend.js").ServeProcess} */
let server;
/** @type {import("../dist/index.js").BroadcasterClient[]} */
const clients = [];

before(async () => {
  backend = await Backend.create();
  server = await backend.serve();
});

after(async () => {
  for (const client of clients) client.close();
  // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition -- unset if before() failed.
  await backend?.close();
});

/**
 * A WebSocket class that keeps its sockets, so a test can cut one.
 * @returns {{ WebSocket: import("../dist/index.js").WebSocketConstructor, sockets: WebSocket[] }}
 */
function keptWebSocket() {
  /** @type {WebSocket[]} */
  const sockets = [];
  class KeptWebSocket extends WebSocket {
    /** @param {string} url */
    constructor(url) {
      super(url);
      sockets.push(this);
    }
  }
  return { WebSocket: KeptWebSocket, sockets };
}

/**
 * @param {string} [url]
 * @param {import("../dist/index.js").ClientOptions} [options]
 */
function connect(url = server.wsUrl, options = {}) {
  const client = createClient(url, {
    WebSocket,
    reconnect: { initialDelayMs: 50, maxDelayMs: 200, jitter: 0 },
    ...options,
  });
  clients.push(client);
  return client;
}

/**
 * Every broadcast a table receives, as "event:payload".
 * @param {import("../dist/index.js").LiveTable} table
 */
function received(table) {
  /** @type {string[]} */
  const seen = [];
  table.on("broadcast", ({ event, payload }) => seen.push(`${event}:${JSON.stringify(payload)}`));
  return seen;
}

/**
 * The presence state as `{key: [name, …]}`, for comparisons.
 * @param {import("../dist/index.js").LiveTable} table
 */
function names(table) {
  return Object.fromEntries(
    Object.entries(table.presence.state()).map(([key, metas]) => [key, metas.map((m) => m["name"])]),
  );
}

test("a broadcast reaches the other client and not the sender, unless self", async () => {
  const a = connect().table("bc");
  const b = connect().table("bc");
  await within(Promise.all([a.whenSynced(), b.whenSynced()]), 15_000, "both synced");
  const atA = received(a);
  const atB = received(b);

  await within(a.broadcast("one", { n: 1 }), 5_000, "sent");
  await within(a.broadcast("two", { n: 2 }, { self: true }), 5_000, "sent with self");
  await within(b.broadcast("three", [3]), 5_000, "sent by b");
  await eventually(() => atB.length === 2 && atA.length === 2, {
    label: "the broadcasts",
    describe: () => ({ atA, atB }),
  });
  // In order on one connection: had "one" come back to A, it would be first.
  assert.deepEqual(atA, ['two:{"n":2}', "three:[3]"]);
  assert.deepEqual(atB, ['one:{"n":1}', 'two:{"n":2}']);

  // Another table hears none of it.
  const other = connect().table("bc-other");
  await within(other.whenSynced(), 15_000, "synced");
  const atOther = received(other);
  await within(a.broadcast("four", null), 5_000, "sent");
  await eventually(() => atB.length === 3, { label: "the fourth broadcast" });
  await sleep(200);
  assert.deepEqual(atOther, []);
});

test("a broadcast too large for the server rejects with too_large; the table stays subscribed", async () => {
  const a = connect().table("bc-big");
  await within(a.whenSynced(), 15_000, "synced");
  await assert.rejects(a.broadcast("big", { blob: "x".repeat(20_000) }), { code: "too_large" });
  assert.equal(a.synced, true);
  await within(a.broadcast("small", { ok: true }), 5_000, "a small one still goes");
});

test("presence: state for a late subscriber, join, re-track, leave when a client closes", async () => {
  const clientA = connect();
  const a = clientA.table("room");
  await within(a.presence.track({ name: "Ada" }, { key: "ada" }), 15_000, "A tracked");

  // B subscribes later and finds A in the state.
  const b = connect().table("room");
  /** @type {string[]} */
  const atB = [];
  b.presence.on("join", (e) => atB.push(`join ${e.key}`));
  b.presence.on("leave", (e) => atB.push(`leave ${e.key}`));
  await eventually(() => b.presence.synced, { label: "B's presence state", ms: 15_000 });
  assert.deepEqual(names(b), { ada: ["Ada"] });
  const adaRef = b.presence.state()["ada"]?.[0]?.presenceRef;
  assert.equal(typeof adaRef, "string");
  assert.equal("phx_ref" in (b.presence.state()["ada"]?.[0] ?? {}), false);

  // B tracks without a key: A sees it join under B's connection's key.
  /** @type {import("../dist/index.js").PresenceJoinEvent[]} */
  const joinsAtA = [];
  a.presence.on("join", (e) => joinsAtA.push(e));
  await within(b.presence.track({ name: "Bob" }), 5_000, "B tracked");
  await eventually(() => joinsAtA.some((e) => e.newPresences.some((p) => p["name"] === "Bob")), {
    label: "A sees B join",
  });
  await eventually(() => Object.keys(a.presence.state()).length === 2, { label: "two keys at A" });
  const bobKey = Object.keys(names(a)).find((key) => key !== "ada");
  assert.ok(bobKey !== undefined);
  assert.deepEqual(names(a), { ada: ["Ada"], [bobKey]: ["Bob"] });

  // A re-tracks: the old presence leaves and a new one (a new ref) joins.
  await within(a.presence.track({ name: "Ada", typing: true }, { key: "ada" }), 5_000, "A re-tracked");
  await eventually(() => b.presence.state()["ada"]?.[0]?.["typing"] === true, { label: "B sees the new meta" });
  assert.equal(b.presence.state()["ada"]?.length, 1);
  assert.notEqual(b.presence.state()["ada"]?.[0]?.presenceRef, adaRef);
  assert.deepEqual(atB.slice(-2), ["leave ada", "join ada"]);

  // A goes: B sees it leave at once.
  clientA.close();
  await eventually(() => !("ada" in b.presence.state()), { label: "B sees A leave" });
  assert.equal(atB.at(-1), "leave ada");
  assert.deepEqual(Object.keys(b.presence.state()), [bobKey]);

  // And B untracks.
  const watcher = connect().table("room");
  await eventually(() => watcher.presence.synced && bobKey in watcher.presence.state(), { label: "watcher sees B" });
  await within(b.presence.untrack(), 5_000, "B untracked");
  await eventually(() => Object.keys(watcher.presence.state()).length === 0, { label: "nobody left" });
});

test("a lost connection: the presence leaves, and comes back by itself once the client has reconnected", async () => {
  const kept = keptWebSocket();
  const clientA = connect(server.wsUrl, { WebSocket: kept.WebSocket });
  const a = clientA.table("rejoin");
  await within(a.presence.track({ name: "Ada" }, { key: "ada" }), 15_000, "A tracked");
  const b = connect().table("rejoin");
  await eventually(() => b.presence.state()["ada"]?.length === 1, { label: "B sees A", ms: 15_000 });
  const firstRef = b.presence.state()["ada"]?.[0]?.presenceRef;
  /** @type {string[]} */
  const atB = [];
  b.presence.on("leave", (e) => atB.push(`leave ${e.key}`));
  b.presence.on("join", (e) => atB.push(`join ${e.key}`));

  // A pending broadcast fails with the connection.
  const broadcast = a.broadcast("lost", 1);
  const socket = kept.sockets.at(-1);
  assert.ok(socket !== undefined);
  socket.terminate(); // As if the network went: no closing handshake.
  await assert.rejects(broadcast, { code: "disconnected" });

  await eventually(() => atB.includes("leave ada"), { label: "B sees A leave", ms: 15_000 });
  await eventually(() => b.presence.state()["ada"]?.length === 1 && atB.at(-1) === "join ada", {
    label: "A tracked again after reconnecting",
    ms: 15_000,
  });
  assert.notEqual(b.presence.state()["ada"]?.[0]?.presenceRef, firstRef, "a new connection, a new presence");
  assert.equal(b.presence.state()["ada"]?.[0]?.["name"], "Ada");
  // A's own state was rebuilt from the new connection's presence_state.
  await eventually(() => a.presence.synced && a.presence.state()["ada"]?.length === 1, { label: "A's own state" });
  assert.equal(kept.sockets.length, 2);
});

test("across two server processes: broadcast and presence reach clients of the other one", async () => {
  const dsn = backend.dsn;
  assert.ok(dsn !== null);
  const other = await backend.serve({ databaseUrl: dsn });
  const a = connect(server.wsUrl).table("procs");
  const b = connect(other.wsUrl).table("procs");
  await within(Promise.all([a.whenSynced(), b.whenSynced()]), 15_000, "both synced");
  const atB = received(b);
  await within(a.broadcast("cross", { from: "A" }), 5_000, "sent");
  await eventually(() => atB.length === 1, { label: "the broadcast on the other process" });
  assert.deepEqual(atB, ['cross:{"from":"A"}']);

  await within(a.presence.track({ name: "Ada" }, { key: "ada" }), 5_000, "tracked");
  await eventually(() => b.presence.state()["ada"]?.[0]?.["name"] === "Ada", { label: "B sees A" });
  await within(a.presence.untrack(), 5_000, "untracked");
  await eventually(() => !("ada" in b.presence.state()), { label: "B sees A go" });
});
