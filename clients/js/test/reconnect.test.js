// @ts-check
/**
 * Faults against a real server: the server process killed and restarted on
 * the same port while rows are written (and deleted), a graceful shutdown
 * (1001), and a cursor the new server cannot serve (reset).
 */

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { createClient } from "../dist/index.js";
import { Backend } from "./support/backend.js";
import { converged, recordingWebSocket } from "./support/helpers.js";
import { eventually, within } from "./support/wait.js";

/** @type {Backend} */
let backend;
/** @type {import("../dist/index.js").BroadcasterClient[]} */
const clients = [];

before(async () => {
  backend = await Backend.create();
});

after(async () => {
  for (const client of clients) client.close();
  // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition -- unset if before() failed.
  await backend?.close();
});

/**
 * A client that notices a dead server and reconnects quickly.
 * @param {string} url
 */
function connect(url) {
  const recorder = recordingWebSocket();
  const client = createClient(url, {
    WebSocket: recorder.WebSocket,
    heartbeatIntervalMs: 500,
    heartbeatTimeoutMs: 1_000,
    connectTimeoutMs: 2_000,
    reconnect: { initialDelayMs: 100, maxDelayMs: 500, jitter: 0.5 },
  });
  clients.push(client);
  /** @type {string[]} */
  const statuses = [];
  client.on("status", (status) => statuses.push(status));
  return { client, sent: recorder.sent, statuses };
}

/** @param {Array<Record<string, any>>} sent @param {string} tableId */
function subscribesOf(sent, tableId) {
  return sent.filter((m) => m["type"] === "subscribe" && m["table_id"] === tableId);
}

test("killed and restarted on the same port: the store catches up with writes and deletes made while it was down", async () => {
  const first = await backend.serve();
  await backend.query(
    `INSERT INTO rows (id, table_id, data) SELECT 'k' || i, 'kill', jsonb_build_object('i', i) FROM generate_series(1, 6) AS i`,
  );
  const { client, sent, statuses } = connect(first.wsUrl);
  const table = client.table("kill");
  /** @type {string[]} */
  const resets = [];
  table.on("reset", (e) => resets.push(e.reason));
  await within(table.whenSynced(), 15_000, "the snapshot");
  await backend.query(`UPDATE rows SET data = '{"live": true}' WHERE id = 'k1'`);
  await eventually(() => table.get("k1")?.data["live"] === true, { label: "a live update" });
  const cursorBeforeKill = table.cursor;

  await first.kill();
  await eventually(() => client.status === "reconnecting", { label: "the client notices", ms: 10_000 });

  // Written while no server runs: inserts, updates, deletes (one of them of a
  // row inserted now, one of a row the client holds), and a re-insert.
  await backend.query(`INSERT INTO rows (id, table_id, data) VALUES ('k7', 'kill', '{}'), ('k8', 'kill', '{}')`);
  await backend.query(
    `UPDATE rows SET data = '{"down": true}', enriching_columns = '{email}' WHERE id IN ('k2', 'k7')`,
  );
  await backend.query(`DELETE FROM rows WHERE id IN ('k3', 'k8')`);
  await backend.query(`DELETE FROM rows WHERE id = 'k4'`);
  await backend.query(`INSERT INTO rows (id, table_id, data) VALUES ('k4', 'kill', '{"again": true}')`);
  // A row moved to another table leaves this one.
  await backend.query(`UPDATE rows SET table_id = 'elsewhere' WHERE id = 'k5'`);

  const second = await backend.serve({ port: first.port });
  assert.equal(second.wsUrl, first.wsUrl);
  await eventually(() => client.status === "live" && table.synced, { label: "live and synced again", ms: 20_000 });
  await converged(table, backend);
  assert.equal(table.has("k3"), false);
  assert.equal(table.has("k5"), false);
  assert.deepEqual(table.get("k4")?.data, { again: true });

  const subscribes = subscribesOf(sent, "kill");
  assert.ok(subscribes.length >= 2);
  assert.equal(subscribes[0]?.["snapshot"], true);
  // The resume used the last cursor seen before the kill.
  assert.equal(subscribes.at(-1)?.["cursor"], cursorBeforeKill);
  assert.deepEqual(resets, []);
  assert.equal(statuses[0], "live");
  assert.ok(statuses.includes("reconnecting"));
  assert.equal(statuses.at(-1), "live");

  // And live again afterwards.
  await backend.query(`INSERT INTO rows (id, table_id) VALUES ('k9', 'kill')`);
  await eventually(() => table.has("k9"), { label: "a live insert after the restart" });
  await converged(table, backend);
  client.close();
  await second.stop();
});

