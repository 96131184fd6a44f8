// @ts-check
/**
 * The React bindings in a jsdom DOM against a real server: rows written in
 * Postgres show up in rendered components, isEnriching turns true then false
 * with the enriched value, and components share one subscription per table.
 */

import "./support/dom.js";

import assert from "node:assert/strict";
import { after, afterEach, before, test } from "node:test";
import { act, cleanup, render, screen, waitFor } from "@testing-library/react";
import { createElement as h, StrictMode, useState } from "react";
import { dom } from "./support/dom.js";
import { RealtimeProvider, useCellEnrichmentStatus, useRealtimeStatus, useTableRealtime } from "../dist/react.js";
import { Backend } from "./support/backend.js";
import { recordingWebSocket } from "./support/helpers.js";

/** @type {Backend} */
let backend;
/** @type {import("./support/backend.js").ServeProcess} */
let server;

before(async () => {
  backend = await Backend.create();
  server = await backend.serve();
});

afterEach(() => {
  cleanup();
});

after(async () => {
  // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition -- unset if before() failed.
  await backend?.close();
});

const WAIT = { timeout: 10_000 };

/**
 * Run a write inside act(): the re-renders it causes are flushed with it.
 * @param {string} sql
 */
async function write(sql) {
  await act(async () => {
    await backend.query(sql);
  });
}

/** @param {Array<Record<string, any>>} sent @param {string} type @param {string} tableId */
function countSent(sent, type, tableId) {
  return sent.filter((m) => m["type"] === type && m["table_id"] === tableId).length;
}

test("useCellEnrichmentStatus: isEnriching turns true, then false with the value, as Postgres updates the row", async () => {
  await backend.query(`INSERT INTO rows (id, table_id, data) VALUES ('p1', 'people', '{"name": "Ada"}')`);
  const recorder = recordingWebSocket();
  /** @type {Array<[boolean, unknown]>} */
  const cellStates = [];
  /** @type {string[]} */
  const updates = [];

  /** @param {{ rowId: string }} props */
  function EmailCell({ rowId }) {
    const { isEnriching, cellData } = useCellEnrichmentStatus("people", rowId, "email");
    if (rowId === "p1") cellStates.push([isEnriching, cellData]);
    // The rows' emails are strings, as the inserts below write them.
    const email = /** @type {string | undefined} */ (cellData);
    return h("td", { "data-testid": `email-${rowId}` }, isEnriching ? "enriching…" : (email ?? "—"));
  }

  function People() {
    const { isConnected, isSynced, rows, updatedRows } = useTableRealtime({
      tableId: "people",
      onRowUpdate: (row, event) => updates.push(`${row.id} ${event.kind}`),
    });
    return h(
      "div",
      null,
      h("p", { "data-testid": "connected" }, isConnected ? "connected" : "not connected"),
      h("p", { "data-testid": "synced" }, isSynced ? "synced" : "loading"),
      h("p", { "data-testid": "updated" }, [...updatedRows].sort().join(",")),
      h(
        "table",
        null,
        h(
          "tbody",
          null,
          rows.map((row) =>
            h("tr", { key: row.id }, h("td", null, String(row.data["name"])), h(EmailCell, { rowId: row.id })),
          ),
        ),
      ),
    );
  }

  const view = render(
    h(StrictMode, null, h(RealtimeProvider, { url: server.wsUrl, WebSocket: recorder.WebSocket }, h(People))),
  );
  await waitFor(() => assert.equal(screen.getByTestId("connected").textContent, "connected"), WAIT);
  await waitFor(() => assert.equal(screen.getByTestId("synced").textContent, "synced"), WAIT);
  await waitFor(() => assert.equal(screen.getByTestId("email-p1").textContent, "—"), WAIT);

  await write(`UPDATE rows SET enriching_columns = '{email}' WHERE id = 'p1'`);
  await waitFor(() => assert.equal(screen.getByTestId("email-p1").textContent, "enriching…"), WAIT);

  await write(
    `UPDATE rows SET data = data || '{"email": "ada@example.com"}', enriching_columns = '{}' WHERE id = 'p1'`,
  );
  await waitFor(() => assert.equal(screen.getByTestId("email-p1").textContent, "ada@example.com"), WAIT);

  // The cell went through exactly these states, in this order.
  const distinct = cellStates.filter(
    (state, i) => i === 0 || JSON.stringify(state) !== JSON.stringify(cellStates[i - 1]),
  );
  assert.deepEqual(distinct.slice(-3), [
    [false, undefined],
    [true, undefined],
    [false, "ada@example.com"],
  ]);
  assert.deepEqual(updates, ["p1 live", "p1 live"]);
  assert.equal(screen.getByTestId("updated").textContent, "p1");

  // A live insert renders a new row; StrictMode's double effects did not
  // subscribe twice.
  await write(`INSERT INTO rows (id, table_id, data) VALUES ('p2', 'people', '{"name": "Grace"}')`);
  await waitFor(() => assert.equal(screen.getByTestId("email-p2").textContent, "—"), WAIT);
  assert.equal(countSent(recorder.sent, "subscribe", "people"), 1);
  view.unmount();
});

