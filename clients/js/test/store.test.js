// @ts-check
/**
 * The table store on its own, fed plain messages: the highest version per id
 * wins, deleted ids keep their version so an older re-send is not
 * resurrected, `reset` forgets rows and versions, an interrupted snapshot
 * drops what the next one no longer holds, and a frame is announced as one
 * `change`. Then the handle over it: what closing it releases and rejects.
 */

import assert from "node:assert/strict";
import { test } from "node:test";
import { TableHandle, TableStore } from "../dist/store.js";
import { BroadcasterError } from "../dist/index.js";
import { row } from "./support/fake-server.js";

/** @typedef {import("../dist/index.js").Row} Row */
/** @typedef {import("../dist/index.js").TableEvents} TableEvents */
/** @typedef {import("../dist/protocol.js").ChangeMessage} ChangeMessage */
/** @typedef {"insert" | "update" | "delete" | "reset" | "synced" | "change" | "status"} Recorded */
/** @typedef {{ [K in Recorded]: [K, TableEvents[K]] }[Recorded]} Entry */

/**
 * @param {string} id
 * @param {number} version
 * @param {Record<string, unknown>} [data]
 * @param {{ op?: "INSERT" | "UPDATE", cursor?: string }} [options]
 * @returns {ChangeMessage}
 */
function upsert(id, version, data = {}, options = {}) {
  /** @type {ChangeMessage} */
  const message = { type: "change", table_id: "t1", op: options.op ?? "UPDATE", id, row: row(id, version, data) };
  if (options.cursor !== undefined) message.cursor = options.cursor;
  return message;
}

/**
 * @param {string} id
 * @param {number} version
 * @param {string} [cursor]
 * @returns {ChangeMessage}
 */
function remove(id, version, cursor) {
  /** @type {ChangeMessage} */
  const message = { type: "change", table_id: "t1", op: "DELETE", id, row: { id, table_id: "t1", version } };
  if (cursor !== undefined) message.cursor = cursor;
  return message;
}

/**
 * Every event the store emits from now on, in order.
 * @param {TableStore} store
 */
function record(store) {
  /** @type {Entry[]} */
  const events = [];
  store.events.on("insert", (e) => events.push(["insert", e]));
  store.events.on("update", (e) => events.push(["update", e]));
  store.events.on("delete", (e) => events.push(["delete", e]));
  store.events.on("reset", (e) => events.push(["reset", e]));
  store.events.on("synced", (e) => events.push(["synced", e]));
  store.events.on("change", (e) => events.push(["change", e]));
  store.events.on("status", (e) => events.push(["status", e]));
  return events;
}

/**
 * One line per event, with what tells them apart: "update a v7 live",
 * "change a:live b:snapshot", "synced c1 resumed".
 * @param {Entry[]} events
 */
function summary(events) {
  return events.map((entry) => {
    switch (entry[0]) {
      case "insert":
      case "update":
        return `${entry[0]} ${entry[1].id} v${entry[1].row.version} ${entry[1].kind}`;
      case "delete":
        return `delete ${entry[1].id} v${entry[1].version} ${entry[1].kind}`;
      case "reset":
        return `reset ${entry[1].reason}`;
      case "synced":
        return `synced ${entry[1].cursor}${entry[1].resumed ? " resumed" : ""}`;
      case "change": {
        const changed = [...entry[1].changed].map(([id, kind]) => ` ${id}:${kind}`).join("");
        return `change${changed}${entry[1].reset ? " reset" : ""}`;
      }
      case "status":
        return `status ${entry[1]}`;
    }
  });
}

/**
 * The payload of the event at `index` (negative: from the end), which must be a `name` event.
 * @template {Recorded} K
 * @param {Entry[]} events
 * @param {number} index
 * @param {K} name
 * @returns {TableEvents[K]}
 */
function payload(events, index, name) {
  const entry = events.at(index);
  assert.ok(entry !== undefined, `no event at ${index}`);
  assert.equal(entry[0], name);
  return /** @type {TableEvents[K]} */ (entry[1]);
}

