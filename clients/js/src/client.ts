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
import { TableHandle, TableStore } from "./store.js";
import {
  BroadcasterError,
  type BroadcasterClient,
  type ClientEvents,
  type ClientOptions,
  type ClientStatus,
  type LiveTable,
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

  table<TData extends object = RowData>(tableId: string, options: TableOptions = {}): LiveTable<TData> {
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
    return new TableHandle<TData>(store, () => this.release(held));
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
    // The last cursor seen wins: resume from it. Without one (first load, or
    // a first load cut short) start from a snapshot again.
    if (store.cursor !== null) {
      store.beginSubscription("resume");
      this.send(connection, { type: "subscribe", ref, table_id: tableId, cursor: store.cursor });
    } else if (subscription.snapshot) {
      store.beginSubscription("snapshot");
      this.send(connection, { type: "subscribe", ref, table_id: tableId, snapshot: true });
    } else {
      store.beginSubscription("none");
      this.send(connection, { type: "subscribe", ref, table_id: tableId });
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
      subscription.store.connectionLost();
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
          store.applySynced(message.cursor);
        } else if (message.type === "cursor") {
          store.applyCursor(message.cursor);
        } else {
          store.applyReset(message.reason);
        }
        return store;
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
      ended.store.connectionLost();
      ended.store.fail(error);
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

  private send(connection: Connection, message: ClientMessage): void {
    if (connection.socket.readyState !== OPEN) return; // Whatever is unsent is resent on the next connection.
    try {
      connection.socket.send(JSON.stringify(message));
    } catch (cause) {
      this.emitError(new BroadcasterError("send_failed", `could not send ${message.type}`, { cause }));
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
