// @ts-check
/**
 * A scripted WebSocket server (the `ws` package's) for what a real server
 * cannot be made to do on demand: answer auth, re-send old row states, send a
 * reset mid-stream, stop answering pings.
 */

import { once } from "node:events";
import { WebSocketServer } from "ws";
import { within } from "./wait.js";

/** @typedef {Record<string, unknown>} Message */

/**
 * A client message. `ws` hands a frame over as one Buffer unless another binaryType is set.
 * @param {import("ws").RawData} data
 * @returns {Message}
 */
function parseMessage(data) {
  const buffer = Array.isArray(data) ? Buffer.concat(data) : data instanceof ArrayBuffer ? Buffer.from(data) : data;
  /** @type {unknown} */
  const message = JSON.parse(buffer.toString());
  return /** @type {Message} */ (message);
}

export class FakeConnection {
  /** @param {import("ws").WebSocket} socket */
  constructor(socket) {
    this.socket = socket;
    /** @type {Message[]} every message received, in order */
    this.received = [];
    /** @type {{ code: number, reason: string } | null} */
    this.closedWith = null;
    /** @type {Array<() => void>} */
    this.wakers = [];
    this.cursor = 0;
    socket.on("message", (data) => {
      this.received.push(parseMessage(data));
      this.wake();
    });
    socket.on("close", (code, reason) => {
      this.closedWith = { code, reason: String(reason) };
      this.wake();
    });
  }

  wake() {
    for (const waker of this.wakers.splice(0)) waker();
  }

  /**
   * The next received message (after those already taken) matching `predicate`;
   * messages skipped over are consumed.
   * @param {(message: Message) => boolean} [predicate]
   * @param {number} [ms]
   * @returns {Promise<Message>}
   */
  async next(predicate = () => true, ms = 5_000) {
    const find = async () => {
      for (;;) {
        while (this.cursor < this.received.length) {
          const message = /** @type {Message} */ (this.received[this.cursor]);
          this.cursor += 1;
          if (predicate(message)) return message;
        }
        if (this.closedWith !== null) throw new Error(`connection closed (${this.closedWith.code}) while waiting`);
        await new Promise((resolve) => this.wakers.push(() => resolve(undefined)));
      }
    };
    return within(find(), ms, "a message from the client");
  }

  /** @param {string} type @param {number} [ms] */
  nextOfType(type, ms) {
    return this.next((message) => message["type"] === type, ms);
  }

  /** @param {Message | Message[]} frame */
  send(frame) {
    this.socket.send(JSON.stringify(frame));
  }

  /** @param {number} [code] @param {string} [reason] */
  close(code, reason) {
    this.socket.close(code, reason);
  }

  /** Wait until the client closes (or the connection drops). @param {number} [ms] */
  async closed(ms = 5_000) {
    if (this.closedWith === null) await within(once(this.socket, "close"), ms, "the connection to close");
    // Set by the close listener registered in the constructor, which ran first.
    return /** @type {{ code: number, reason: string }} */ (/** @type {unknown} */ (this.closedWith));
  }
}

export class FakeServer {
  /** @param {WebSocketServer} wss */
  constructor(wss) {
    this.wss = wss;
    /** @type {FakeConnection[]} */
    this.connections = [];
    /** @type {Array<() => void>} */
    this.wakers = [];
    /** When true, `ping` messages are answered with `pong` automatically. */
    this.answerPings = true;
    wss.on("connection", (socket) => {
      const connection = new FakeConnection(socket);
      socket.on("message", (data) => {
        const message = parseMessage(data);
        if (this.answerPings && message["type"] === "ping") connection.send({ type: "pong", ref: message["ref"] });
      });
      this.connections.push(connection);
      for (const waker of this.wakers.splice(0)) waker();
    });
    const address = /** @type {import("node:net").AddressInfo} */ (wss.address());
    this.url = `ws://127.0.0.1:${address.port}/ws`;
  }

  static async start() {
    const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
    await within(once(wss, "listening"), 5_000, "the fake server to listen");
    return new FakeServer(wss);
  }

  /**
   * The `index`th connection (0-based), waiting for it if needed.
   * @param {number} index
   * @param {number} [ms]
   * @returns {Promise<FakeConnection>}
   */
  async connection(index, ms = 5_000) {
    const wait = async () => {
      while (this.connections.length <= index) {
        await new Promise((resolve) => this.wakers.push(() => resolve(undefined)));
      }
      return /** @type {FakeConnection} */ (this.connections[index]);
    };
    return within(wait(), ms, `connection #${index + 1}`);
  }

  async close() {
    for (const client of this.wss.clients) client.terminate();
    await new Promise((resolve) => this.wss.close(() => resolve(undefined)));
  }
}

/**
 * A row as the server would send it.
 * @param {string} id
 * @param {number} version
 * @param {Record<string, unknown>} [data]
 * @param {string[]} [enriching]
 */
export function row(id, version, data = {}, enriching = [], tableId = "t1") {
  const at = new Date(1_700_000_000_000 + version).toISOString().replace("Z", "000Z");
  return { id, table_id: tableId, data, enriching_columns: enriching, version, created_at: at, updated_at: at };
}