/**
 * Not `deepEqual(events, [])`: that would narrow the array's type to never[]
 * for the rest of the test.
 * @param {Entry[]} events
 */
function assertNoEvents(events) {
  assert.equal(events.length, 0, `unexpected events: ${summary(events).join(", ")}`);
}

/** @param {TableStore} store */
function ids(store) {
  return store.rows().map((r) => r.id);
}

/**
 * A store that went through a snapshot of `rows` and is synced at cursor "c0".
 * @param {Row[]} rows
 */
function syncedStore(...rows) {
  const store = new TableStore("t1", "live");
  store.beginSubscription("snapshot");
  for (const r of rows) store.applyChange({ type: "change", table_id: "t1", op: "INSERT", id: r.id, row: r });
  store.applySynced("c0");
  store.flush();
  return store;
}

test("a new store is empty, unsynced, without a cursor", () => {
  const store = new TableStore("t1", "connecting");
  assert.equal(store.tableId, "t1");
  assert.equal(store.size, 0);
  assert.deepEqual(store.rows(), []);
  assert.equal(store.cursor, null);
  assert.equal(store.synced, false);
  assert.equal(store.status, "connecting");
  assert.equal(store.get("a"), undefined);
  assert.equal(store.has("a"), false);
});

test("a snapshot inserts rows in the order received and announces them once per frame", () => {
  const store = new TableStore("t1", "live");
  const events = record(store);
  store.beginSubscription("snapshot");
  store.applyChange(upsert("b", 2, { n: 2 }, { op: "INSERT" }));
  store.applyChange(upsert("a", 1, { n: 1 }, { op: "INSERT" }));
  assert.deepEqual(
    summary(events),
    ["insert b v2 snapshot", "insert a v1 snapshot"],
    "no change event before the frame ends",
  );
  store.flush();

  assert.deepEqual(ids(store), ["b", "a"]);
  assert.equal(store.size, 2);
  assert.deepEqual(store.get("a")?.data, { n: 1 });
  assert.equal(store.has("b"), true);
  assert.deepEqual(payload(events, 0, "insert"), {
    tableId: "t1",
    id: "b",
    row: row("b", 2, { n: 2 }),
    previous: undefined,
    old: undefined,
    op: "INSERT",
    kind: "snapshot",
  });
  assert.deepEqual(payload(events, -1, "change"), {
    tableId: "t1",
    changed: new Map([
      ["b", "snapshot"],
      ["a", "snapshot"],
    ]),
    reset: false,
  });

  store.applySynced("c1");
  assert.equal(store.synced, true);
  assert.equal(store.cursor, "c1");
  assert.deepEqual(payload(events, -1, "synced"), { tableId: "t1", cursor: "c1", resumed: false });
});

test("flush without changes emits nothing", () => {
  const store = syncedStore(row("a", 1));
  const events = record(store);
  store.flush();
  store.applyCursor("c9");
  store.flush();
  assertNoEvents(events);
  assert.equal(store.cursor, "c9", "a cursor message moves the cursor without a change event");
});

test("a newer version updates the row in place; an equal or older one is a re-send and dropped", () => {
  const store = syncedStore(row("a", 5, { v: "five" }), row("b", 6));
  const events = record(store);

  store.applyChange(upsert("a", 5, { v: "again" }, { cursor: "c1" }));
  store.applyChange(upsert("a", 3, { v: "older" }, { cursor: "c2" }));
  store.flush();
  assertNoEvents(events);
  assert.deepEqual(store.get("a")?.data, { v: "five" });

  store.applyChange(upsert("a", 7, { v: "seven" }, { cursor: "c3" }));
  store.flush();
  assert.deepEqual(store.get("a")?.data, { v: "seven" });
  assert.deepEqual(ids(store), ["a", "b"], "an update keeps the row's place");
  assert.deepEqual(summary(events), ["update a v7 live", "change a:live"], "a change carrying a cursor is live");
  const update = payload(events, 0, "update");
  assert.equal(update.previous?.version, 5);
  assert.equal(update.op, "UPDATE");
});

