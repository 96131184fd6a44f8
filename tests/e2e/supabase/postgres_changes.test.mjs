// Unmodified supabase-js apps against broadcaster: postgres_changes on `rows`, by table_id
// and filtered on other columns.
//
// Run by tests/e2e/test_supabase.py, which starts the server and passes
// BROADCASTER_URL (http://host:port) and DATABASE_URL. Every wait is bounded by
// TIMEOUT_MS (scaled like the Python tests' unit).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import pg from "pg";
import * as helpers from "./helpers.mjs";
import { collector, subscribe } from "./helpers.mjs";

const db = new pg.Client({ connectionString: process.env.DATABASE_URL });
await db.connect();
after(() => db.end());

// The anon key is only passed through as apikey; this server runs without auth.
const supabase = (realtime = {}) =>
  helpers.supabase(process.env.BROADCASTER_URL, "anon-key", realtime);

for (const vsn of ["2.0.0", "1.0.0"]) {
  test(`vsn ${vsn}: insert, update and delete arrive in the supabase shape`, async () => {
    const table = `t-${vsn}`;
    const changes = collector();
    const channel = supabase({ vsn })
      .channel(`table:${table}`)
      .on(
        "postgres_changes",
        { event: "*", schema: "public", table: "rows", filter: `table_id=eq.${table}` },
        (payload) => changes.push(payload),
      );
    const [status, error] = await subscribe(channel);
    assert.equal(status, "SUBSCRIBED", String(error));

    await db.query("INSERT INTO rows (id, table_id, data) VALUES ($1, $2, $3)", [
      `r-${vsn}`, table, { name: "Ada" },
    ]);
    const [inserted] = await changes.next(1, "the insert");
    assert.equal(inserted.eventType, "INSERT");
    assert.equal(inserted.schema, "public");
    assert.equal(inserted.table, "rows");
    assert.equal(inserted.new.id, `r-${vsn}`);
    assert.equal(inserted.new.table_id, table);
    assert.deepEqual(inserted.new.data, { name: "Ada" });
    assert.deepEqual(inserted.new.enriching_columns, []);
    assert.match(inserted.commit_timestamp, /^\d{4}-\d\d-\d\dT/);

    await db.query("UPDATE rows SET enriching_columns = '{email}' WHERE id = $1", [`r-${vsn}`]);
    const [, updated] = await changes.next(2, "the update");
    assert.equal(updated.eventType, "UPDATE");
    assert.deepEqual(updated.new.enriching_columns, ["email"]);
    assert.equal(updated.old.id, `r-${vsn}`);

    await db.query("DELETE FROM rows WHERE id = $1", [`r-${vsn}`]);
    const [, , deleted] = await changes.next(3, "the delete");
    assert.equal(deleted.eventType, "DELETE");
    assert.equal(deleted.old.id, `r-${vsn}`);
    assert.equal(deleted.old.table_id, table);
  });
}

test("an UPDATE-only binding gets only updates; another table's channel gets nothing", async () => {
  const client = supabase();
  const updates = collector();
  const everything = collector();
  const elsewhere = collector();
  const only = client
    .channel("updates-only")
    .on(
      "postgres_changes",
      { event: "UPDATE", schema: "public", table: "rows", filter: "table_id=eq.u1" },
      (payload) => updates.push(payload),
    )
    .on(
      "postgres_changes",
      { event: "*", schema: "public", table: "rows", filter: "table_id=eq.u1" },
      (payload) => everything.push(payload),
    );
  const other = client
    .channel("other-table")
    .on(
      "postgres_changes",
      { event: "*", schema: "public", table: "rows", filter: "table_id=eq.u2" },
      (payload) => elsewhere.push(payload),
    );
  assert.equal((await subscribe(only))[0], "SUBSCRIBED");
  assert.equal((await subscribe(other))[0], "SUBSCRIBED");

  await db.query("INSERT INTO rows (id, table_id) VALUES ('u', 'u1')");
  await db.query(`UPDATE rows SET data = '{"n": 1}' WHERE id = 'u'`);
  const [inserted, updated] = await everything.next(2, "the insert and the update");
  assert.deepEqual([inserted.eventType, updated.eventType], ["INSERT", "UPDATE"]);
  const [update] = await updates.next(1, "the update");
  assert.equal(update.eventType, "UPDATE");
  assert.deepEqual(update.new.data, { n: 1 });
  // The insert came first and was not delivered to the UPDATE-only binding.
  assert.equal(updates.seen.length, 1);
  assert.equal(elsewhere.seen.length, 0);
});

