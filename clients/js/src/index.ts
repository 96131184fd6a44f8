/**
 * @broadcaster/client: live Postgres rows from a broadcaster server.
 *
 *     import { createClient } from "@broadcaster/client";
 *     const client = createClient("wss://example.com/ws", { getToken });
 *     const table = client.table("t1");
 *     table.on("change", () => render(table.rows()));
 *     table.on("broadcast", ({ event, payload }) => console.log(event, payload));
 *     await table.presence.track({ name: "Ada" });
 *     const room = client.publishedTable("public.messages", { filter: "room_id=eq.5" });
 */

export { createClient } from "./client.js";
export { BroadcasterError } from "./types.js";
export type {
  BroadcastEvent,
  BroadcastOptions,
  BroadcasterClient,
  ChangeEventOf,
  ChangeKind,
  ClientEvents,
  ClientOptions,
  ClientStatus,
  DeleteEventOf,
  LivePresence,
  LivePublishedTable,
  LiveRows,
  LiveTable,
  Presence,
  PresenceEvents,
  PresenceJoinEvent,
  PresenceLeaveEvent,
  PresenceMeta,
  PresenceState,
  PresenceSyncEvent,
  PublishedChangeEvent,
  PublishedDeleteEvent,
  PublishedTableEvents,
  ReconnectOptions,
  ResetEvent,
  RowChangeEvent,
  RowDeleteEvent,
  SocketCloseEventLike,
  SocketMessageEventLike,
  SyncedEvent,
  TableChangeEvent,
  TableEvents,
  TableEventsOf,
  TableOptions,
  TrackOptions,
  WebSocketConstructor,
  WebSocketLike,
} from "./types.js";
export type { Listener, Unsubscribe } from "./emitter.js";
export type { DeletedRow, OldRow, Op, PublishedRow, Ref, ResetReason, Row, RowData, Versioned } from "./protocol.js";
