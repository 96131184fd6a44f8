/** The public types of the core client. */

import type { Unsubscribe } from "./emitter.js";
import type { Op, PublishedRow, Ref, ResetReason, Row, RowData, Versioned } from "./protocol.js";

/**
 * The connection's state:
 * - `connecting`: opening the first connection (never live yet);
 * - `live`: connected (and, with a token, authenticated); subscriptions are served;
 * - `reconnecting`: the connection was lost; waiting for the backoff or opening a new one;
 * - `offline`: not connected and not about to be: the browser reports no
 *   network (the client reconnects on `online`), the client was closed, or the
 *   server refused a token that cannot be replaced (no `getToken`).
 */
export type ClientStatus = "connecting" | "live" | "reconnecting" | "offline";

/** The minimal event shapes the client reads; both browser and `ws` events satisfy them. */
export interface SocketMessageEventLike {
  data: unknown;
}
export interface SocketCloseEventLike {
  code: number;
  reason: string;
}

/**
 * The part of the WebSocket API the client uses: the browser's `WebSocket`
 * and the `ws` package's `WebSocket` both provide it. Listeners are declared
 * with method syntax on purpose, so implementations whose events carry more
 * fields still match.
 */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: "open", listener: () => void): void;
  addEventListener(type: "message", listener: (event: SocketMessageEventLike) => void): void;
  addEventListener(type: "close", listener: (event: SocketCloseEventLike) => void): void;
  // eslint-disable-next-line @typescript-eslint/unified-signatures -- public type: one overload per event, as the client listens.
  addEventListener(type: "error", listener: () => void): void;
  /** `ws` only: drop the TCP connection without a closing handshake. */
  terminate?(): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ReconnectOptions {
  /** Delay before the first reconnection attempt. Default 500 ms. */
  initialDelayMs?: number;
  /** Cap of the exponential backoff. Default 30 000 ms. */
  maxDelayMs?: number;
  /**
   * Fraction of each delay that is randomised, 0 to 1: the delay is drawn
   * uniformly from [delay × (1 − jitter), delay]. Spreads the reconnections of
   * many clients after a server restart. Default 0.5.
   */
  jitter?: number;
}

export interface ClientOptions {
  /** A static token, sent in an `auth` message as the first message of every connection. */
  token?: string;
  /**
   * Called before every connection and before the current token expires (see
   * `tokenRefreshMarginMs`); wins over `token`. Should return a token that is
   * valid now: cache it on your side if fetching one is expensive.
   */
  getToken?: () => Promise<string> | string;
  /**
   * The WebSocket implementation. Default: `globalThis.WebSocket` (browsers,
   * Node 22+). On Node 20 pass the `ws` package's: `import { WebSocket } from "ws"`.
   */
  WebSocket?: WebSocketConstructor;
  /** Interval between application-level pings. Default 25 000 ms. */
  heartbeatIntervalMs?: number;
  /** A ping not answered within this is a dead connection: it is dropped and re-opened. Default 10 000 ms. */
  heartbeatTimeoutMs?: number;
  /** A connection not open within this is abandoned and retried. Default 10 000 ms. */
  connectTimeoutMs?: number;
  /** Backoff between reconnection attempts. */
  reconnect?: ReconnectOptions;
  /** With `getToken`: fetch and send a new token this long before `expires_at`. Default 30 000 ms. */
  tokenRefreshMarginMs?: number;
  /**
   * How long a table nobody holds any more stays subscribed before the
   * `unsubscribe` is sent. A `table()` call within it reuses the subscription
   * and its rows (React StrictMode and route changes unmount and remount).
   * Default 0: unsubscribe on the next timer tick, not synchronously.
   */
  unsubscribeDelayMs?: number;
}

export interface TableOptions {
  /**
   * Load every row of the table first (`snapshot: true` on the first subscribe).
   * Default true. With false, the store only holds rows changed after it
   * subscribed. Resubscriptions always resume from the cursor. Only the first
   * `table()` call for a table decides; later calls share its subscription.
   */
  snapshot?: boolean;
  /**
   * On a published table only: hold only its rows that pass this filter, in
   * Supabase's grammar (`"room_id=eq.5"`; several conditions joined by
   * commas, all required), decided by Postgres. Sent with every subscribe,
   * resumes included. The handles of a table share one subscription, so they
   * must ask for the same filter: another filter while the table is held
   * throws a `filter_conflict` error.
   */
  filter?: string;
}

