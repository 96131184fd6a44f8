// supabase-js broadcast between clients connected to two different server processes.
//
// Run by tests/e2e/test_supabase.py with BROADCASTER_URL and BROADCASTER_URL_2:
// two servers on one database, each with its own LISTEN connection, so a
// message can only cross through Postgres.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as helpers from "./helpers.mjs";
import { eventually, within } from "./helpers.mjs";

const supabase = (url, realtime = {}) => helpers.supabase(url, "anon-key", realtime);
const subscribe = async (channel) => (await helpers.subscribe(channel))[0];

for (const vsn of ["2.0.0", "1.0.0"]) {
  test(`vsn ${vsn}: a broadcast reaches a client on the other process, with self and ack`, async () => {
    const topic = `room-${vsn}`;
    const heardByA = [];
    const heardByB = [];
    const a = supabase(process.env.BROADCASTER_URL, { vsn })
      .channel(topic, { config: { broadcast: { self: true, ack: true } } })
      .on("broadcast", { event: "cursor" }, (message) => heardByA.push(message));
    const b = supabase(process.env.BROADCASTER_URL_2, { vsn })
      .channel(topic)
      .on("broadcast", { event: "cursor" }, (message) => heardByB.push(message));
    assert.equal(await subscribe(a), "SUBSCRIBED");
    assert.equal(await subscribe(b), "SUBSCRIBED");

    const sent = await within(
      a.send({ type: "broadcast", event: "cursor", payload: { x: 1, y: 2 } }),
      "the ack",
    );
    assert.equal(sent, "ok");
    await eventually(() => heardByB.length === 1 && heardByA.length === 1, "both deliveries");
    assert.deepEqual(heardByB[0].payload, { x: 1, y: 2 });
    assert.equal(heardByB[0].event, "cursor");

    // Without self, the sender does not hear itself.
    await b.send({ type: "broadcast", event: "cursor", payload: { x: 3 } });
    await eventually(() => heardByA.length === 2, "the delivery to A");
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(heardByB.length, 1);
  });
}
