/**
 * The client: one WebSocket carrying every table subscription, kept alive
 * with heartbeats, re-opened with backoff, authenticated and
 * re-authenticated, and resumed from each table's last cursor so nothing
 * committed while it was down is missed (docs/guarantees.md, "The client's
 * side of the contract"). It owns the connection's life; its subscriptions
 * (subscriptions.ts) and requests (requests.ts) act on whichever connection
 * is current.
 */

import { refreshDelay, TokenSource } from "./auth.js";
import { Reconnector } from "./backoff.js";
import { browserOffline, watchBrowser } from "./browser.js";
import { Connection, isOrdinaryClose, Link } from "./connection.js";
import { Emitter, type Listener, type Unsubscribe } from "./emitter.js";
import {
  CloseCode,
  parseFrame,
  type ErrorMessage,
  type PublishedRow,
  type Row,
  type RowData,
  type ServerMessage,
  type Versioned,
} from "./protocol.js";
import { Requests } from "./requests.js";
import { resolveSettings, type Settings } from "./settings.js";
import { TableHandle, type TableStore } from "./store.js";
import { Subscriptions } from "./subscriptions.js";
import {
  BroadcasterError,
  type BroadcasterClient,
  type ClientEvents,
  type ClientOptions,
  type ClientStatus,
  type LivePublishedTable,
  type LiveRows,
  type LiveTable,
  type PresenceMeta,
  type TableOptions,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./types.js";

function defaultWebSocket(): WebSocketConstructor | undefined {
  return (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
}

class Client implements BroadcasterClient {
  readonly url: string;

  private readonly WebSocketImpl: WebSocketConstructor;
  private readonly settings: Settings;
  private readonly tokens: TokenSource;
  private readonly events = new Emitter<ClientEvents>();
  private readonly link = new Link((error) => this.emitError(error));
  private readonly requests: Requests;
  private readonly subscriptions: Subscriptions;
  private readonly reconnector: Reconnector;
  private readonly unwatchBrowser: () => void;

  private currentStatus: ClientStatus = "connecting";
  private hasBeenLive = false;
  /** A static token was refused: only an explicit `reconnectNow()` tries again. */
  private authRejected = false;

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
    this.tokens = new TokenSource(options.token, options.getToken);
    this.settings = resolveSettings(options);
    this.reconnector = new Reconnector(this.settings);
    this.requests = new Requests(this.link, (subscription) => this.subscriptions.isHeld(subscription));
    this.subscriptions = new Subscriptions(this.link, this.requests, this.settings.unsubscribeDelayMs, this.settings);
    this.unwatchBrowser = watchBrowser({
      online: () => this.wake(),
      offline: () => this.onOffline(),
      visible: () => this.wake(),
    });
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
    return this.hold<Row<TData>, TMeta>(tableId, options);
  }

  publishedTable<TColumns extends object = RowData, TMeta extends object = PresenceMeta>(
    tableId: string,
    options: TableOptions = {},
  ): LivePublishedTable<TColumns, TMeta> {
    return this.hold<PublishedRow<TColumns>, TMeta>(tableId, options);
  }

  private hold<TRow extends Versioned, TMeta extends object>(
    tableId: string,
    options: TableOptions,
  ): LiveRows<TRow, TMeta> {
    if (this.link.closed) throw new BroadcasterError("closed", "the client is closed", { tableId });
    if (typeof tableId !== "string" || tableId === "") {
      throw new TypeError("@broadcaster/client: tableId must be a non-empty string");
    }
    // Checked as unknown: callers in plain JavaScript are not held to the types.
    const filter: unknown = options.filter;
    if (filter !== undefined && (typeof filter !== "string" || filter === "")) {
      throw new TypeError('@broadcaster/client: a filter must be a non-empty string, such as "room_id=eq.5"');
    }
    const held = this.subscriptions.hold(tableId, options.snapshot ?? true, filter ?? null, this.currentStatus);
    // The store holds rows of whatever shape the caller declares; the client
    // cannot check TRow, it only relays what the server sent.
    const store = held.store as unknown as TableStore<TRow>;
    const release = (): void => this.subscriptions.release(held);
    return new TableHandle<TRow, TMeta>(store, release, this.requests.actionsFor(held));
  }

  async refreshAuth(): Promise<void> {
    if (this.link.closed || !this.tokens.used) return;
    const connection = this.link.current;
    if (connection !== null && connection.open) await this.reauthenticate(connection);
    else this.reconnectNow();
  }

  reconnectNow(): void {
    if (this.link.closed) return;
    this.authRejected = false;
    if (this.link.current !== null || this.link.opening) return; // Already connected or connecting.
    this.reconnector.cancel();
    void this.openConnection();
  }

  close(): void {
    if (this.link.closed) return;
    this.link.closed = true;
    this.unwatchBrowser();
    this.reconnector.cancel();
    const connection = this.link.current;
    this.link.current = null;
    if (connection !== null) {
      connection.stopTimers();
      connection.closeQuietly(CloseCode.normal);
    }
    this.subscriptions.closeAll();
    this.requests.failAll("closed", "the client was closed", this.subscriptions.values());
    this.setStatus("offline");
    this.subscriptions.forgetAll();
  }

  // -- connecting ------------------------------------------------------------

  private async openConnection(): Promise<void> {
    const link = this.link;
    if (link.closed || link.current !== null || link.opening) return;
    let token: string | undefined;
    if (this.tokens.used) {
      link.opening = true;
      try {
        token = await this.tokens.fetch();
      } catch (cause) {
        link.opening = false;
        // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition -- close() may have run during the await.
        if (link.closed) return;
        this.emitError(new BroadcasterError("token_error", "getToken failed", { cause }));
        this.requests.failAll("disconnected", "could not connect (getToken failed)", this.subscriptions.values());
        this.scheduleReconnect();
        return;
      }
      link.opening = false;
      // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition -- close() may have run during the await.
      if (link.closed) return;
    }

    let socket: WebSocketLike;
    try {
      socket = new this.WebSocketImpl(this.url);
    } catch (cause) {
      // A malformed URL throws synchronously; retrying cannot fix it, but
      // giving up silently would be worse, so report and keep backing off.
      this.emitError(new BroadcasterError("connection_failed", `cannot open ${this.url}`, { cause }));
      this.requests.failAll("disconnected", "could not connect", this.subscriptions.values());
      this.scheduleReconnect();
      return;
    }
    const connection = new Connection(socket, link.reportError);
    link.current = connection;
    const { connectTimeoutMs } = this.settings;
    connection.startConnectDeadline(connectTimeoutMs, () => {
      this.abandon(connection, "connect_timeout", `not connected after ${connectTimeoutMs} ms`);
    });
    socket.addEventListener("open", () => this.handleOpen(connection, token));
    socket.addEventListener("message", (event) => this.handleFrame(connection, event.data));
    socket.addEventListener("close", (event) => this.handleClose(connection, event.code, event.reason));
    // Every error is followed by a close, handled there. The listener must
    // still exist: `ws` throws an 'error' event that has no listener.
    socket.addEventListener("error", () => {});
  }

  private handleOpen(connection: Connection, token: string | undefined): void {
    if (this.link.current !== connection) return;
    connection.markOpen();
    // The server handles messages in order, so the subscribes may follow the
    // auth at once instead of waiting a round trip for `authenticated`.
    if (token !== undefined) {
      connection.authRef = this.link.nextRef();
      connection.send({ type: "auth", ref: connection.authRef, token });
    }
    this.subscriptions.subscribeAll(connection);
    connection.startHeartbeat(this.settings.heartbeatIntervalMs, () => this.ping(connection));
    if (token === undefined) this.becomeLive();
  }

  private becomeLive(): void {
    this.hasBeenLive = true;
    this.authRejected = false;
    this.setStatus("live");
  }

  /** The server accepted the connection: the backoff starts over (see Reconnector.reset). */
  private markHealthy(connection: Connection): void {
    if (connection.healthy) return;
    connection.healthy = true;
    this.reconnector.reset();
  }

  // -- receiving -------------------------------------------------------------

  private handleFrame(connection: Connection, data: unknown): void {
    if (this.link.current !== connection) return;
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
      if (this.link.current !== connection) break; // The message ended the connection.
    }
    for (const store of touched) store.flush();
  }

  /** Apply one message; returns the store it changed, if any. */
  private handleMessage(connection: Connection, message: ServerMessage): TableStore | null {
    if (message.type !== "error" && connection.authRef === null) this.markHealthy(connection);
    switch (message.type) {
      case "subscribed":
      case "change":
      case "synced":
      case "cursor":
      case "reset":
      case "broadcast":
      case "presence_state":
      case "presence_diff":
        return this.subscriptions.receive(connection, message);
      case "sent":
      case "tracked":
      case "untracked":
        this.requests.answer(message);
        return null;
      case "pong":
        connection.pongReceived();
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
    // A request's refusal is the request's business: its promise rejects,
    // and it is not an `error` event.
    if (this.requests.refuse(message)) return;
    this.emitError(this.subscriptions.end(connection, message));
  }

  // -- losing the connection -------------------------------------------------

  /** Give up on a connection that is not answering: drop it now, without waiting for a closing handshake. */
  private abandon(connection: Connection, code: string, message: string): void {
    if (this.link.current !== connection) return;
    this.emitError(new BroadcasterError(code, message));
    connection.terminate();
    // Its own close event, whenever it comes, is ignored: it is no longer current.
    this.handleClose(connection, 1006, message);
  }

  private handleClose(connection: Connection, code: number, reason: string): void {
    if (this.link.current !== connection) return;
    this.link.current = null;
    connection.stopTimers();
    this.subscriptions.connectionLost();
    const closed = this.link.closed;
    this.requests.failAll(closed ? "closed" : "disconnected", "the connection was lost", this.subscriptions.values());
    if (closed) return;
    if (!isOrdinaryClose(code)) {
      const text = `the server closed the connection with ${code}${reason ? ` (${reason})` : ""}`;
      this.emitError(new BroadcasterError("connection_closed", text, { closeCode: code }));
    }
    const authFailure =
      code === CloseCode.unauthorized
        ? "unauthorized"
        : code === CloseCode.tokenExpired
          ? "token_expired"
          : connection.authFailure;
    if (authFailure !== null && !this.tokens.renewable) {
      // A static token would be refused again: stop until told otherwise.
      this.authRejected = true;
      this.setStatus("offline");
      return;
    }
    if (authFailure === "token_expired" && this.reconnector.attempt === 0) {
      // An expired token is expected: get a fresh one and resume at once. If
      // that one is refused too, the backoff applies from then on.
      this.scheduleReconnect(0);
      return;
    }
    this.scheduleReconnect();
  }

  private scheduleReconnect(delayMs?: number): void {
    if (this.link.closed || this.reconnector.pending) return;
    const delay = this.reconnector.nextDelay(delayMs);
    this.setStatus(browserOffline() ? "offline" : this.hasBeenLive ? "reconnecting" : "connecting");
    this.reconnector.start(delay, () => void this.openConnection());
  }

  // -- heartbeat and auth refresh --------------------------------------------

  private ping(connection: Connection): void {
    if (!this.link.isOpen(connection)) return;
    connection.send({ type: "ping", ref: this.link.nextRef() });
    const timeoutMs = this.settings.heartbeatTimeoutMs;
    connection.awaitPong(timeoutMs, () => {
      this.abandon(connection, "heartbeat_timeout", `no pong within ${timeoutMs} ms`);
    });
  }

  private scheduleRefresh(connection: Connection, expiresAt: number | null): void {
    // A static token cannot be refreshed; the server's token_expired close
    // will then stop the client (see handleClose).
    const delay =
      expiresAt === null || !this.tokens.renewable ? null : refreshDelay(expiresAt, this.settings.tokenRefreshMarginMs);
    connection.scheduleRefresh(delay, () => void this.reauthenticate(connection));
  }

  /** Send a fresh token on the open connection; the server answers `authenticated` with its expiry. */
  private async reauthenticate(connection: Connection): Promise<void> {
    let token: string;
    try {
      token = await this.tokens.fetch();
    } catch (cause) {
      // Not fatal yet: the current token still works until the server
      // closes with 4002, and the reconnect then asks getToken again.
      this.emitError(new BroadcasterError("token_error", "getToken failed", { cause }));
      return;
    }
    if (!this.link.isOpen(connection)) return;
    connection.authRef = this.link.nextRef();
    connection.send({ type: "auth", ref: connection.authRef, token });
  }

  // -- browsers: wake up on `online` and when the tab becomes visible --------

  private onOffline(): void {
    if (this.link.closed) return;
    const connection = this.link.current;
    // The socket may or may not have survived; a ping tells within the timeout.
    if (connection !== null && connection.open) this.ping(connection);
    else this.setStatus("offline");
  }

  private wake(): void {
    if (this.link.closed || this.authRejected) return;
    const connection = this.link.current;
    // A socket of a tab that slept may be dead without knowing it: probe it
    // now instead of waiting up to a heartbeat interval.
    if (connection !== null && connection.open) this.ping(connection);
    else this.reconnectNow();
  }

  // -- helpers ---------------------------------------------------------------

  private setStatus(status: ClientStatus): void {
    if (status === this.currentStatus) return;
    this.currentStatus = status;
    this.subscriptions.setStatus(status);
    this.events.emit("status", status);
  }

  private emitError(error: BroadcasterError): void {
    this.events.emit("error", error);
  }
}

/**
 * Create a client and start connecting. One client holds one connection and
 * any number of table subscriptions; create one per server and share it.
 */
export function createClient(url: string, options: ClientOptions = {}): BroadcasterClient {
  return new Client(url, options);
}