/** Where a change came from. */
export type ChangeKind =
  /** Part of a snapshot: the first load, or the reload after a `reset`. */
  | "snapshot"
  /** Part of a catch-up from a cursor: what changed while the client was away. */
  | "resume"
  /** A live change, as it happened. */
  | "live";

/** An insert or update of a store whose rows are `TRow`s (see `RowChangeEvent`). */
export interface ChangeEventOf<TRow extends Versioned> {
  tableId: string;
  /** The row's key: `rows`' id, or a published table's primary key as text (`"[5, 1]"` for a composite key). */
  id: string;
  /** The row as the store now holds it. */
  row: TRow;
  /** The state it replaced; undefined for `insert`. */
  previous: TRow | undefined;
  /** The whole row before this change, from the server, for an `UPDATE`; undefined otherwise. */
  old: Omit<TRow, "version"> | undefined;
  /** The server's op. A store `insert` may come from an `UPDATE` of a row it did not hold yet (and vice versa). */
  op: Op;
  kind: ChangeKind;
}

/** A deletion from a store whose rows are `TRow`s (see `RowDeleteEvent`). */
export interface DeleteEventOf<TRow extends Versioned> {
  tableId: string;
  /** The row's key, as in `ChangeEventOf`. */
  id: string;
  /** The state the store held until the deletion. */
  previous: TRow;
  /** The whole row the deletion removed, from the server; undefined for a row missing from a snapshot. */
  old: Omit<TRow, "version"> | undefined;
  /** The version of the deletion. */
  version: number;
  kind: ChangeKind;
}

/** A row of `rows` inserted or updated (`insert` and `update` events of `table()`). */
export type RowChangeEvent<TData extends object = RowData> = ChangeEventOf<Row<TData>>;

/** A row of `rows` deleted (`delete` events of `table()`). */
export type RowDeleteEvent<TData extends object = RowData> = DeleteEventOf<Row<TData>>;

/** A published table's row inserted or updated (`insert` and `update` events of `publishedTable()`). */
export type PublishedChangeEvent<TColumns extends object = RowData> = ChangeEventOf<PublishedRow<TColumns>>;

/** A published table's row deleted (`delete` events of `publishedTable()`). */
export type PublishedDeleteEvent<TColumns extends object = RowData> = DeleteEventOf<PublishedRow<TColumns>>;

export interface ResetEvent {
  tableId: string;
  reason: ResetReason;
}

export interface SyncedEvent {
  tableId: string;
  cursor: string;
  /** True when the catch-up was a resume from a cursor, false for a snapshot or plain subscribe. */
  resumed: boolean;
}

/** Emitted once per frame that changed the store, after its per-row events. */
export interface TableChangeEvent {
  tableId: string;
  /** Every id inserted, updated or deleted by the frame, with the kind of its last change. */
  changed: ReadonlyMap<string, ChangeKind>;
  /** The frame reset the table (its rows were dropped before the changes). */
  reset: boolean;
}

/** A message another client broadcast on the table (`table.on("broadcast", …)`). */
export interface BroadcastEvent {
  tableId: string;
  event: string;
  /** Whatever JSON value the sender passed; null when it passed none. */
  payload: unknown;
}

export interface BroadcastOptions {
  /** Also deliver the message to this client's own `broadcast` listeners (through the server). Default false. */
  self?: boolean;
}

/** The events of a store whose rows are `TRow`s. */
export interface TableEventsOf<TRow extends Versioned> {
  insert: ChangeEventOf<TRow>;
  update: ChangeEventOf<TRow>;
  delete: DeleteEventOf<TRow>;
  reset: ResetEvent;
  synced: SyncedEvent;
  change: TableChangeEvent;
  status: ClientStatus;
  error: BroadcasterError;
  broadcast: BroadcastEvent;
}

/** The events of `table()`'s stores, whose rows are rows of `rows`. */
export type TableEvents<TData extends object = RowData> = TableEventsOf<Row<TData>>;

