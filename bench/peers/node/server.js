// Peer: Node.js `pg` + `ws` in the thinnest shape, what a team would write
// instead of using Python.
//
// One `pg` client LISTENs on a channel per subscribed table_id (the rows'
// trigger NOTIFYs that channel with the row as JSON, see bench/peers/peer.sql);
// each notification's payload is turned into bytes once and sent to that
// table's clients. A client connects to /ws?table_id=t3 and gets
// {"type":"subscribed"} once the table's LISTEN is in place.
//
//   DATABASE_URL=postgresql://... PORT=8003 node bench/peers/node/server.js
'use strict';

const { Client } = require('pg');
const { WebSocketServer, WebSocket } = require('ws');

const SUBSCRIBED = '{"type":"subscribed"}';

async function main() {
  const listener = new Client({ connectionString: process.env.DATABASE_URL });
  await listener.connect();
  const tables = new Map(); // table_id -> Set of sockets
  const listening = new Map(); // table_id -> Promise of its LISTEN
  let queries = Promise.resolve(); // one query at a time on the listener

  listener.on('notification', (msg) => {
    const clients = tables.get(msg.channel);
    if (!clients) return;
    const data = Buffer.from(msg.payload);
    for (const ws of clients) {
      if (ws.readyState === WebSocket.OPEN) ws.send(data, { binary: false });
    }
  });

  function listen(tableId) {
    let ready = listening.get(tableId);
    if (!ready) {
      ready = queries.then(() => listener.query('LISTEN ' + listener.escapeIdentifier(tableId)));
      queries = ready;
      listening.set(tableId, ready);
    }
    return ready;
  }

  const wss = new WebSocketServer({
    host: '127.0.0.1',
    port: Number(process.env.PORT),
    path: '/ws',
    perMessageDeflate: false,
  });
  wss.on('connection', async (ws, req) => {
    const tableId = new URL(req.url, 'http://x').searchParams.get('table_id');
    if (!tableId) {
      ws.close(1008, 'table_id required');
      return;
    }
    ws.on('error', () => {});
    await listen(tableId);
    let clients = tables.get(tableId);
    if (!clients) {
      clients = new Set();
      tables.set(tableId, clients);
    }
    clients.add(ws);
    ws.on('close', () => clients.delete(ws));
    ws.send(SUBSCRIBED);
  });

  process.on('SIGTERM', () => {
    wss.close();
    for (const ws of wss.clients) ws.terminate();
    listener.end().finally(() => process.exit(0));
  });
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
