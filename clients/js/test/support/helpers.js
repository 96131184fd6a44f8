// @ts-check
/** Helpers shared by the tests that run a real server. */

import { WebSocket } from "ws";
import { eventually } from "./wait.js";

/**
 * A `ws` WebSocket class that records every message the client sends and
 * counts the connections it opens.
 * @returns {{ WebSocket: import("../../dist/index.js").WebSocketConstructor, sent: Array<Record<string, unknown>>, opened: { count: number } }}
 */
export function recordingWebSocket() {
  /** @type {Array<Record<string, unknown>>} */
  const sent = [];
  const opened = { count: 0 };
  class RecordingWebSocket extends WebSocket {
    /** @param {string} url */
    constructor(url) {
      super(url);
      opened.count += 1;
    }

    /**
     * The client only sends text; options and callback, if any, are forwarded as received.
     * @param {string} data
     * @param {unknown[]} rest
     */
    send(data, ...rest) {
      /** @type {unknown} */
      const message = JSON.parse(data);
      sent.push(/** @type {Record<string, unknown>} */ (message));
      // @ts-expect-error: forwarded as received.
      super.send(data, ...rest);
    }
  }
  return { WebSocket: RecordingWebSocket, sent, opened };
}

/**
 * What the store holds, in the shape of Backend.tableRows().
 * @param {import("../../dist/index.js").LiveTable} table
 */
export function storeRows(table) {
  return new Map(
    [...table.rows()]
      .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
      .map((r) => [r.id, { data: r.data, enriching_columns: r.enriching_columns }]),
  );
}

/**
 * Wait until the store equals a SELECT of the table.
 * @param {import("../../dist/index.js").LiveTable} table
 * @param {import("./backend.js").Backend} backend
 * @param {{ ms?: number, label?: string }} [options]
 */
export async function converged(table, backend, options = {}) {
  /** @type {unknown} */
  let last = null;
  await eventually(
    async () => {
      const expected = await backend.tableRows(table.tableId);
      const actual = storeRows(table);
      last = { expected: [...expected], actual: [...actual] };
      try {
        assertDeepEqual(actual, expected);
        return true;
      } catch {
        return false;
      }
    },
    {
      ms: options.ms ?? 15_000,
      label: options.label ?? `store ${table.tableId} equals the table`,
      describe: () => last,
    },
  );
}

/**
 * @param {unknown} actual
 * @param {unknown} expected
 */
function assertDeepEqual(actual, expected) {
  if (JSON.stringify(normalize(actual)) !== JSON.stringify(normalize(expected))) throw new Error("different");
}

/** @param {unknown} value @returns {unknown} */
function normalize(value) {
  if (value instanceof Map) {
    /** @type {Map<unknown, unknown>} */
    const map = value;
    return [...map].map(([k, v]) => [k, normalize(v)]);
  }
  if (Array.isArray(value)) return value.map(normalize);
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(
      Object.entries(value)
        .sort(([a], [b]) => (a < b ? -1 : 1))
        .map(([k, v]) => [k, normalize(v)]),
    );
  }
  return value;
}
