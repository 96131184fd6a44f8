/**
 * One WebSocket and the timers that live and die with it (connect deadline,
 * heartbeat, pong deadline, token refresh), and the `Link` through which the
 * client's parts reach whichever connection is current.
 */

import { CloseCode, type ClientMessage, type Ref } from "./protocol.js";
import { BroadcasterError, type WebSocketLike } from "./types.js";

type Timer = ReturnType<typeof setTimeout>;

// WebSocket.OPEN; read as a number because not every implementation puts the
// constants on its instances.
const OPEN = 1;

/** Close codes that are part of normal operation and not worth an `error` event. */
const ORDINARY_CLOSES: ReadonlySet<number> = new Set([CloseCode.normal, CloseCode.goingAway, 1005, 1006]);

export function isOrdinaryClose(code: number): boolean {
  return ORDINARY_CLOSES.has(code);
}

export type AuthFailure = "unauthorized" | "token_expired";

export class Connection {
  open = false;
  /** Ref of the latest `auth` sent on it; an `authenticated` for an older one is stale. */
  authRef: Ref | null = null;
  /** Set by an `error` with code unauthorized / token_expired: the close that follows is explained by it. */
  authFailure: AuthFailure | null = null;
  /** The server has accepted this connection: authenticated, or (without auth) answered anything but an error. */
  healthy = false;

  private connectTimer: Timer | null = null;
  private heartbeatTimer: ReturnType<typeof setInterval> | null = null;
  private pongTimer: Timer | null = null;
  private refreshTimer: Timer | null = null;

  constructor(
    readonly socket: WebSocketLike,
    private readonly reportError: (error: BroadcasterError) => void,
  ) {}

  /** The socket itself is open, whatever the client has seen of it (it may be closing). */
  get writable(): boolean {
    return this.socket.readyState === OPEN;
  }

  /** False if the message could not be sent. */
  send(message: ClientMessage): boolean {
    if (!this.writable) return false; // Whatever is unsent is resent on the next connection.
    try {
      this.socket.send(JSON.stringify(message));
      return true;
    } catch (cause) {
      this.reportError(new BroadcasterError("send_failed", `could not send ${message.type}`, { cause }));
      return false;
    }
  }

  /** Give up on the connection if it is not open within `timeoutMs`. */
  startConnectDeadline(timeoutMs: number, onTimeout: () => void): void {
    this.connectTimer = setTimeout(onTimeout, timeoutMs);
  }

  markOpen(): void {
    this.open = true;
    clearTimer(this.connectTimer);
    this.connectTimer = null;
  }

  startHeartbeat(intervalMs: number, ping: () => void): void {
    this.heartbeatTimer = setInterval(ping, intervalMs);
  }

  /** A ping went out. One deadline for the oldest unanswered ping; any pong clears it. */
  awaitPong(timeoutMs: number, onTimeout: () => void): void {
    if (this.pongTimer === null) this.pongTimer = setTimeout(onTimeout, timeoutMs);
  }

  /** Any pong proves the connection carries traffic now, whichever ping it answers. */
  pongReceived(): void {
    clearTimer(this.pongTimer);
    this.pongTimer = null;
  }

  /** Replace the pending token refresh, if any; with a null delay there is none. */
  scheduleRefresh(delayMs: number | null, refresh: () => void): void {
    clearTimer(this.refreshTimer);
    this.refreshTimer = null;
    if (delayMs === null) return;
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = null;
      refresh();
    }, delayMs);
  }

  stopTimers(): void {
    clearTimer(this.connectTimer);
    clearTimer(this.pongTimer);
    clearTimer(this.refreshTimer);
    if (this.heartbeatTimer !== null) clearInterval(this.heartbeatTimer);
    this.connectTimer = this.pongTimer = this.refreshTimer = this.heartbeatTimer = null;
  }

  /** Drop the socket now, without waiting for a closing handshake. */
  terminate(): void {
    try {
      if (typeof this.socket.terminate === "function") this.socket.terminate();
      else this.socket.close();
    } catch {
      // Closing a socket that is still connecting may throw; it is abandoned either way.
    }
  }

  closeQuietly(code: number): void {
    try {
      this.socket.close(code);
    } catch {
      // A socket still connecting may throw on close; it is being dropped anyway.
    }
  }
}

function clearTimer(timer: Timer | null): void {
  if (timer !== null) clearTimeout(timer);
}

/**
 * What the client shares with its subscriptions and requests: the current
 * connection, whether one is on the way, refs and error reporting. Only the
 * client changes the connection state; the others read it.
 */
export class Link {
  /** The current connection; null between connections and once closed. */
  current: Connection | null = null;
  /** True while a token is being fetched for a connection about to be opened. */
  opening = false;
  closed = false;
  private refCounter = 0;

  constructor(readonly reportError: (error: BroadcasterError) => void) {}

  nextRef(): number {
    this.refCounter += 1;
    return this.refCounter;
  }

  /** `connection` is the current one and open: what is sent on it is read. */
  isOpen(connection: Connection): boolean {
    return this.current === connection && connection.open;
  }
}
