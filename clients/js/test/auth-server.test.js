// @ts-check
/**
 * The auth path against the real server, when it has token auth
 * (BROADCASTER_AUTH=jwt with an HS256 secret): short-lived tokens refreshed on
 * the same connection, an expired token replaced by reconnecting, a table the
 * token does not grant refused with `forbidden`. Skipped when the server does
 * not know the `auth` message (auth.test.js covers the path against a
 * scripted server either way).
 */

import assert from "node:assert/strict";
import { createHmac, randomBytes } from "node:crypto";
import { after, before, test } from "node:test";
import { createClient } from "../dist/index.js";
import { Backend } from "./support/backend.js";
import { converged, recordingWebSocket } from "./support/helpers.js";
import { eventually, sleep, within } from "./support/wait.js";

const SECRET = randomBytes(32).toString("hex");

/** @type {Backend} */
let backend;
/** @type {import("./support/backend.js").ServeProcess | null} */
let server = null;
/** Why the tests are skipped, if they are. */
let skipReason = "";
/** @type {import("../dist/index.js").BroadcasterClient[]} */
const clients = [];

/** @param {object} value */
const base64url = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");

/**
 * An HS256 JWT for `table_ids`, expiring `lifetimeSeconds` from now (negative: already expired).
 * @param {number} lifetimeSeconds
 * @param {string[]} [tableIds]
 */
function mint(lifetimeSeconds, tableIds = ["secured"]) {
  const header = base64url({ alg: "HS256", typ: "JWT" });
  const exp = Math.floor(Date.now() / 1000) + lifetimeSeconds;
  const payload = base64url({ sub: "user-1", table_ids: tableIds, exp });
  const signature = createHmac("sha256", SECRET).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${signature}`;
}

before(async () => {
  backend = await Backend.create();
  try {
    server = await backend.serve({ env: { BROADCASTER_AUTH: "jwt", BROADCASTER_JWT_SECRET: SECRET } });
  } catch (error) {
    skipReason = `the server did not start with BROADCASTER_AUTH=jwt: ${String(error).split("\n")[0]}`;
    return;
  }
  // A server without auth answers the auth message with unknown_type.
  const probe = createClient(server.wsUrl, { WebSocket: recordingWebSocket().WebSocket, token: mint(60) });
  /** @type {string[]} */
  const errors = [];
  probe.on("error", (e) => errors.push(e.code));
  let answered = false;
  try {
    await eventually(() => probe.status === "live" || errors.length > 0, { label: "the probe's answer" });
    answered = probe.status === "live" && errors.length === 0;
  } finally {
    probe.close();
  }
  if (!answered) skipReason = `the server does not implement auth (${errors.join(", ")})`;
});

after(async () => {
  for (const client of clients) client.close();
  // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition -- unset if before() failed.
  await backend?.close();
});

/** @param {import("node:test").TestContext} t */
function serverOrSkip(t) {
  if (server === null || skipReason !== "") {
    t.skip(skipReason);
    return null;
  }
  return server;
}

test("short-lived tokens are refreshed on the same connection; rows keep flowing past the first expiry", async (t) => {
  const running = serverOrSkip(t);
  if (running === null) return;
  const recorder = recordingWebSocket();
  let minted = 0;
  const client = createClient(running.wsUrl, {
    WebSocket: recorder.WebSocket,
    getToken: () => {
      minted += 1;
      return mint(3);
    },
    tokenRefreshMarginMs: 1_500,
  });
  clients.push(client);
  /** @type {string[]} */
  const errors = [];
  client.on("error", (e) => errors.push(e.code));
  const table = client.table("secured");
  await within(table.whenSynced(), 10_000, "synced");
  await backend.query(`INSERT INTO rows (id, table_id) VALUES ('a1', 'secured')`);
  await eventually(() => table.has("a1"), { label: "a live row" });

  // Past the first token's expiry (3 s): still the same connection.
  await sleep(4_500);
  await backend.query(`INSERT INTO rows (id, table_id) VALUES ('a2', 'secured')`);
  await eventually(() => table.has("a2"), { label: "a live row after the first expiry" });
  assert.equal(recorder.opened.count, 1, "no reconnect");
  assert.ok(minted >= 3, `getToken called ${minted} times`);
  assert.ok(recorder.sent.filter((m) => m["type"] === "auth").length >= 3);
  assert.deepEqual(errors, []);
  assert.equal(client.status, "live");
  await converged(table, backend);
});

test("an expired token: token_expired, then a fresh token and a resumed subscription", async (t) => {
  const running = serverOrSkip(t);
  if (running === null) return;
  const recorder = recordingWebSocket();
  let calls = 0;
  const client = createClient(running.wsUrl, {
    WebSocket: recorder.WebSocket,
    getToken: () => {
      calls += 1;
      return calls === 1 ? mint(-60) : mint(600);
    },
    reconnect: { initialDelayMs: 30_000 },
  });
  clients.push(client);
  /** @type {string[]} */
  const errors = [];
  client.on("error", (e) => errors.push(`${e.code}${e.closeCode ? ` ${e.closeCode}` : ""}`));
  const table = client.table("secured");
  await within(table.whenSynced(), 10_000, "synced after the fresh token");
  assert.ok(errors.includes("token_expired"), JSON.stringify(errors));
  assert.ok(errors.includes("connection_closed 4002"), JSON.stringify(errors));
  assert.equal(recorder.opened.count, 2);
  assert.equal(client.status, "live");
});

test("a table the token does not grant is refused with forbidden; the others work", async (t) => {
  const running = serverOrSkip(t);
  if (running === null) return;
  const client = createClient(running.wsUrl, { WebSocket: recordingWebSocket().WebSocket, token: mint(600) });
  clients.push(client);
  const allowed = client.table("secured");
  const refused = client.table("not-granted");
  /** @type {import("../dist/index.js").BroadcasterError[]} */
  const tableErrors = [];
  refused.on("error", (e) => tableErrors.push(e));
  await within(allowed.whenSynced(), 10_000, "the granted table");
  await eventually(() => tableErrors.length > 0, { label: "forbidden" });
  assert.equal(tableErrors[0]?.code, "forbidden");
  assert.equal(tableErrors[0].tableId, "not-granted");
  assert.equal(refused.synced, false);
});