/** The events of `publishedTable()`'s stores. */
export type PublishedTableEvents<TColumns extends object = RowData> = TableEventsOf<PublishedRow<TColumns>>;

/** What a presence carries: any JSON object, given to `presence.track()`. */
export type PresenceMeta = Record<string, unknown>;

/**
 * One tracked presence as `presence.state()` lists it: the meta given to
 * `track()`, plus `presenceRef`, the server's id for it (each `track()`
 * gets a new one, as in Phoenix presence).
 */
export type Presence<TMeta extends object = PresenceMeta> = TMeta & { readonly presenceRef: string };

/** Every presence on a table, by key; a key has one presence per connection tracking with it. */
export type PresenceState<TMeta extends object = PresenceMeta> = Readonly<Record<string, readonly Presence<TMeta>[]>>;

export interface PresenceJoinEvent<TMeta extends object = PresenceMeta> {
  tableId: string;
  key: string;
  /** The key's presences before the join (empty when the key is new). */
  currentPresences: readonly Presence<TMeta>[];
  /** The presences that joined (or replaced an older meta of theirs). */
  newPresences: readonly Presence<TMeta>[];
}

export interface PresenceLeaveEvent<TMeta extends object = PresenceMeta> {
  tableId: string;
  key: string;
  /** The key's presences after the leave (empty when the key is gone). */
  currentPresences: readonly Presence<TMeta>[];
  /** The presences that left (or whose meta is being replaced). */
  leftPresences: readonly Presence<TMeta>[];
}

export interface PresenceSyncEvent {
  tableId: string;
}

export interface PresenceEvents<TMeta extends object = PresenceMeta> {
  /** The state changed (after the `join`/`leave` events of the change): re-render here. */
  sync: PresenceSyncEvent;
  join: PresenceJoinEvent<TMeta>;
  leave: PresenceLeaveEvent<TMeta>;
}

export interface TrackOptions {
  /**
   * The key to appear under. Default: one key per connection (chosen by the
   * server). Presences of several connections may share a key (a user with
   * two tabs): `state()[key]` then lists each.
   */
  key?: string;
}

/**
 * Who is on a table: every client's tracked presence, kept up to date, and
 * this client's own. Shared by every handle of the table.
 */
export interface LivePresence<TMeta extends object = PresenceMeta> {
  /**
   * Appear on the table with `meta` (a JSON object), or replace the meta this
   * client tracks. Resolves when the server has stored it. Re-tracked
   * automatically after every reconnect until `untrack()`.
   */
  track(meta: TMeta, options?: TrackOptions): Promise<void>;
  /** Stop appearing on the table. Resolves when the server has removed it (at once when it has nothing to remove). */
  untrack(): Promise<void>;
  /** The meta this client tracks (and re-tracks after a reconnect); null when none. */
  readonly tracked: TMeta | null;
  /** True once the server's presence state has arrived for the current subscription. */
  readonly synced: boolean;
  /** Every presence on the table, by key. The same object is returned until it changes. */
  state(): PresenceState<TMeta>;
  on<K extends keyof PresenceEvents<TMeta>>(event: K, listener: (value: PresenceEvents<TMeta>[K]) => void): Unsubscribe;
}

/**
 * A table's rows, of type `TRow`, kept up to date by key. Every
 * `client.table()` or `client.publishedTable()` call returns its own handle
 * onto the one store and subscription per table; `close()` releases the handle
 * (and its listeners) and the last release unsubscribes.
 */
