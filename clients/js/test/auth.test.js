// @ts-check
/**
 * The auth message path, against a scripted server (the real server does not
 * implement auth yet): auth first, subscribes right behind it, refresh before
 * expiry on the same connection, token_expired → fresh token and resume,
 * unauthorized with a static token → offline.
 */

import assert from "node:assert/strict";
import { afterEach, beforeEach, test } from "node:test";
import { WebSocket } from "ws";
import { createClient } from "../dist/index.js";
import { FakeServer } from "./support/fake-server.js";
import { eventually, sleep } from "./support/wait.js";

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

/** @param {import("../dist/index.js").ClientOptions} options */
function connect(options) {
  const client = createClient(server.url, {
    WebSocket,
    reconnect: { initialDelayMs: 20, maxDelayMs: 100, jitter: 0 },
    ...options,
  });
  clients.push(client);
  return client;
}

/** A getToken that hands out tok-1, tok-2, … and counts its calls. */
function tokenSource() {
  const source = {
    calls: 0,
    getToken: () => {
      source.calls += 1;
      return Promise.resolve(`tok-${source.calls}`);
    },
  };
  return source;
}

const nowSeconds = () => Date.now() / 1000;

test("without a token no auth message is sent", async () => {
  const client = connect({});
  client.table("t1");
  const connection = await server.connection(0);
  const first = await connection.next();
  assert.equal(first["type"], "subscribe");
  await eventually(() => client.status === "live", { label: "live" });
});

test("with a token the first message is auth, and subscribes follow without waiting for the answer", async () => {
  const client = connect({ token: "secret" });
  client.table("t1");
  client.table("t2");
  const connection = await server.connection(0);
  const auth = await connection.next();
  assert.deepEqual({ ...auth, ref: 0 }, { type: "auth", ref: 0, token: "secret" });
  assert.equal((await connection.next())["type"], "subscribe");
  assert.equal((await connection.next())["type"], "subscribe");
  // Not live until the server accepted the token.
  assert.equal(client.status, "connecting");
  connection.send({ type: "authenticated", ref: auth["ref"], expires_at: null });
  await eventually(() => client.status === "live", { label: "live after authenticated" });
});

test("getToken: a new token is sent on the same connection before expires_at", async () => {
  const tokens = tokenSource();
  const client = connect({ getToken: tokens.getToken, tokenRefreshMarginMs: 1_000 });
  client.table("t1");
  const connection = await server.connection(0);
  const auth = await connection.nextOfType("auth");
  assert.equal(auth["token"], "tok-1");
  const sentAt = Date.now();
  connection.send({ type: "authenticated", ref: auth["ref"], expires_at: nowSeconds() + 3 });
  await eventually(() => client.status === "live", { label: "live" });

  // Expires in 3 s, margin 1 s: refreshed about 2 s later.
  const refresh = await connection.nextOfType("auth", 5_000);
  const after = Date.now() - sentAt;
  assert.equal(refresh["token"], "tok-2");
  assert.notEqual(refresh["ref"], auth["ref"]);
  assert.ok(after >= 1_700 && after < 3_500, `refreshed after ${after} ms`);
  connection.send({ type: "authenticated", ref: refresh["ref"], expires_at: null });
  await sleep(300);
  assert.equal(server.connections.length, 1, "the refresh did not reconnect");
  assert.equal(client.status, "live");
  assert.equal(tokens.calls, 2);
});

