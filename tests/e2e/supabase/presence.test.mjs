// supabase-js presence across two server processes: state on join, joins, leaves.
//
// Run by tests/e2e/test_supabase.py with BROADCASTER_URL and BROADCASTER_URL_2.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as helpers from "./helpers.mjs";
import { eventually, within } from "./helpers.mjs";

const clients = [];
function supabase(url) {
  const client = helpers.supabase(url);
  clients.push(client);
  return client;
}
const subscribe = async (channel) => (await helpers.subscribe(channel))[0];

test("who is viewing: state on join, joins and leaves across processes", async () => {
  const a = supabase(process.env.BROADCASTER_URL)
    .channel("viewers:t1", { config: { presence: { key: "ada" } } });
  const joinsSeenByA = [];
  a.on("presence", { event: "join" }, ({ key }) => joinsSeenByA.push(key));
  assert.equal(await subscribe(a), "SUBSCRIBED");
  assert.equal(await within(a.track({ name: "Ada" }), "the track"), "ok");

  // B, on the other process, joins later: presence_state already holds Ada.
  const bClient = supabase(process.env.BROADCASTER_URL_2);
  const b = bClient.channel("viewers:t1", { config: { presence: { key: "bob" } } });
  const leavesSeenByB = [];
  b.on("presence", { event: "sync" }, () => {});
  b.on("presence", { event: "leave" }, ({ key }) => leavesSeenByB.push(key));
  assert.equal(await subscribe(b), "SUBSCRIBED");
  await eventually(() => "ada" in b.presenceState(), "Ada in B's state");
  assert.equal(b.presenceState().ada[0].name, "Ada");

  await within(b.track({ name: "Bob" }), "B's track");
  await eventually(() => joinsSeenByA.includes("bob"), "Bob's join seen by A");
  assert.equal(a.presenceState().bob[0].name, "Bob");

  // Ada leaves (her channel is removed): B sees the leave.
  await clients[0].removeChannel(a);
  await eventually(() => leavesSeenByB.includes("ada"), "Ada's leave seen by B");
  assert.ok(!("ada" in b.presenceState()));
});