test("a binding filtered on another column gets the matching rows of every table", async () => {
  const client = supabase();
  const byId = collector();
  const both = collector();
  const byData = collector();
  const channel = client
    .channel("by-id")
    .on(
      "postgres_changes",
      { event: "*", schema: "public", table: "rows", filter: "id=in.(f1,f3)" },
      (payload) => byId.push(payload),
    )
    .on(
      "postgres_changes",
      { event: "UPDATE", schema: "public", table: "rows", filter: "table_id=eq.fa,id=eq.f1" },
      (payload) => both.push(payload),
    )
    .on(
      "postgres_changes",
      { event: "*", schema: "public", table: "rows", filter: 'data=eq.{"n": 2}' },
      (payload) => byData.push(payload),
    );
  assert.equal((await subscribe(channel))[0], "SUBSCRIBED");

  await db.query(
    "INSERT INTO rows (id, table_id) VALUES ('f1', 'fa'), ('f2', 'fa'), ('f3', 'fb'), ('f4', 'fc')",
  );
  const inserted = await byId.next(2, "the inserts of f1 and f3");
  assert.deepEqual(inserted.map((p) => [p.eventType, p.new.id]).sort(), [
    ["INSERT", "f1"],
    ["INSERT", "f3"],
  ]);
  await db.query(`UPDATE rows SET data = '{"n": 2}' WHERE id IN ('f1', 'f2')`);
  const [, , updated] = await byId.next(3, "the update of f1");
  assert.equal(updated.new.id, "f1");
  const updatedData = await byData.next(2, "the updates that set data to {n: 2}");
  assert.deepEqual(updatedData.map((p) => p.new.id).sort(), ["f1", "f2"]);
  const [fromBoth] = await both.next(1, "the update of f1 in table fa");
  assert.deepEqual([fromBoth.eventType, fromBoth.new.table_id], ["UPDATE", "fa"]);
  await db.query("DELETE FROM rows WHERE id IN ('f2', 'f3')");
  const [, , , deleted] = await byId.next(4, "the delete of f3");
  assert.deepEqual([deleted.eventType, deleted.old.id], ["DELETE", "f3"]);
  // A DELETE's filters see the whole old row: f2's data was {n: 2}.
  const [, , deletedData] = await byData.next(3, "the delete of f2");
  assert.deepEqual([deletedData.eventType, deletedData.old.id], ["DELETE", "f2"]);
  assert.equal(byId.seen.length, 4);
  assert.equal(both.seen.length, 1);
  assert.equal(byData.seen.length, 3);
});

test("a binding the server cannot serve is refused with the reason", async () => {
  const channel = supabase()
    .channel("unroutable")
    .on(
      "postgres_changes",
      { event: "*", schema: "public", table: "rows", filter: "data=gt.1" },
      () => {},
    );
  const [status, error] = await subscribe(channel);
  assert.equal(status, "CHANNEL_ERROR");
  assert.match(String(error?.message ?? error), /uses gt on data \(jsonb\): use eq, neq, in/);
});

test("the seed's useTableRealtime shape works unchanged", async () => {
  // What the seed's hook does: one channel per table, * events, filter by table_id,
  // then dispatch on eventType.
  const tableId = "seed";
  const rows = new Map();
  const seen = collector();
  const channel = supabase()
    .channel(`rows:${tableId}`)
    .on(
      "postgres_changes",
      { event: "*", schema: "public", table: "rows", filter: `table_id=eq.${tableId}` },
      (payload) => {
        if (payload.eventType === "DELETE") rows.delete(payload.old.id);
        else rows.set(payload.new.id, payload.new);
        seen.push(payload);
      },
    );
  assert.equal((await subscribe(channel))[0], "SUBSCRIBED");
  await db.query("INSERT INTO rows (id, table_id, enriching_columns) VALUES ('s1', $1, '{ceo}')", [tableId]);
  // Every state arrives: the spinner state, then the value, as a user sees them.
  await seen.next(1);
  assert.deepEqual(rows.get("s1").enriching_columns, ["ceo"]);
  await db.query(
    `UPDATE rows SET data = '{"ceo": "Grace"}', enriching_columns = '{}' WHERE id = 's1'`,
  );
  await seen.next(2);
  assert.deepEqual(rows.get("s1").data, { ceo: "Grace" });
  assert.deepEqual(rows.get("s1").enriching_columns, []);
});

// Every committed change is its own event (issue 20): four back-to-back autocommit
// writes to a row, with no wait between them, reach the app as four events, each
// with the row as that write left it and, for UPDATE and DELETE, the whole old row.

// A row's image as the table holds it: what each write's RETURNING gives.
const IMAGE = `json_build_object('id', id, 'table_id', table_id, 'data', data,
  'enriching_columns', enriching_columns, 'created_at', created_at,
  'updated_at', updated_at) AS image`;
// The four writes, in order, and the event each must become.
const WRITES = [
  [
    "INSERT",
    `INSERT INTO rows (id, table_id, data, enriching_columns)
     VALUES ($1, $2, '{"step": 1}', '{email}') RETURNING ${IMAGE}`,
  ],
  [
    "UPDATE",
    `UPDATE rows SET data = '{"step": 2}' WHERE id = $1 AND table_id = $2 RETURNING ${IMAGE}`,
  ],
  [
    "UPDATE",
    `UPDATE rows SET data = '{"step": 3}', enriching_columns = '{}'
     WHERE id = $1 AND table_id = $2 RETURNING ${IMAGE}`,
  ],
  ["DELETE", `DELETE FROM rows WHERE id = $1 AND table_id = $2 RETURNING ${IMAGE}`],
];

