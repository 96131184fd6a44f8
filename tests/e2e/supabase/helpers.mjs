// What every supabase-js test file here needs: clients, bounded waits, subscribing.
import { after } from "node:test";
import { createClient } from "@supabase/supabase-js";
import WebSocket from "ws";

export const TIMEOUT_MS = 10_000 * Number(process.env.BROADCASTER_TEST_TIMEOUT_SCALE ?? "1");
const clients = [];

after(async () => {
  for (const client of clients) await client.removeAllChannels();
});

// A supabase-js client of the server at `url`; `key` is passed as apikey.
export function supabase(url, key = "anon-key", realtime = {}) {
  const client = createClient(url, key, {
    realtime: { transport: WebSocket, ...realtime },
    auth: { persistSession: false, autoRefreshToken: false },
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