test("the server's old row reaches the update and delete events", () => {
  const store = syncedStore(row("a", 5, { v: "five" }));
  const events = record(store);
  const { version: _, ...before } = row("a", 5, { v: "five" });

  const row7 = row("a", 7, { v: "seven" });
  store.applyChange({ type: "change", table_id: "t1", op: "UPDATE", id: "a", row: row7, old: before, cursor: "c1" });
  const deleted = { id: "a", table_id: "t1", version: 8 };
  const old7 = { ...before, data: { v: "seven" } };
  store.applyChange({ type: "change", table_id: "t1", op: "DELETE", id: "a", row: deleted, old: old7, cursor: "c2" });
  store.flush();

  assert.deepEqual(payload(events, 0, "update").old, before);
  assert.deepEqual(payload(events, 1, "delete").old?.data, { v: "seven" });
});

test("the server's op does not decide the event: an UPDATE of an unknown row is an insert", () => {
  const store = syncedStore();
  const events = record(store);
  store.applyChange(upsert("x", 1, {}, { op: "UPDATE", cursor: "c1" }));
  store.applyChange(upsert("x", 2, {}, { op: "INSERT", cursor: "c2" }));
  assert.deepEqual(summary(events), ["insert x v1 live", "update x v2 live"]);
  assert.equal(payload(events, 0, "insert").op, "UPDATE");
  assert.equal(payload(events, 1, "update").op, "INSERT");
});

test("a delete drops the row and remembers its version against older re-sends", () => {
  const store = syncedStore(row("a", 1), row("b", 2));
  const events = record(store);

  store.applyChange(remove("a", 4, "c1"));
  store.flush();
  assert.equal(store.has("a"), false);
  assert.deepEqual(ids(store), ["b"]);
  assert.deepEqual(summary(events), ["delete a v4 live", "change a:live"]);
  assert.deepEqual(payload(events, 0, "delete"), {
    tableId: "t1",
    id: "a",
    previous: row("a", 1),
    old: undefined,
    version: 4,
    kind: "live",
  });

  // An older state re-sent after the delete (at-least-once delivery) stays dead.
  events.length = 0;
  store.applyChange(upsert("a", 3, {}, { cursor: "c2" }));
  store.applyChange(upsert("a", 4, {}, { cursor: "c3" }));
  store.applyChange(remove("a", 4, "c4"));
  store.flush();
  assert.equal(store.has("a"), false);
  assertNoEvents(events);

  // A re-insert has a newer version: accepted, at the end of the order.
  store.applyChange(upsert("a", 9, { back: true }, { op: "INSERT", cursor: "c5" }));
  assert.deepEqual(ids(store), ["b", "a"]);
  assert.deepEqual(store.get("a")?.data, { back: true });
  assert.deepEqual(summary(events), ["insert a v9 live"]);
  assert.equal(store.cursor, "c0", "the store itself moves the cursor only on synced and applyCursor");
});

test("a delete of a row never held emits nothing but still stops an older state", () => {
  const store = syncedStore();
  const events = record(store);
  store.applyChange(remove("ghost", 10));
  store.flush();
  assertNoEvents(events);
  store.applyChange(upsert("ghost", 8));
  store.flush();
  assert.equal(store.has("ghost"), false);
  assertNoEvents(events);
  store.applyChange(upsert("ghost", 11));
  assert.equal(store.get("ghost")?.version, 11);
});

test("rows() is one frozen array until a row changes", () => {
  const store = syncedStore(row("a", 1));
  const first = store.rows();
  assert.equal(Object.isFrozen(first), true);
  assert.equal(store.rows(), first);
  store.applyChange(upsert("a", 1));
  assert.equal(store.rows(), first, "a dropped re-send keeps the array");
  store.applyChange(upsert("a", 2));
  const second = store.rows();
  assert.notEqual(second, first);
  assert.equal(second[0]?.version, 2);
  assert.equal(first[0]?.version, 1, "an array handed out is never mutated");
});