test("a graceful restart (close 1001) resumes the same way", async () => {
  const first = await backend.serve();
  const { client } = connect(first.wsUrl);
  const table = client.table("graceful");
  await within(table.whenSynced(), 15_000, "synced");
  await backend.query(`INSERT INTO rows (id, table_id) VALUES ('g1', 'graceful'), ('g2', 'graceful')`);
  await eventually(() => table.size === 2, { label: "two rows" });

  await first.stop();
  await eventually(() => client.status !== "live", { label: "disconnected" });
  await backend.query(`DELETE FROM rows WHERE id = 'g1'`);
  await backend.query(`INSERT INTO rows (id, table_id) VALUES ('g3', 'graceful')`);
  const second = await backend.serve({ port: first.port });
  await eventually(() => client.status === "live" && table.synced, { label: "live again", ms: 20_000 });
  await converged(table, backend);
  client.close();
  await second.stop();
});

test("a cursor from another database gets a reset; the store then equals that database's table", async () => {
  const first = await backend.serve();
  await backend.query(
    `INSERT INTO rows (id, table_id, data) SELECT 'x' || i, 'moved', '{"db": "first"}' FROM generate_series(1, 5) AS i`,
  );
  const { client, sent } = connect(first.wsUrl);
  const table = client.table("moved");
  /** @type {string[]} */
  const resets = [];
  table.on("reset", (e) => resets.push(e.reason));
  await within(table.whenSynced(), 15_000, "synced");
  assert.equal(table.size, 5);
  // Live changes, so that the store holds versions above a snapshot's 0.
  await backend.query(`UPDATE rows SET data = data || '{"seen": true}' WHERE table_id = 'moved'`);
  await eventually(() => table.rows().every((r) => r.version > 0), { label: "live versions" });
  const highestVersion = Math.max(...table.rows().map((r) => r.version));

  // Fail over to another database (a restored copy would do the same): its
  // rows differ and its versions start again from 1.
  const otherUrl = await backend.siblingDatabase();
  const pg = await import("pg");
  const other = new pg.default.Client({ connectionString: otherUrl });
  other.on("error", () => {});
  await other.connect();
  try {
    await other.query(
      `INSERT INTO rows (id, table_id, data) VALUES ('x1', 'moved', '{"db": "other"}'), ('y1', 'moved', '{"db": "other"}')`,
    );
    await first.kill();
    const second = await backend.serve({ port: first.port, databaseUrl: otherUrl });
    await eventually(() => resets.length > 0 && table.synced, { label: "reset and synced", ms: 20_000 });
    assert.deepEqual(resets, ["foreign_cursor"]);
    assert.equal(subscribesOf(sent, "moved").at(-1)?.["cursor"] !== undefined, true);

    const expected = /** @type {import("pg").QueryResult<{ id: string, data: unknown }>} */ (
      await other.query(`SELECT id, data FROM rows WHERE table_id = 'moved' ORDER BY id`)
    );
    assert.deepEqual(
      [...table.rows()].sort((a, b) => a.id.localeCompare(b.id)).map((r) => [r.id, r.data, r.version]),
      expected.rows.map((r) => [r.id, r.data, 0]),
    );
    // The snapshot's versions (0) are lower than those held before the
    // reset; they were accepted because a reset forgets the old versions.
    assert.ok(highestVersion > 0);
    client.close();
    await second.stop();
  } finally {
    await other.end();
  }
});
