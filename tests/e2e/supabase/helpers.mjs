// What every supabase-js test file here needs: clients, bounded waits, subscribing,
// collecting payloads, signing tokens.
import { after } from "node:test";
import { createHmac } from "node:crypto";
import { createClient } from "@supabase/supabase-js";
import WebSocket from "ws";

export const TIMEOUT_MS = 10_000 * Number(process.env.BROADCASTER_TEST_TIMEOUT_SCALE ?? "1");
const clients = [];

after(async () => {
  for (const client of clients) await client.removeAllChannels();
});

// A supabase-js client of the server at `url`; `key` is passed as apikey;
// `options` are createClient's others (such as accessToken).
export function supabase(url, key = "anon-key", realtime = {}, options = {}) {
  const client = createClient(url, key, {
    realtime: { transport: WebSocket, ...realtime },
    ...(options.accessToken ? {} : { auth: { persistSession: false, autoRefreshToken: false } }),
    ...options,
  });
  clients.push(client);
  return client;
}

export function within(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), TIMEOUT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export async function eventually(predicate, what) {
  await within(
    (async () => {
      while (!predicate()) await new Promise((resolve) => setTimeout(resolve, 20));
    })(),
    what,
  );
}

// Subscribe; resolve with [status, error] once the channel settles. Every
// status the channel reports later is appended to channel.statuses.
export function subscribe(channel) {
  channel.statuses = [];
  return within(
    new Promise((resolve) => {
      channel.subscribe((status, error) => {
        channel.statuses.push(status);
        if (status !== "CLOSED") resolve([status, error]);
      });
    }),
    "the channel to settle",
  );
}

// Collects payloads; next(n) resolves with the first n, once they are here.
export function collector() {
  const seen = [];
  const waiters = [];
  return {
    seen,
    push(payload) {
      seen.push(payload);
      for (const waiter of [...waiters]) waiter();
    },
    next(count, what = "changes") {
      return within(
        new Promise((resolve) => {
          const check = () => {
            if (seen.length >= count) {
              waiters.splice(waiters.indexOf(check), 1);
              resolve(seen.slice(0, count));
            }
          };
          waiters.push(check);
          check();
        }),
        what,
      );
    },
  };
}

// An HS256 JWT of `claims`, signed with the server's BROADCASTER_JWT_SECRET.
export function signed(claims) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const body = `${encode({ alg: "HS256", typ: "JWT" })}.${encode(claims)}`;
  const signature = createHmac("sha256", process.env.JWT_SECRET).update(body).digest("base64url");
  return `${body}.${signature}`;
}
