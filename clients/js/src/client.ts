/**
 * The connection: one WebSocket carrying every table subscription of a client,
 * kept alive with heartbeats, re-opened with capped, jittered exponential
 * backoff, authenticated and re-authenticated, and resumed from each table's
 * last cursor so nothing committed while it was down is missed
 * (docs/guarantees.md, "The client's side of the contract").
 */

import { Emitter, type Listener, type Unsubscribe } from "./emitter.js";
import {
  CloseCode,
  parseFrame,
  type ClientMessage,
  type ErrorMessage,
  type Ref,
  type RowData,
  type ServerMessage,
} from "./protocol.js";
import type { TrackIntent } from "./presence.js";
import { TableHandle, TableStore, type TableActions } from "./store.js";
import {
  BroadcasterError,
  type BroadcasterClient,
  type ClientEvents,
  type ClientOptions,
  type ClientStatus,
  type LiveTable,
  type PresenceMeta,
  type TableOptions,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./types.js";

type Timer = ReturnType<typeof setTimeout>;

// WebSocket.OPEN; read as a number because not every implementation puts the
// constants on its instances.
const OPEN = 1;

const DEFAULTS = {
  heartbeatIntervalMs: 25_000,
  heartbeatTimeoutMs: 10_000,
  connectTimeoutMs: 10_000,
  tokenRefreshMarginMs: 30_000,
  unsubscribeDelayMs: 0,
  initialDelayMs: 500,
  maxDelayMs: 30_000,
  jitter: 0.5,
} as const;

// A refreshed token is never requested sooner than this after the last
// `authenticated`, so a server answering with very short lifetimes cannot
// make the client spin.
const MIN_REFRESH_DELAY_MS = 1_000;

// The server's rate limit allows bursts of twice its per-second limit; one
// second is enough for a dropped subscribe to go through.
const RATE_LIMIT_RETRY_MS = 1_000;

// Server errors that say nothing against a track's meta: the same meta is
// still worth re-tracking on the next connection.
const TRANSIENT_ERRORS: ReadonlySet<string> = new Set(["rate_limited", "unavailable"]);

/** Close codes that are part of normal operation and not worth an `error` event. */
const ORDINARY_CLOSES: ReadonlySet<number> = new Set([CloseCode.normal, CloseCode.goingAway, 1005, 1006]);

interface Settings {
  heartbeatIntervalMs: number;
  heartbeatTimeoutMs: number;
  connectTimeoutMs: number;
  tokenRefreshMarginMs: number;
  unsubscribeDelayMs: number;
  initialDelayMs: number;
  maxDelayMs: number;
  jitter: number;
}

/** One WebSocket and the timers that live and die with it. */
interface Connection {
  readonly socket: WebSocketLike;
  open: boolean;
  /** Ref of the latest `auth` sent on it; an `authenticated` for an older one is stale. */
  authRef: Ref | null;
  /** Set by an `error` with code unauthorized / token_expired: the close that follows is explained by it. */
  authFailure: "unauthorized" | "token_expired" | null;
  /** The server has accepted this connection: authenticated, or (without auth) answered anything but an error. */
  healthy: boolean;
  connectTimer: Timer | null;
  heartbeatTimer: ReturnType<typeof setInterval> | null;
  pongTimer: Timer | null;
  refreshTimer: Timer | null;
}

/** The client's one subscription to a table, shared by all its handles. */
interface Subscription {
  readonly tableId: string;
  readonly store: TableStore;
  readonly snapshot: boolean;
  handles: number;
  /** The connection the latest subscribe went out on; null when none is in force. */
  sentOn: Connection | null;
  /**
   * Ref of a subscribe not yet answered with `subscribed`. Until it is, table
   * messages are ignored: they belong to the subscription being replaced (or
   * to one being unsubscribed), not to the catch-up this subscribe starts.
   */
  pendingRef: Ref | null;
  releaseTimer: Timer | null;
  /** Broadcasts and presence changes waiting for the table to be synced on the current connection. */
  queue: PendingRequest[];
  /** The connection a track was last sent on (the server holds a presence for it there); null once untracked or lost. */
  trackedOn: Connection | null;
}

/** A broadcast, track or untrack: sent once the table is synced, settled by the server's answer. */
interface PendingRequest {
  readonly subscription: Subscription;
  /** The answer that settles it: `sent`, `tracked` or `untracked`. */
  readonly answer: "sent" | "tracked" | "untracked";
  readonly build: (ref: Ref) => ClientMessage;
  /** For a track: the intent it sends. */
  readonly intent: TrackIntent | null;
  /** null: answered as expected; otherwise the error it failed with. */
  settle(error: BroadcasterError | null): void;
}

function trackMessage(ref: Ref, tableId: string, intent: TrackIntent): ClientMessage {
  return intent.key === undefined
    ? { type: "track", ref, table_id: tableId, meta: intent.meta }
    : { type: "track", ref, table_id: tableId, meta: intent.meta, key: intent.key };
}

function positive(value: number | undefined, fallback: number): number {
  return typeof value === "number" && Number.isFinite(value) && value >= 0 ? value : fallback;
}

function defaultWebSocket(): WebSocketConstructor | undefined {
  return (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
}

class Client implements BroadcasterClient {
  readonly url: string;

  private readonly WebSocketImpl: WebSocketConstructor;
  private readonly settings: Settings;
  private readonly token: string | undefined;
  private readonly getToken: (() => Promise<string> | string) | undefined;
  private readonly events = new Emitter<ClientEvents>();
  private readonly subscriptions = new Map<string, Subscription>();
  /** Requests sent on the current connection and not answered yet, by ref. */
  private readonly inflight = new Map<Ref, PendingRequest>();

  private currentStatus: ClientStatus = "connecting";
  private connection: Connection | null = null;
  /** True while a token is being fetched for a connection about to be opened. */
  private opening = false;
  private reconnectTimer: Timer | null = null;
  /** Consecutive failed attempts; drives the backoff. Reset once a connection is live. */
  private attempt = 0;
  private hasBeenLive = false;
  /** A static token was refused: only an explicit `reconnectNow()` tries again. */
  private authRejected = false;
  private closed = false;
  private refCounter = 0;

  constructor(url: string, options: ClientOptions = {}) {
    const WebSocketImpl = options.WebSocket ?? defaultWebSocket();
    if (WebSocketImpl === undefined) {
      throw new TypeError(
        "@broadcaster/client: no WebSocket implementation; pass one as options.WebSocket " +
          '(on Node 20: import { WebSocket } from "ws")',
      );
    }
    this.url = url;
    this.WebSocketImpl = WebSocketImpl;
    this.token = options.token;
    this.getToken = options.getToken;
    const reconnect = options.reconnect ?? {};
    this.settings = {
      heartbeatIntervalMs: positive(options.heartbeatIntervalMs, DEFAULTS.heartbeatIntervalMs),
      heartbeatTimeoutMs: positive(options.heartbeatTimeoutMs, DEFAULTS.heartbeatTimeoutMs),
      connectTimeoutMs: positive(options.connectTimeoutMs, DEFAULTS.connectTimeoutMs),
      tokenRefreshMarginMs: positive(options.tokenRefreshMarginMs, DEFAULTS.tokenRefreshMarginMs),
      unsubscribeDelayMs: positive(options.unsubscribeDelayMs, DEFAULTS.unsubscribeDelayMs),
      initialDelayMs: positive(reconnect.initialDelayMs, DEFAULTS.initialDelayMs),
      maxDelayMs: positive(reconnect.maxDelayMs, DEFAULTS.maxDelayMs),
      jitter: Math.min(1, positive(reconnect.jitter, DEFAULTS.jitter)),
    };
    this.attachEnvironment();
    void this.openConnection();
  }

  get status(): ClientStatus {
    return this.currentStatus;
  }

  get isConnected(): boolean {
    return this.currentStatus === "live";
  }

  on<K extends keyof ClientEvents>(event: K, listener: Listener<ClientEvents[K]>): Unsubscribe {
    return this.events.on(event, listener);
  }

  table<TData extends object = RowData, TMeta extends object = PresenceMeta>(
    tableId: string,
    options: TableOptions = {},
  ): LiveTable<TData, TMeta> {
    if (this.closed) throw new BroadcasterError("closed", "the client is closed", { tableId });
    if (typeof tableId !== "string" || tableId === "") {
      throw new TypeError("@broadcaster/client: tableId must be a non-empty string");
    }
    let subscription = this.subscriptions.get(tableId);
    if (subscription === undefined) {
      subscription = {
        tableId,
        store: new TableStore(tableId, this.currentStatus),
        snapshot: options.snapshot ?? true,
        handles: 0,
        sentOn: null,
        pendingRef: null,
        releaseTimer: null,
        queue: [],
        trackedOn: null,
      };
      this.subscriptions.set(tableId, subscription);
    }
    if (subscription.releaseTimer !== null) {
      clearTimeout(subscription.releaseTimer);
      subscription.releaseTimer = null;
    }
    subscription.handles += 1;
    const connection = this.connection;
    if (connection !== null && connection.open && subscription.sentOn !== connection) {
      this.sendSubscribe(connection, subscription);
    }
    const held = subscription;
    // The store holds rows of whatever shape the caller declares; the client
    // cannot check TData, it only relays what the server sent.
    const store = held.store as unknown as TableStore<TData>;
    return new TableHandle<TData, TMeta>(store, () => this.release(held), this.actionsFor(held));
  }

  // -- broadcast and presence ------------------------------------------------

  private actionsFor(subscription: Subscription): TableActions {
    const { tableId, store } = subscription;
    return {
      broadcast: (event, payload, self) =>
        this.request(subscription, "sent", (ref) => ({
          type: "broadcast",
          ref,
          table_id: tableId,
          event,
          payload,
          self,
        })),
      track: (meta, key) => {
        // The intent outlives the promise: whatever happens to this track,
        // the latest meta asked for is tracked again on every new connection.
        const intent: TrackIntent = { meta, key };
        store.presence.intent = intent;
        return this.request(subscription, "tracked", (ref) => trackMessage(ref, tableId, intent), intent);
      },
      untrack: () => {
        store.presence.intent = null;
        // Nothing tracked on this connection (a lost connection took the
        // presence with it) and nothing about to be: nothing to undo.
        if (subscription.trackedOn === null && !subscription.queue.some((r) => r.answer === "tracked")) {
          return Promise.resolve();
        }
        return this.request(subscription, "untracked", (ref) => ({ type: "untrack", ref, table_id: tableId }));
      },
    };
  }

  /**
   * Send a request once its table is synced on the current connection. It
   * fails if that connection (or the attempt to open it) is lost first, and at
   * once when there is no connection, open or opening.
   */
  private request(
    subscription: Subscription,
    answer: PendingRequest["answer"],
    build: (ref: Ref) => ClientMessage,
    intent: TrackIntent | null = null,
  ): Promise<void> {
    return new Promise((resolve, reject) => {
      const { tableId } = subscription;
      if (this.closed || this.subscriptions.get(tableId) !== subscription) {
        const text = this.closed ? "the client is closed" : "the table was released";
        reject(new BroadcasterError("closed", `${text}: ${answerLabel(answer)} not sent`, { tableId }));
        return;
      }
      if (this.connection === null && !this.opening) {
        reject(new BroadcasterError("disconnected", `not connected: ${answerLabel(answer)} not sent`, { tableId }));
        return;
      }
      const request: PendingRequest = {
        subscription,
        answer,
        build,
        intent,
        settle: (error) => (error === null ? resolve() : reject(error)),
      };
      const connection = this.connection;
      if (connection !== null && this.inForce(connection, subscription)) this.dispatch(connection, request);
      else subscription.queue.push(request);
    });
  }

  /** The table is subscribed and synced on `connection`: the server accepts broadcasts and presence for it. */
  private inForce(connection: Connection, subscription: Subscription): boolean {
    return (
      connection.open &&
      this.connection === connection &&
      subscription.sentOn === connection &&
      subscription.pendingRef === null &&
      subscription.store.synced
    );
  }

  private dispatch(connection: Connection, request: PendingRequest): void {
    const ref = this.nextRef();
    const subscription = request.subscription;
    if (request.answer === "tracked") subscription.trackedOn = connection;
    else if (request.answer === "untracked") subscription.trackedOn = null;
    this.inflight.set(ref, request);
    if (!this.send(connection, request.build(ref))) {
      this.inflight.delete(ref);
      // A socket no longer open is closing: its close event is on the way.
      const [code, text] =
        connection.socket.readyState === OPEN
          ? ["send_failed", "could not send"]
          : ["disconnected", "the connection is closing: could not send"];
      request.settle(
        new BroadcasterError(code, `${text} the ${answerLabel(request.answer)}`, {
          tableId: subscription.tableId,
          ref,
        }),
      );
    }
  }

  /**
   * The table is synced on `connection`: track again what this client tracked
   * (the server forgot it with the previous connection), then send what waited.
   */
  private flushRequests(connection: Connection, subscription: Subscription): void {
    const queued = subscription.queue;
    subscription.queue = [];
    const intent = subscription.store.presence.intent;
    // A queued track or untrack is the latest intent already.
    if (intent !== null && subscription.trackedOn !== connection && !queued.some((r) => r.answer !== "sent")) {
      this.dispatch(connection, {
        subscription,
        answer: "tracked",
        build: (ref) => trackMessage(ref, subscription.tableId, intent),
        intent,
        settle: (error) => {
          if (error === null) return;
          subscription.store.fail(error);
          this.emitError(error);
        },
      });
    }
    for (const request of queued) {
      if (this.connection !== connection) break; // Settled by the loss of the connection.
      this.dispatch(connection, request);
    }
  }

  /** Settle every request waiting or unanswered: the connection they belong to is gone. */
  private failRequests(code: string, reason: string): void {
    const pending = [...this.inflight.values()];
    this.inflight.clear();
    for (const subscription of this.subscriptions.values()) {
      pending.push(...subscription.queue);
      subscription.queue = [];
      subscription.trackedOn = null;
    }
    for (const request of pending) {
      const tableId = request.subscription.tableId;
      request.settle(
        new BroadcasterError(code, `${reason}: ${answerLabel(request.answer)} not confirmed`, { tableId }),
      );
    }
  }

  async refreshAuth(): Promise<void> {
    if (this.closed || (this.token === undefined && this.getToken === undefined)) return;
    const connection = this.connection;
    if (connection !== null && connection.open) await this.reauthenticate(connection);
    else this.reconnectNow();
  }

  reconnectNow(): void {
    if (this.closed) return;
    this.authRejected = false;
    if (this.connection !== null || this.opening) return; // Already connected or connecting.
    if (this.reconnectTimer !== null) {
      clearTimeout(this.reconnectTimer);
      this.reconnectTimer = null;
    }
    void this.openConnection();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.detachEnvironment();
    if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    const connection = this.connection;
    this.connection = null;
    if (connection !== null) {
      this.stopTimers(connection);
      closeQuietly(connection.socket, CloseCode.normal);
    }
    for (const subscription of this.subscriptions.values()) {
      if (subscription.releaseTimer !== null) clearTimeout(subscription.releaseTimer);
      subscription.store.connectionLost();
    }
    this.failRequests("closed", "the client was closed");
    this.setStatus("offline");
    this.subscriptions.clear();
  }

  // -- connecting ------------------------------------------------------------

  private async openConnection(): Promise<void> {
    if (this.closed || this.connection !== null || this.opening) return;
    let token: string | undefined;
    if (this.token !== undefined || this.getToken !== undefined) {
      this.opening = true;
      try {
        token = await this.fetchToken();
      } catch (cause) {
        this.opening = false;
        if (this.closed) return;
        this.emitError(new BroadcasterError("token_error", "getToken failed", { cause }));
        this.failRequests("disconnected", "could not connect (getToken failed)");
        this.scheduleReconnect();
        return;
      }
      this.opening = false;
      if (this.closed) return;
    }

    let socket: WebSocketLike;
    try {
      socket = new this.WebSocketImpl(this.url);
    } catch (cause) {
      // A malformed URL throws synchronously; retrying cannot fix it, but
      // giving up silently would be worse, so report and keep backing off.
      this.emitError(new BroadcasterError("connection_failed", `cannot open ${this.url}`, { cause }));
      this.failRequests("disconnected", "could not connect");
      this.scheduleReconnect();
      return;
    }
    const connection: Connection = {
      socket,
      open: false,
      authRef: null,
      authFailure: null,
      healthy: false,
      connectTimer: null,
      heartbeatTimer: null,
      pongTimer: null,
      refreshTimer: null,
    };
    this.connection = connection;
    connection.connectTimer = setTimeout(() => {
      this.abandon(connection, "connect_timeout", `not connected after ${this.settings.connectTimeoutMs} ms`);
    }, this.settings.connectTimeoutMs);
    socket.addEventListener("open", () => this.handleOpen(connection, token));
    socket.addEventListener("message", (event) => this.handleFrame(connection, event.data));
    socket.addEventListener("close", (event) => this.handleClose(connection, event.code, event.reason));
    // Every error is followed by a close, handled there. The listener must
    // still exist: `ws` throws an 'error' event that has no listener.
    socket.addEventListener("error", () => {});
  }

  private async fetchToken(): Promise<string> {
    const token = this.getToken !== undefined ? await this.getToken() : this.token;
    if (typeof token !== "string" || token === "") throw new TypeError("the token is not a non-empty string");
    return token;
  }

  private handleOpen(connection: Connection, token: string | undefined): void {
    if (this.connection !== connection) return;
    connection.open = true;
    clearTimer(connection.connectTimer);
    connection.connectTimer = null;
    // The server handles messages in order, so the subscribes may follow the
    // auth at once instead of waiting a round trip for `authenticated`.
    if (token !== undefined) {
      connection.authRef = this.nextRef();
      this.send(connection, { type: "auth", ref: connection.authRef, token });
    }
    for (const subscription of this.subscriptions.values()) {
      // A table nobody holds any more (waiting for its unsubscribe delay) is
      // not worth resubscribing: its release will simply drop it.
      if (subscription.handles > 0) this.sendSubscribe(connection, subscription);
    }
    connection.heartbeatTimer = setInterval(() => this.ping(connection), this.settings.heartbeatIntervalMs);
    if (token === undefined) this.becomeLive();
  }

  private becomeLive(): void {
    this.hasBeenLive = true;
    this.authRejected = false;
    this.setStatus("live");
  }

  /**
   * The backoff starts over only once the server has accepted a connection,
   * not merely opened it: a proxy that accepts and drops every connection, or
   * a server refusing the token, must not be retried at the initial delay
   * forever.
   */
  private markHealthy(connection: Connection): void {
    if (connection.healthy) return;
    connection.healthy = true;
    this.attempt = 0;
  }

  private sendSubscribe(connection: Connection, subscription: Subscription): void {
    const ref = this.nextRef();
    const { store, tableId } = subscription;
    subscription.sentOn = connection;
    subscription.pendingRef = ref;
    // Presence is always asked for: a presence_state (often empty) and the
    // diffs of a table nobody tracks on cost next to nothing.
    // The last cursor seen wins: resume from it. Without one (first load, or
    // a first load cut short) start from a snapshot again.
    if (store.cursor !== null) {
      store.beginSubscription("resume");
      this.send(connection, { type: "subscribe", ref, table_id: tableId, cursor: store.cursor, presence: true });
    } else if (subscription.snapshot) {
      store.beginSubscription("snapshot");
      this.send(connection, { type: "subscribe", ref, table_id: tableId, snapshot: true, presence: true });
    } else {
      store.beginSubscription("none");
      this.send(connection, { type: "subscribe", ref, table_id: tableId, presence: true });
    }
  }

  private release(subscription: Subscription): void {
    subscription.handles -= 1;
    if (subscription.handles > 0 || this.closed) return;
    // Deferred so that a release followed at once by a new `table()` (React
    // StrictMode, a route change) keeps the subscription and its rows.
    subscription.releaseTimer = setTimeout(() => {
      subscription.releaseTimer = null;
      if (subscription.handles > 0 || this.subscriptions.get(subscription.tableId) !== subscription) return;
      this.subscriptions.delete(subscription.tableId);
      const connection = this.connection;
      if (connection !== null && connection.open && subscription.sentOn === connection) {
        this.send(connection, { type: "unsubscribe", ref: this.nextRef(), table_id: subscription.tableId });
      }
      subscription.sentOn = null;
      subscription.trackedOn = null;
      subscription.store.connectionLost();
      const queued = subscription.queue;
      subscription.queue = [];
      for (const request of queued) {
        const text = `the table was released: ${answerLabel(request.answer)} not sent`;
        request.settle(new BroadcasterError("closed", text, { tableId: subscription.tableId }));
      }
    }, this.settings.unsubscribeDelayMs);
  }

  // -- receiving -------------------------------------------------------------

  private handleFrame(connection: Connection, data: unknown): void {
    if (this.connection !== connection) return;
    if (typeof data !== "string") {
      this.emitError(new BroadcasterError("malformed_frame", "received a binary frame; the protocol is JSON text"));
      return;
    }
    const { messages, malformed } = parseFrame(data);
    if (malformed > 0) {
      this.emitError(new BroadcasterError("malformed_frame", `dropped ${malformed} malformed message(s) in a frame`));
    }
    // Stores announce one `change` per frame, after all of its messages, so
    // a batch of 500 rows re-renders a view once, not 500 times.
    const touched = new Set<TableStore>();
    for (const message of messages) {
      const store = this.handleMessage(connection, message);
      if (store !== null) touched.add(store);
      if (this.connection !== connection) break; // The message ended the connection.
    }
    for (const store of touched) store.flush();
  }

  /** Apply one message; returns the store it changed, if any. */
  private handleMessage(connection: Connection, message: ServerMessage): TableStore | null {
    if (message.type !== "error" && connection.authRef === null) this.markHealthy(connection);
    switch (message.type) {
      case "subscribed": {
        const subscription = this.subscriptions.get(message.table_id);
        if (
          subscription !== undefined &&
          subscription.sentOn === connection &&
          subscription.pendingRef === message.ref
        ) {
          subscription.pendingRef = null;
        }
        return null;
      }
      case "change":
      case "synced":
      case "cursor":
      case "reset": {
        const subscription = this.subscriptions.get(message.table_id);
        if (subscription === undefined || subscription.sentOn !== connection || subscription.pendingRef !== null) {
          return null;
        }
        const store = subscription.store;
        if (message.type === "change") {
          store.applyChange(message);
          // The cursor moves on even when the change itself was a re-send.
          if (message.cursor !== undefined) store.applyCursor(message.cursor);
        } else if (message.type === "synced") {
          // The server accepts broadcasts and presence from now on. What waited
          // goes first, before `synced` listeners can add to it.
          this.flushRequests(connection, subscription);
          store.applySynced(message.cursor);
        } else if (message.type === "cursor") {
          store.applyCursor(message.cursor);
        } else {
          store.applyReset(message.reason);
        }
        return store;
      }
      case "broadcast":
      case "presence_state":
      case "presence_diff": {
        const subscription = this.subscriptions.get(message.table_id);
        if (subscription === undefined || subscription.sentOn !== connection || subscription.pendingRef !== null) {
          return null;
        }
        const store = subscription.store;
        if (message.type === "broadcast") store.applyBroadcast(message.event, message.payload);
        else if (message.type === "presence_state") store.presence.applyState(message.presences);
        else store.presence.applyDiff(message.joins, message.leaves);
        return null;
      }
      case "sent":
      case "tracked":
      case "untracked": {
        const ref = message.ref;
        const request = ref === undefined || ref === null ? undefined : this.inflight.get(ref);
        if (ref === undefined || ref === null || request === undefined || request.answer !== message.type) return null;
        this.inflight.delete(ref);
        request.settle(null);
        return null;
      }
      case "pong":
        // Any pong proves the connection carries traffic now, whichever ping it answers.
        clearTimer(connection.pongTimer);
        connection.pongTimer = null;
        return null;
      case "authenticated":
        // A ref other than the latest auth's answers an older auth; null
        // answers a token given with the upgrade request.
        if (message.ref !== undefined && message.ref !== null && message.ref !== connection.authRef) return null;
        this.markHealthy(connection);
        this.becomeLive();
        this.scheduleRefresh(connection, message.expires_at);
        return null;
      case "error":
        this.handleServerError(connection, message);
        return null;
      case "unsubscribed":
        return null;
    }
  }

  private handleServerError(connection: Connection, message: ErrorMessage): void {
    if (message.code === "unauthorized" || message.code === "token_expired") connection.authFailure = message.code;
    // The answer to a broadcast, track or untrack: it fails that request
    // only; the table's subscription goes on (even when the error names it).
    const ref = message.ref;
    const request = ref === undefined || ref === null ? undefined : this.inflight.get(ref);
    if (ref !== undefined && ref !== null && request !== undefined) {
      this.inflight.delete(ref);
      const presence = request.subscription.store.presence;
      if (request.intent !== null && presence.intent === request.intent && !TRANSIENT_ERRORS.has(message.code)) {
        // The server refuses this meta (too_large, …): do not send it again.
        presence.intent = null;
      }
      request.settle(
        new BroadcasterError(message.code, message.message, { tableId: request.subscription.tableId, ref }),
      );
      return;
    }
    // The subscription the error ends, if any: the one whose subscribe it
    // answers (too_many_subscriptions, forbidden, rate_limited), or the one it
    // names (a refreshed token that no longer allows the table).
    let ended: Subscription | undefined;
    let answeredSubscribe = false;
    for (const subscription of this.subscriptions.values()) {
      if (
        message.ref !== undefined &&
        message.ref !== null &&
        subscription.sentOn === connection &&
        subscription.pendingRef === message.ref
      ) {
        ended = subscription;
        answeredSubscribe = true;
      }
    }
    if (ended === undefined && message.table_id !== undefined) {
      const named = this.subscriptions.get(message.table_id);
      if (named !== undefined && named.sentOn === connection) ended = named;
    }
    const error = new BroadcasterError(message.code, message.message, {
      tableId: ended?.tableId ?? message.table_id,
      ref: message.ref ?? undefined,
    });
    if (ended !== undefined) {
      // Nothing more comes for it on this connection; its rows stay as they
      // were and the next connection subscribes again from its cursor.
      ended.pendingRef = null;
      ended.sentOn = null;
      ended.trackedOn = null;
      ended.store.connectionLost();
      ended.store.fail(error);
      if (!(answeredSubscribe && message.code === "rate_limited")) {
        // No retry on this connection: what waited for the table to sync fails with it.
        const queued = ended.queue;
        ended.queue = [];
        for (const request of queued) request.settle(error);
      }
      if (answeredSubscribe && message.code === "rate_limited") this.retrySubscribe(connection, ended);
    }
    this.emitError(error);
  }

  /** A subscribe dropped by the server's rate limit is sent again a little later. */
  private retrySubscribe(connection: Connection, subscription: Subscription): void {
    setTimeout(() => {
      const current = this.subscriptions.get(subscription.tableId) === subscription;
      if (
        this.connection === connection &&
        connection.open &&
        current &&
        subscription.sentOn === null &&
        subscription.handles > 0
      ) {
        this.sendSubscribe(connection, subscription);
      }
    }, RATE_LIMIT_RETRY_MS);
  }

  // -- losing the connection -------------------------------------------------

  /** Give up on a connection that is not answering: drop it now, without waiting for a closing handshake. */
  private abandon(connection: Connection, code: string, message: string): void {
    if (this.connection !== connection) return;
    this.emitError(new BroadcasterError(code, message));
    const socket = connection.socket;
    try {
      if (typeof socket.terminate === "function") socket.terminate();
      else socket.close();
    } catch {
      // Closing a socket that is still connecting may throw; it is abandoned either way.
    }
    // Its own close event, whenever it comes, is ignored: it is no longer current.
    this.handleClose(connection, 1006, message);
  }

  private handleClose(connection: Connection, code: number, reason: string): void {
    if (this.connection !== connection) return;
    this.connection = null;
    this.stopTimers(connection);
    for (const subscription of this.subscriptions.values()) {
      subscription.sentOn = null;
      subscription.pendingRef = null;
      subscription.store.connectionLost();
    }
    this.failRequests(this.closed ? "closed" : "disconnected", "the connection was lost");
    if (this.closed) return;
    if (!ORDINARY_CLOSES.has(code)) {
      const text = `the server closed the connection with ${code}${reason ? ` (${reason})` : ""}`;
      this.emitError(new BroadcasterError("connection_closed", text, { closeCode: code }));
    }
    const authFailure =
      code === CloseCode.unauthorized
        ? "unauthorized"
        : code === CloseCode.tokenExpired
          ? "token_expired"
          : connection.authFailure;
    if (authFailure !== null && this.getToken === undefined) {
      // A static token would be refused again: stop until told otherwise.
      this.authRejected = true;
      this.setStatus("offline");
      return;
    }
    if (authFailure === "token_expired" && this.attempt === 0) {
      // An expired token is expected: get a fresh one and resume at once. If
      // that one is refused too, the backoff applies from then on.
      this.scheduleReconnect(0);
      return;
    }
    this.scheduleReconnect();
  }

  private scheduleReconnect(delayMs?: number): void {
    if (this.closed || this.reconnectTimer !== null) return;
    const delay = delayMs ?? this.backoff(this.attempt);
    this.attempt += 1;
    this.setStatus(browserOffline() ? "offline" : this.hasBeenLive ? "reconnecting" : "connecting");
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      void this.openConnection();
    }, delay);
  }

  /** Exponential, capped, and jittered so that many clients do not reconnect in lockstep. */
  private backoff(attempt: number): number {
    const { initialDelayMs, maxDelayMs, jitter } = this.settings;
    const base = Math.min(maxDelayMs, initialDelayMs * 2 ** Math.min(attempt, 30));
    return base * (1 - jitter * Math.random());
  }

  private stopTimers(connection: Connection): void {
    clearTimer(connection.connectTimer);
    clearTimer(connection.pongTimer);
    clearTimer(connection.refreshTimer);
    if (connection.heartbeatTimer !== null) clearInterval(connection.heartbeatTimer);
    connection.connectTimer = connection.pongTimer = connection.refreshTimer = connection.heartbeatTimer = null;
  }

  // -- heartbeat and auth refresh --------------------------------------------

  private ping(connection: Connection): void {
    if (this.connection !== connection || !connection.open) return;
    this.send(connection, { type: "ping", ref: this.nextRef() });
    // One deadline for the oldest unanswered ping; any pong clears it.
    if (connection.pongTimer === null) {
      connection.pongTimer = setTimeout(() => {
        this.abandon(connection, "heartbeat_timeout", `no pong within ${this.settings.heartbeatTimeoutMs} ms`);
      }, this.settings.heartbeatTimeoutMs);
    }
  }

  private scheduleRefresh(connection: Connection, expiresAt: number | null): void {
    clearTimer(connection.refreshTimer);
    connection.refreshTimer = null;
    // A static token cannot be refreshed; the server's token_expired close
    // will then stop the client (see handleClose).
    if (expiresAt === null || this.getToken === undefined) return;
    const remaining = expiresAt * 1000 - Date.now();
    const margin = this.settings.tokenRefreshMarginMs;
    // `margin` before expiry; a token living less than twice the margin is
    // refreshed halfway through instead, so a refresh never follows at once.
    const delay = Math.max(MIN_REFRESH_DELAY_MS, remaining > 2 * margin ? remaining - margin : remaining / 2);
    connection.refreshTimer = setTimeout(() => {
      connection.refreshTimer = null;
      void this.reauthenticate(connection);
    }, delay);
  }

  /** Send a fresh token on the open connection; the server answers `authenticated` with its expiry. */
  private async reauthenticate(connection: Connection): Promise<void> {
    let token: string;
    try {
      token = await this.fetchToken();
    } catch (cause) {
      // Not fatal yet: the current token still works until the server
      // closes with 4002, and the reconnect then asks getToken again.
      this.emitError(new BroadcasterError("token_error", "getToken failed", { cause }));
      return;
    }
    if (this.connection !== connection || !connection.open) return;
    connection.authRef = this.nextRef();
    this.send(connection, { type: "auth", ref: connection.authRef, token });
  }

  // -- browsers: wake up on `online` and when the tab becomes visible --------

  private readonly onOnline = (): void => this.wake();

  private readonly onOffline = (): void => {
    if (this.closed) return;
    const connection = this.connection;
    // The socket may or may not have survived; a ping tells within the timeout.
    if (connection !== null && connection.open) this.ping(connection);
    else this.setStatus("offline");
  };

  private readonly onVisibilityChange = (): void => {
    if (typeof document !== "undefined" && document.visibilityState === "visible") this.wake();
  };

  private wake(): void {
    if (this.closed || this.authRejected) return;
    const connection = this.connection;
    // A socket of a tab that slept may be dead without knowing it: probe it
    // now instead of waiting up to a heartbeat interval.
    if (connection !== null && connection.open) this.ping(connection);
    else this.reconnectNow();
  }

  private attachEnvironment(): void {
    if (typeof window !== "undefined" && typeof window.addEventListener === "function") {
      window.addEventListener("online", this.onOnline);
      window.addEventListener("offline", this.onOffline);
    }
    if (typeof document !== "undefined" && typeof document.addEventListener === "function") {
      document.addEventListener("visibilitychange", this.onVisibilityChange);
    }
  }

  private detachEnvironment(): void {
    if (typeof window !== "undefined" && typeof window.removeEventListener === "function") {
      window.removeEventListener("online", this.onOnline);
      window.removeEventListener("offline", this.onOffline);
    }
    if (typeof document !== "undefined" && typeof document.removeEventListener === "function") {
      document.removeEventListener("visibilitychange", this.onVisibilityChange);
    }
  }

  // -- helpers ---------------------------------------------------------------

  /** False if the message could not be sent. */
  private send(connection: Connection, message: ClientMessage): boolean {
    if (connection.socket.readyState !== OPEN) return false; // Whatever is unsent is resent on the next connection.
    try {
      connection.socket.send(JSON.stringify(message));
      return true;
    } catch (cause) {
      this.emitError(new BroadcasterError("send_failed", `could not send ${message.type}`, { cause }));
      return false;
    }
  }

  private nextRef(): number {
    this.refCounter += 1;
    return this.refCounter;
  }

  private setStatus(status: ClientStatus): void {
    if (status === this.currentStatus) return;
    this.currentStatus = status;
    for (const subscription of this.subscriptions.values()) subscription.store.setStatus(status);
    this.events.emit("status", status);
  }

  private emitError(error: BroadcasterError): void {
    this.events.emit("error", error);
  }
}

function answerLabel(answer: PendingRequest["answer"]): string {
  return answer === "sent" ? "broadcast" : answer === "tracked" ? "track" : "untrack";
}

function clearTimer(timer: Timer | null): void {
  if (timer !== null) clearTimeout(timer);
}

function closeQuietly(socket: WebSocketLike, code: number): void {
  try {
    socket.close(code);
  } catch {
    // A socket still connecting may throw on close; it is being dropped anyway.
  }
}

function browserOffline(): boolean {
  return typeof navigator !== "undefined" && navigator.onLine === false;
}

/**
 * Create a client and start connecting. One client holds one connection and
 * any number of table subscriptions; create one per server and share it.
 */
export function createClient(url: string, options: ClientOptions = {}): BroadcasterClient {
  return new Client(url, options);
}