// The four writes to each of `ids`, interleaved (every row's INSERT, then every
// row's first UPDATE, ...), each its own transaction, none waiting for an event.
// Resolves with each row's images, in the order of its writes.
async function fourWrites(table, ids) {
  const images = new Map(ids.map((id) => [id, []]));
  for (const [, sql] of WRITES) {
    for (const id of ids) {
      const { rows } = await db.query(sql, [id, table]);
      images.get(id).push(instants(rows[0].image));
    }
  }
  return images;
}

// A timestamp's instant in microseconds since the epoch, however it is spelled
// (the server may write Z where Postgres writes +00:00); Date keeps only milliseconds.
function micros(text) {
  const [, seconds, fraction = "", zone] = /^(.*:\d\d)(?:\.(\d+))?(Z|[+-][\d:]+)$/.exec(text);
  return Date.parse(seconds + zone) * 1000 + Number(fraction.padEnd(6, "0"));
}

// `row` with its timestamps as instants (a missing one stays missing).
function instants(row) {
  const timestamps = ["created_at", "updated_at"];
  return Object.fromEntries(
    Object.entries(row).map(([column, value]) => [
      column,
      timestamps.includes(column) && value ? micros(value) : value,
    ]),
  );
}

// The table's columns of `record` (a record may carry more: its version).
function asWritten(record, image) {
  return instants(Object.fromEntries(Object.keys(image).map((column) => [column, record[column]])));
}

// `events` (one row's, in arrival order) are the four writes that left `images`.
function assertFourEvents(events, images, id) {
  assert.deepEqual(
    events.map((p) => p.eventType),
    WRITES.map(([op]) => op),
    `row ${id}: one event per write, in commit order`,
  );
  const [inserted, first, second, deleted] = events;
  for (const [index, event] of [inserted, first, second].entries()) {
    assert.deepEqual(asWritten(event.new, images[index]), images[index], `row ${id}: the record`);
    assert.equal(typeof event.new.version, "number");
  }
  assert.deepEqual(inserted.old, {});
  for (const [index, update] of [first, second].entries()) {
    // The whole old row: as the previous write left it.
    const before = images[index];
    assert.deepEqual(asWritten(update.old, before), before, `row ${id}: an UPDATE's old row`);
  }
  assert.deepEqual(deleted.new, {});
  assert.deepEqual(asWritten(deleted.old, images[3]), images[3], `row ${id}: the DELETE's old row`);
  const committed = events.map((p) => micros(p.commit_timestamp));
  assert.ok(
    committed.every((at, index) => index === 0 || at >= committed[index - 1]),
    `row ${id}: commit timestamps in commit order: ${events.map((p) => p.commit_timestamp)}`,
  );
}

for (const vsn of ["2.0.0", "1.0.0"]) {
  for (const count of [1, 3]) {
    test(`vsn ${vsn}: four back-to-back writes to ${count} row(s) arrive as four events each`, async () => {
      const table = `four-${vsn}-${count}`;
      const ids = Array.from({ length: count }, (_, index) => `${table}-r${index}`);
      const everything = collector();
      const updates = collector();
      const filter = `table_id=eq.${table}`;
      const channel = supabase({ vsn })
        .channel(`rows:${table}`)
        .on(
          "postgres_changes",
          { event: "*", schema: "public", table: "rows", filter },
          (payload) => everything.push(payload),
        )
        .on(
          "postgres_changes",
          { event: "UPDATE", schema: "public", table: "rows", filter },
          (payload) => updates.push(payload),
        );
      const [status, error] = await subscribe(channel);
      assert.equal(status, "SUBSCRIBED", String(error));

      const images = await fourWrites(table, ids);
      const rowOf = (p) => (p.eventType === "DELETE" ? p.old.id : p.new.id);
      await everything.next(4 * count, `four events for each of ${ids}`).catch((timeout) => {
        const got = everything.seen.map(
          (p) => `${p.eventType} ${rowOf(p)} ${JSON.stringify(p.new.data)}`,
        );
        throw new Error(`${timeout.message}; got ${got.length}: ${got.join("; ")}`);
      });
      for (const id of ids) {
        assertFourEvents(
          everything.seen.filter((p) => rowOf(p) === id),
          images.get(id),
          id,
        );
      }
      // The UPDATE-only binding got both UPDATEs of each row and nothing else.
      await updates.next(2 * count, "both UPDATEs of each row");
      assert.equal(updates.seen.length, 2 * count);
      for (const id of ids) {
        const mine = updates.seen.filter((p) => p.new.id === id);
        assert.deepEqual(
          mine.map((p) => [p.eventType, p.new.data]),
          [
            ["UPDATE", { step: 2 }],
            ["UPDATE", { step: 3 }],
          ],
        );
      }
      assert.equal(everything.seen.length, 4 * count);
    });
  }
}