export interface LiveRows<TRow extends Versioned, TMeta extends object = PresenceMeta> {
  readonly tableId: string;
  /** The filter the table's subscription was asked with; null for none. */
  readonly filter: string | null;
  /** The last cursor seen for the table (synced, live change or cursor message); null before the first. */
  readonly cursor: string | null;
  /** True once the current subscription's catch-up is complete; false while (re)subscribing. */
  readonly synced: boolean;
  /** The client's connection status. */
  readonly status: ClientStatus;
  /** Number of rows held. */
  readonly size: number;
  /** True after `close()`. */
  readonly closed: boolean;
  /** The row whose key is `id` (a published table's: its primary key as text, `"[5, 1]"` for a composite key). */
  get(id: string): TRow | undefined;
  has(id: string): boolean;
  /**
   * Every row held, in the order first received. The same array is returned
   * until the rows change, so it can be compared by identity (React).
   */
  rows(): readonly TRow[];
  on<K extends keyof TableEventsOf<TRow>>(event: K, listener: (value: TableEventsOf<TRow>[K]) => void): Unsubscribe;
  /** Resolves once `synced` is true; rejects if the handle is closed first. */
  whenSynced(): Promise<void>;
  /**
   * Send `payload` (any JSON value, up to about 7 KB) to every other client
   * subscribed to the table, on any server process. Waits until the table is
   * synced; resolves when the server has sent it. Rejects with `disconnected`
   * if the connection is lost first (a broadcast is not resent).
   */
  broadcast(event: string, payload?: unknown, options?: BroadcastOptions): Promise<void>;
  /** Who is on the table; this client's own presence. */
  readonly presence: LivePresence<TMeta>;
  /** Release this handle; idempotent. The table is unsubscribed when its last handle is released. */
  close(): void;
}

/** A table of `rows`, kept up to date: `client.table()`. `TData` types each row's `data`. */
export type LiveTable<TData extends object = RowData, TMeta extends object = PresenceMeta> = LiveRows<
  Row<TData>,
  TMeta
>;

/** A published table, kept up to date: `client.publishedTable()`. `TColumns` types each row's columns. */
export type LivePublishedTable<TColumns extends object = RowData, TMeta extends object = PresenceMeta> = LiveRows<
  PublishedRow<TColumns>,
  TMeta
>;

export interface ClientEvents {
  status: ClientStatus;
  error: BroadcasterError;
}

export interface BroadcasterClient {
  readonly url: string;
  readonly status: ClientStatus;
  /** `status === "live"`. */
  readonly isConnected: boolean;
  /** A live store for `tableId`, a table_id of `rows`, sharing the client's one subscription to it. */
  table<TData extends object = RowData, TMeta extends object = PresenceMeta>(
    tableId: string,
    options?: TableOptions,
  ): LiveTable<TData, TMeta>;
  /**
   * A live store for a published table, `schema.table` (docs/publishing.md),
   * whole or by a column's value (`{ filter: "room_id=eq.5" }`). The same
   * subscription as `table()`, with rows typed as the table's columns.
   */
  publishedTable<TColumns extends object = RowData, TMeta extends object = PresenceMeta>(
    tableId: string,
    options?: TableOptions,
  ): LivePublishedTable<TColumns, TMeta>;
  on<K extends keyof ClientEvents>(event: K, listener: (value: ClientEvents[K]) => void): Unsubscribe;
  /** Fetch a token now and authenticate the open connection with it (e.g. after a login change). */
  refreshAuth(): Promise<void>;
  /** Re-open the connection now if it is not live, skipping any backoff delay. */
  reconnectNow(): void;
  /** Close the connection for good; tables keep their last rows but receive nothing more. */
  close(): void;
}

/**
 * Everything reported through `error` events. `code` is a server error code
 * (docs/protocol.md) or one of the client's own:
 * `heartbeat_timeout`, `connect_timeout`, `connection_closed` (an abnormal
 * close; see `closeCode`), `malformed_frame`, `token_error` (getToken threw),
 * `closed` (whenSynced on a closed handle; a request on a closed handle or
 * client), `disconnected` (a broadcast, track or untrack whose connection was
 * lost before the server answered it), `filter_conflict` (thrown by `table()`
 * for a table held with another filter).
 */
export class BroadcasterError extends Error {
  readonly code: string;
  readonly tableId: string | undefined;
  readonly ref: Ref | undefined;
  readonly closeCode: number | undefined;

  constructor(
    code: string,
    message: string,
    details: {
      tableId?: string | undefined;
      ref?: Ref | undefined;
      closeCode?: number | undefined;
      cause?: unknown;
    } = {},
  ) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = "BroadcasterError";
    this.code = code;
    this.tableId = details.tableId;
    this.ref = details.ref;
    this.closeCode = details.closeCode;
  }
}
