// @ts-check
/**
 * Against a real server and Postgres: the snapshot, live inserts, updates and
 * deletes into the store, one subscription per table, and a published table
 * by a column's value.
 */

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { WebSocket } from "ws";
import { createClient } from "../dist/index.js";
import { Backend } from "./support/backend.js";
import { converged, recordingWebSocket } from "./support/helpers.js";
import { eventually, within } from "./support/wait.js";

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

/** @param {import("../dist/index.js").ClientOptions} [options] */
function connect(options = {}) {
  const client = createClient(server.wsUrl, { WebSocket, ...options });
  clients.push(client);
  return client;
}

test("the snapshot holds every row of the table", async () => {
  await backend.query(
    `INSERT INTO rows (id, table_id, data, enriching_columns) VALUES
       ('s1', 'snap', '{"name": "Ada"}', '{}'),
       ('s2', 'snap', '{"name": "Grace"}', '{email}'),
       ('o1', 'other', '{}', '{}')`,
  );
  const client = connect();
  const table = client.table("snap");
  await within(table.whenSynced(), 10_000, "the snapshot");
  assert.deepEqual(
    table
      .rows()
      .map((r) => r.id)
      .sort(),
    ["s1", "s2"],
  );
  assert.deepEqual(table.get("s2")?.enriching_columns, ["email"]);
  assert.equal(typeof table.cursor, "string");
  await converged(table, backend);
});

test("live inserts, updates and deletes reach the store, each with a cursor", async () => {
  const client = connect();
  const table = client.table("live");
  await within(table.whenSynced(), 10_000, "synced");
  assert.equal(table.size, 0);
  /** @type {string[]} */
  const events = [];
  table.on("insert", (e) => events.push(`insert ${e.id} ${e.kind}`));
  table.on("update", (e) => events.push(`update ${e.id} ${e.kind}`));
  table.on("delete", (e) => events.push(`delete ${e.id} ${e.kind}`));

  const syncedCursor = table.cursor;
  await backend.query(`INSERT INTO rows (id, table_id, data) VALUES ('l1', 'live', '{"name": "Ada"}')`);
  await eventually(() => table.get("l1"), { label: "the insert" });
  assert.notEqual(table.cursor, syncedCursor);
  const inserted = /** @type {import("../dist/index.js").Row} */ (table.get("l1"));

  await backend.query(`UPDATE rows SET enriching_columns = '{email}' WHERE id = 'l1'`);
  await eventually(() => table.get("l1")?.enriching_columns.includes("email"), { label: "the update" });
  const updated = /** @type {import("../dist/index.js").Row} */ (table.get("l1"));
  assert.ok(updated.version > inserted.version);

  await backend.query(
    `UPDATE rows SET data = data || '{"email": "ada@example.com"}', enriching_columns = '{}' WHERE id = 'l1'`,
  );
  await eventually(() => table.get("l1")?.data["email"] === "ada@example.com", { label: "the enrichment" });
  assert.deepEqual(table.get("l1")?.enriching_columns, []);

  await backend.query(`DELETE FROM rows WHERE id = 'l1'`);
  await eventually(() => !table.has("l1"), { label: "the delete" });
  assert.deepEqual(events, ["insert l1 live", "update l1 live", "update l1 live", "delete l1 live"]);
  await converged(table, backend);
});

test("a statement changing many rows arrives in one batch", async () => {
  const client = connect();
  const table = client.table("bulk");
  await within(table.whenSynced(), 10_000, "synced");
  /** @type {number[]} */
  const batches = [];
  table.on("change", (e) => batches.push(e.changed.size));
  await backend.query(
    `INSERT INTO rows (table_id, data) SELECT 'bulk', jsonb_build_object('i', i) FROM generate_series(1, 200) AS i`,
  );
  await eventually(() => table.size === 200, { label: "200 rows" });
  assert.ok(batches.length < 200, `${batches.length} change events for 200 rows`);
  await converged(table, backend);
});

