/**
 * @broadcaster/client: live Postgres rows from a broadcaster server.
 *
 *     import { createClient } from "@broadcaster/client";
 *     const client = createClient("wss://example.com/ws", { getToken });
 *     const table = client.table("t1");
 *     table.on("change", () => render(table.rows()));
 *     table.on("broadcast", ({ event, payload }) => console.log(event, payload));
 *     await table.presence.track({ name: "Ada" });
 */

export { createClient } from "./client.js";
export { BroadcasterError } from "./types.js";
export type {
  BroadcastEvent,
  BroadcastOptions,
  BroadcasterClient,
  ChangeKind,
  ClientEvents,
  ClientOptions,
  ClientStatus,
  LivePresence,
  LiveTable,
  Presence,
  PresenceEvents,
  PresenceJoinEvent,
  PresenceLeaveEvent,
  PresenceMeta,
  PresenceState,
  PresenceSyncEvent,
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
  TrackOptions,
  WebSocketConstructor,
  WebSocketLike,
} from "./types.js";
export type { Listener, Unsubscribe } from "./emitter.js";
export type { DeletedRow, OldRow, Op, Ref, ResetReason, Row, RowData } from "./protocol.js";