test("reset drops every row and every remembered version; the reload is a snapshot", () => {
  const store = syncedStore(row("a", 50), row("b", 60));
  store.applyChange(remove("b", 70, "c1"));
  store.flush();
  const events = record(store);

  store.applyReset("foreign_cursor");
  assert.equal(store.size, 0);
  assert.deepEqual(store.rows(), []);
  assert.deepEqual(summary(events), ["reset foreign_cursor"]);
  assert.deepEqual(payload(events, 0, "reset"), { tableId: "t1", reason: "foreign_cursor" });

  // Another database: its versions may be lower than the ones held before.
  store.applyChange(upsert("a", 2, { from: "other" }));
  store.applyChange(upsert("b", 3, { from: "other" }));
  store.flush();
  assert.deepEqual(ids(store), ["a", "b"]);
  assert.equal(store.get("a")?.version, 2);
  assert.equal(store.get("b")?.version, 3, "a version under the old tombstone is accepted after a reset");
  assert.deepEqual(summary(events), [
    "reset foreign_cursor",
    "insert a v2 snapshot",
    "insert b v3 snapshot",
    "change a:snapshot b:snapshot reset",
  ]);
});

test("a reset and nothing else still ends its frame with a change event", () => {
  const store = syncedStore(row("a", 1));
  const events = record(store);
  store.applyReset("history_pruned");
  store.flush();
  assert.deepEqual(summary(events), ["reset history_pruned", "change reset"]);
  assert.deepEqual(payload(events, -1, "change"), { tableId: "t1", changed: new Map(), reset: true });
});

test("a reset drops what the frame had changed before it", () => {
  const store = syncedStore();
  const events = record(store);
  store.applyChange(upsert("a", 1, {}, { cursor: "c1" }));
  store.applyReset("malformed_cursor");
  store.applyChange(upsert("b", 1));
  store.flush();
  assert.deepEqual(ids(store), ["b"]);
  assert.deepEqual(summary(events), [
    "insert a v1 live",
    "reset malformed_cursor",
    "insert b v1 snapshot",
    "change b:snapshot reset",
  ]);
});

test("a resume labels its catch-up `resume` and its synced `resumed`", () => {
  const store = syncedStore(row("a", 1), row("b", 1));
  store.connectionLost();
  assert.equal(store.synced, false);
  assert.equal(store.cursor, "c0", "the cursor survives the connection for the resume");
  const events = record(store);

  store.beginSubscription("resume");
  store.applyChange(upsert("a", 2));
  store.applyChange(remove("b", 3));
  store.applySynced("c1");
  store.flush();

  assert.deepEqual(summary(events), [
    "update a v2 resume",
    "delete b v3 resume",
    "synced c1 resumed",
    "change a:resume b:resume",
  ]);
  assert.deepEqual(ids(store), ["a"], "a resume sends deletions: nothing is swept");
  assert.equal(store.cursor, "c1");
  assert.equal(store.synced, true);
});

test("a snapshot into a store holding rows drops the rows it did not send", () => {
  // A first load cut short by a disconnect: no cursor, so the next subscribe
  // is a snapshot again, and rows deleted meanwhile are not in it.
  const store = new TableStore("t1", "live");
  store.beginSubscription("snapshot");
  store.applyChange(upsert("a", 1));
  store.applyChange(upsert("b", 2));
  store.applyChange(upsert("c", 3));
  store.connectionLost();
  store.flush();
  const events = record(store);

  store.beginSubscription("snapshot");
  store.applyChange(upsert("a", 1));
  store.applyChange(upsert("c", 4));
  assert.equal(store.size, 3, "nothing is dropped before the snapshot completes");
  store.applySynced("c1");
  store.flush();

  assert.deepEqual(ids(store), ["a", "c"]);
  assert.deepEqual(summary(events), [
    "update c v4 snapshot",
    "delete b v2 snapshot",
    "synced c1",
    "change c:snapshot b:snapshot",
  ]);
  assert.deepEqual(payload(events, 1, "delete"), {
    tableId: "t1",
    id: "b",
    previous: row("b", 2),
    old: undefined,
    version: 2,
    kind: "snapshot",
  });
  // The sweep remembers no version: any later state comes from a later read.
  store.applyChange(upsert("b", 1, {}, { cursor: "c2" }));
  assert.equal(store.get("b")?.version, 1);
});