test("token_expired: a fresh token and an immediate reconnect that resumes from the cursor", async () => {
  const tokens = tokenSource();
  // A long backoff: the reconnect after token_expired must not wait for it.
  const client = connect({ getToken: tokens.getToken, reconnect: { initialDelayMs: 30_000, jitter: 0 } });
  /** @type {string[]} */
  const errors = [];
  client.on("error", (e) => errors.push(e.code));
  const table = client.table("t1");

  const first = await server.connection(0);
  const auth = await first.nextOfType("auth");
  first.send({ type: "authenticated", ref: auth["ref"], expires_at: nowSeconds() + 3600 });
  const subscribe = await first.nextOfType("subscribe");
  first.send([
    { type: "subscribed", ref: subscribe["ref"], table_id: "t1" },
    { type: "synced", table_id: "t1", cursor: "c1" },
  ]);
  await table.whenSynced();

  first.send({ type: "error", code: "token_expired", message: "the token expired" });
  first.close(4002, "token expired");
  const second = await server.connection(1, 2_000);
  const reauth = await second.next();
  assert.equal(reauth["type"], "auth");
  assert.equal(reauth["token"], "tok-2");
  const resubscribe = await second.next();
  assert.equal(resubscribe["type"], "subscribe");
  assert.equal(resubscribe["cursor"], "c1");
  second.send({ type: "authenticated", ref: reauth["ref"], expires_at: null });
  await eventually(() => client.status === "live", { label: "live again" });
  assert.ok(errors.includes("token_expired"));
});

test("unauthorized with a static token: offline, no retries", async () => {
  const client = connect({ token: "bad" });
  /** @type {string[]} */
  const errors = [];
  client.on("error", (e) => errors.push(`${e.code}${e.closeCode ? ` ${e.closeCode}` : ""}`));
  client.table("t1");
  const connection = await server.connection(0);
  const auth = await connection.nextOfType("auth");
  connection.send({ type: "error", ref: auth["ref"], code: "unauthorized", message: "no" });
  connection.close(4001, "unauthorized");
  await eventually(() => client.status === "offline", { label: "offline" });
  await sleep(300);
  assert.equal(server.connections.length, 1);
  assert.deepEqual(errors, ["unauthorized", "connection_closed 4001"]);

  // An explicit reconnectNow() tries again.
  client.reconnectNow();
  await server.connection(1, 2_000);
});

test("unauthorized with getToken: retried with a new token, with backoff", async () => {
  const tokens = tokenSource();
  connect({ getToken: tokens.getToken, reconnect: { initialDelayMs: 50, maxDelayMs: 1_000, jitter: 0 } });
  /** @type {number[]} */
  const openedAt = [];
  server.wss.on("connection", (socket) => {
    openedAt.push(Date.now());
    socket.once("message", () => socket.close(4001, "unauthorized"));
  });
  await eventually(() => openedAt.length >= 4, { ms: 5_000, label: "four attempts" });
  const gaps = openedAt.slice(1).map((at, i) => at - /** @type {number} */ (openedAt[i]));
  assert.ok(/** @type {number} */ (gaps[2]) > /** @type {number} */ (gaps[0]) * 2, `backoff grows: ${gaps.join(", ")}`);
  const tokensSeen = server.connections.slice(0, 3).map((c) => c.received[0]?.["token"]);
  assert.deepEqual(tokensSeen, ["tok-1", "tok-2", "tok-3"]);
});

test("refreshAuth() re-authenticates the open connection now", async () => {
  const tokens = tokenSource();
  const client = connect({ getToken: tokens.getToken });
  const connection = await server.connection(0);
  const auth = await connection.nextOfType("auth");
  connection.send({ type: "authenticated", ref: auth["ref"], expires_at: null });
  await eventually(() => client.status === "live", { label: "live" });
  await client.refreshAuth();
  assert.equal((await connection.nextOfType("auth"))["token"], "tok-2");
});

test("a getToken that throws is reported and retried", async () => {
  let calls = 0;
  const client = connect({
    getToken: () => {
      calls += 1;
      if (calls === 1) throw new Error("token service down");
      return "ok";
    },
  });
  /** @type {string[]} */
  const errors = [];
  client.on("error", (e) => errors.push(e.code));
  const connection = await server.connection(0, 2_000);
  assert.equal((await connection.nextOfType("auth"))["token"], "ok");
  assert.deepEqual(errors, ["token_error"]);
});
