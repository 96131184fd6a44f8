/**
 * @broadcaster/client: live Postgres rows from a broadcaster server.
 *
 *     import { createClient } from "@broadcaster/client";
 *     const client = createClient("wss://example.com/ws", { getToken });
 *     const table = client.table("t1");
 *     table.on("change", () => render(table.rows()));
 */

export { createClient } from "./client.js";
export { BroadcasterError } from "./types.js";
export type {
  BroadcasterClient,
  ChangeKind,
  ClientEvents,
  ClientOptions,
  ClientStatus,
  LiveTable,
  ReconnectOptions,
  ResetEvent,
  RowChangeEvent,
  RowDeleteEvent,
  SocketCloseEventLike,
  SocketMessageEventLike,
  SyncedEvent,
  TableChangeEvent,
  TableEvents,
  TableOptions,
  WebSocketConstructor,
  WebSocketLike,
} from "./types.js";
export type { Listener, Unsubscribe } from "./emitter.js";
export type { DeletedRow, Op, Ref, ResetReason, Row, RowData } from "./protocol.js";