test("status and broadcasts are relayed as events; a status is announced only when it changes", () => {
  const store = syncedStore();
  const events = record(store);
  /** @type {unknown[]} */
  const broadcasts = [];
  store.events.on("broadcast", (e) => broadcasts.push(e));
  store.setStatus("live");
  store.setStatus("reconnecting");
  store.setStatus("reconnecting");
  assert.deepEqual(summary(events), ["status reconnecting"]);
  assert.equal(store.status, "reconnecting");
  store.applyBroadcast("cursor-moved", { x: 1 });
  assert.deepEqual(broadcasts, [{ tableId: "t1", event: "cursor-moved", payload: { x: 1 } }]);
});

/** Table actions that record what the handle asked for. */
function recordingActions() {
  /** @type {unknown[][]} */
  const calls = [];
  return {
    calls,
    actions: {
      /** @param {string} event @param {unknown} payload @param {boolean} self */
      broadcast: (event, payload, self) => {
        calls.push(["broadcast", event, payload, self]);
        return Promise.resolve();
      },
      /** @param {Record<string, unknown>} meta @param {string | undefined} key */
      track: (meta, key) => {
        calls.push(["track", meta, key]);
        return Promise.resolve();
      },
      untrack: () => {
        calls.push(["untrack"]);
        return Promise.resolve();
      },
    },
  };
}

test("a handle reads through to the store and forwards broadcasts with their defaults", async () => {
  const store = syncedStore(row("a", 1));
  const { calls, actions } = recordingActions();
  let released = 0;
  const handle = new TableHandle(store, () => (released += 1), actions);
  assert.equal(handle.tableId, "t1");
  assert.equal(handle.cursor, "c0");
  assert.equal(handle.synced, true);
  assert.equal(handle.size, 1);
  assert.equal(handle.rows(), store.rows());
  assert.equal(handle.get("a"), store.get("a"));
  await handle.whenSynced();

  await handle.broadcast("hello");
  await handle.broadcast("hi", { to: "all" }, { self: true });
  await handle.presence.track({ name: "Ada" }, { key: "ada" });
  assert.deepEqual(calls, [
    ["broadcast", "hello", null, false],
    ["broadcast", "hi", { to: "all" }, true],
    ["track", { name: "Ada" }, "ada"],
  ]);
  await assert.rejects(handle.broadcast(""), TypeError);
  await assert.rejects(handle.presence.track(/** @type {any} */ ([])), TypeError);
  assert.equal(released, 0);
});

test("closing a handle releases it once, removes its listeners and rejects what follows", async () => {
  const store = new TableStore("t1", "live");
  const { calls, actions } = recordingActions();
  let released = 0;
  const handle = new TableHandle(store, () => (released += 1), actions);
  /** @type {string[]} */
  const seen = [];
  handle.on("insert", (e) => seen.push(e.id));
  const synced = handle.whenSynced();

  handle.close();
  handle.close();
  assert.equal(released, 1);
  assert.equal(handle.closed, true);
  await assert.rejects(synced, (/** @type {unknown} */ error) => {
    assert.ok(error instanceof BroadcasterError);
    assert.equal(error.code, "closed");
    assert.equal(error.tableId, "t1");
    return true;
  });

  store.beginSubscription("snapshot");
  store.applyChange(upsert("a", 1));
  assert.deepEqual(seen, [], "a closed handle's listeners are gone");
  assert.equal(store.size, 1, "the store itself lives on for the other handles");

  await assert.rejects(handle.broadcast("late"), { code: "closed" });
  await assert.rejects(handle.presence.track({ name: "Ada" }), { code: "closed" });
  await assert.rejects(handle.presence.untrack(), { code: "closed" });
  await assert.rejects(handle.whenSynced(), { code: "closed" });
  assert.deepEqual(calls, []);
});