test("one subscription per table however many handles; unsubscribed after the last close", async () => {
  const recorder = recordingWebSocket();
  const client = connect({ WebSocket: recorder.WebSocket });
  const a = client.table("shared");
  const b = client.table("shared");
  await within(Promise.all([a.whenSynced(), b.whenSynced()]), 10_000, "synced");
  await backend.query(`INSERT INTO rows (id, table_id) VALUES ('sh1', 'shared')`);
  await eventually(() => a.has("sh1") && b.has("sh1"), { label: "both handles see the row" });
  const subscribes = () => recorder.sent.filter((m) => m["type"] === "subscribe" && m["table_id"] === "shared");
  assert.equal(subscribes().length, 1);

  a.close();
  b.close();
  await eventually(() => recorder.sent.some((m) => m["type"] === "unsubscribe" && m["table_id"] === "shared"), {
    label: "the unsubscribe",
  });
  const c = client.table("shared");
  await within(c.whenSynced(), 10_000, "synced again");
  assert.equal(subscribes().length, 2);
  assert.ok(c.has("sh1"), "a new subscription loads the snapshot again");
});

test("a published table by a column's value: snapshot, live changes and a resume, keyed by its primary key", async () => {
  // Keyed (room_id, seq), with an ordinary column named id.
  await backend.query(
    `CREATE TABLE messages (room_id int, seq int, id int, body text, PRIMARY KEY (room_id, seq));
     INSERT INTO messages VALUES (5, 1, 100, 'a'), (5, 2, 101, 'b'), (6, 1, 102, 'c')`,
  );
  await backend.publish("public.messages");
  const recorder = recordingWebSocket();
  const client = connect({ WebSocket: recorder.WebSocket });
  /** @type {import("../dist/index.js").LivePublishedTable<{ room_id: number, seq: number, id: number, body: string }>} */
  const room = client.publishedTable("public.messages", { filter: "room_id=eq.5" });
  await within(room.whenSynced(), 10_000, "the filtered snapshot");
  assert.deepEqual(
    room
      .rows()
      .map((r) => `${r.room_id}/${r.seq} ${r.body}`)
      .sort(),
    ["5/1 a", "5/2 b"],
  );
  assert.deepEqual(room.get("[5, 1]"), { room_id: 5, seq: 1, id: 100, body: "a", version: 0 });

  await backend.query(`UPDATE messages SET body = 'edited' WHERE seq = 1`);
  await backend.query(`INSERT INTO messages VALUES (5, 3, 103, 'd'), (6, 2, 104, 'e')`);
  await backend.query(`DELETE FROM messages WHERE (room_id, seq) = (5, 2)`);
  await eventually(() => room.get("[5, 1]")?.body === "edited" && room.has("[5, 3]") && !room.has("[5, 2]"), {
    label: "the live changes of room 5",
    describe: () => room.rows(),
  });
  assert.equal(room.size, 2, "room 6's changes did not pass the filter");

  // Cut off, then resumed from the cursor with the filter: what changed meanwhile, of room 5 only.
  // Killed, not stopped: a server that stops stops the embedded Postgres it started.
  const opened = recorder.opened.count;
  await server.kill();
  await eventually(() => client.status !== "live", { label: "the connection lost" });
  await backend.query(`INSERT INTO messages VALUES (5, 4, 105, 'while away'), (6, 3, 106, 'f')`);
  server = await backend.serve({ port: server.port });
  await eventually(() => recorder.opened.count > opened && room.synced && room.has("[5, 4]"), {
    ms: 20_000,
    label: "the resume",
    describe: () => room.rows(),
  });
  const resume = recorder.sent.filter((m) => m["type"] === "subscribe").at(-1);
  assert.ok(resume !== undefined);
  assert.equal(resume["filter"], "room_id=eq.5");
  assert.equal(typeof resume["cursor"], "string");
  assert.deepEqual(
    room
      .rows()
      .map((r) => `${r.room_id}/${r.seq} ${r.body}`)
      .sort(),
    ["5/1 edited", "5/3 d", "5/4 while away"],
  );
});