test("one subscription per table for many components; unsubscribed when the last one unmounts", async () => {
  await backend.query(`INSERT INTO rows (id, table_id, data) VALUES ('m1', 'team', '{}')`);
  const recorder = recordingWebSocket();
  /** @type {(count: number) => void} */
  let setCount = () => {};
  /** @type {(enabled: boolean) => void} */
  let setEnabled = () => {};

  /** @param {{ index: number }} props */
  function Counter({ index }) {
    const { rows } = useTableRealtime({ tableId: "team" });
    return h("li", { "data-testid": `counter-${index}` }, String(rows.length));
  }

  function Optional() {
    const [enabled, update] = useState(false);
    setEnabled = update;
    const { rows } = useTableRealtime({ tableId: "optional", enabled });
    return h("p", { "data-testid": "optional" }, String(rows.length));
  }

  function Status() {
    const { status } = useRealtimeStatus();
    return h("p", { "data-testid": "status" }, status);
  }

  function App() {
    const [count, update] = useState(3);
    setCount = update;
    return h(
      "ul",
      null,
      Array.from({ length: count }, (_, index) => h(Counter, { key: index, index })),
      h(Optional),
      h(Status),
    );
  }

  render(h(RealtimeProvider, { url: server.wsUrl, WebSocket: recorder.WebSocket }, h(App)));
  await waitFor(() => assert.equal(screen.getByTestId("status").textContent, "live"), WAIT);
  await waitFor(() => assert.equal(screen.getByTestId("counter-2").textContent, "1"), WAIT);
  assert.equal(countSent(recorder.sent, "subscribe", "team"), 1);
  assert.equal(countSent(recorder.sent, "subscribe", "optional"), 0, "enabled: false subscribes to nothing");

  await write(`INSERT INTO rows (id, table_id, data) VALUES ('m2', 'team', '{}')`);
  await waitFor(() => assert.equal(screen.getByTestId("counter-0").textContent, "2"), WAIT);

  act(() => setCount(1));
  await new Promise((resolve) => setTimeout(resolve, 100));
  assert.equal(countSent(recorder.sent, "unsubscribe", "team"), 0, "one component still uses it");
  act(() => setCount(0));
  await waitFor(() => assert.equal(countSent(recorder.sent, "unsubscribe", "team"), 1), WAIT);

  act(() => setEnabled(true));
  await waitFor(() => assert.equal(countSent(recorder.sent, "subscribe", "optional"), 1), WAIT);
});

test("the provider reconnects when the browser comes back online", async () => {
  const recorder = recordingWebSocket();
  function Status() {
    const { status } = useRealtimeStatus();
    return h("p", { "data-testid": "status" }, status);
  }
  render(
    h(
      RealtimeProvider,
      { url: server.wsUrl, WebSocket: recorder.WebSocket, reconnect: { initialDelayMs: 60_000, jitter: 0 } },
      h(Status),
    ),
  );
  await waitFor(() => assert.equal(screen.getByTestId("status").textContent, "live"), WAIT);
  // Drop the connection from the server side: kill and restart the server.
  const port = server.port;
  await act(async () => {
    await server.kill();
  });
  await waitFor(() => assert.equal(screen.getByTestId("status").textContent, "reconnecting"), WAIT);
  server = await backend.serve({ port });
  // The backoff is a minute; `online` skips it.
  act(() => {
    dom.window.dispatchEvent(new dom.window.Event("online"));
  });
  await waitFor(() => assert.equal(screen.getByTestId("status").textContent, "live"), WAIT);
});
