/**
 * The client's table subscriptions: one per table however many handles share
 * it, subscribed on every new connection from the table's last cursor (with
 * its filter), released when the last handle closes, and fed the table
 * messages that belong to it.
 */

import { backoffDelay, type BackoffOptions } from "./backoff.js";
import type { Connection, Link } from "./connection.js";
import type {
  BroadcastMessage,
  ChangeMessage,
  ClientMessage,
  CursorMessage,
  ErrorMessage,
  PresenceDiffMessage,
  PresenceStateMessage,
  Ref,
  ResetMessage,
  SubscribedMessage,
  SyncedMessage,
} from "./protocol.js";
import type { PendingRequest, Requests } from "./requests.js";
import { TableStore } from "./store.js";
import { BroadcasterError, type ClientStatus } from "./types.js";

// The server's rate limit allows bursts of twice its per-second limit; one
// second is enough for a dropped subscribe to go through.
const RATE_LIMIT_RETRY_MS = 1_000;

/** Refusals of a subscribe that say "not now": it is sent again later. */
const TRANSIENT_REFUSALS: ReadonlySet<string> = new Set(["rate_limited", "unavailable"]);

/** The client's one subscription to a table, shared by all its handles. */
export interface Subscription {
  readonly tableId: string;
  readonly store: TableStore;
  readonly snapshot: boolean;
  /** Sent with every subscribe (a published table's rows that pass it); null for none. */
  readonly filter: string | null;
  handles: number;
  /** Subscribes answered `unavailable` in a row, since the table last synced: the retry's backoff. */
  refusals: number;
  /** The connection the latest subscribe went out on; null when none is in force. */
  sentOn: Connection | null;
  /**
   * Ref of a subscribe not yet answered with `subscribed`. Until it is, table
   * messages are ignored: they belong to the subscription being replaced (or
   * to one being unsubscribed), not to the catch-up this subscribe starts.
   */
  pendingRef: Ref | null;
  releaseTimer: ReturnType<typeof setTimeout> | null;
  /** Broadcasts and presence changes waiting for the table to be synced on the current connection. */
  queue: PendingRequest[];
  /** The connection a track was last sent on (the server holds a presence for it there); null once untracked or lost. */
  trackedOn: Connection | null;
}

/** The server messages about one table's subscription. */
export type TableMessage =
  | SubscribedMessage
  | ChangeMessage
  | SyncedMessage
  | CursorMessage
  | ResetMessage
  | BroadcastMessage
  | PresenceStateMessage
  | PresenceDiffMessage;

export class Subscriptions {
  private readonly byTable = new Map<string, Subscription>();

  constructor(
    private readonly link: Link,
    private readonly requests: Requests,
    private readonly unsubscribeDelayMs: number,
    private readonly backoff: BackoffOptions,
  ) {}

  values(): IterableIterator<Subscription> {
    return this.byTable.values();
  }

  /** Not released: still the table's subscription. */
  isHeld(subscription: Subscription): boolean {
    return this.byTable.get(subscription.tableId) === subscription;
  }

  /**
   * A new handle on the table: its subscription, created (and subscribed) if
   * there is none. Throws `filter_conflict` if the table is held with another
   * filter: the server holds one subscription per table and connection.
   */
  hold(tableId: string, snapshot: boolean, filter: string | null, status: ClientStatus): Subscription {
    let subscription = this.byTable.get(tableId);
    if (subscription !== undefined && subscription.filter !== filter) {
      if (subscription.handles > 0) {
        const held = subscription.filter === null ? "no filter" : `filter ${JSON.stringify(subscription.filter)}`;
        throw new BroadcasterError(
          "filter_conflict",
          `${tableId} is held with ${held}: close its handles first, or use another client for another filter`,
          { tableId },
        );
      }
      // Nobody holds it any more (its release is pending): the new filter
      // replaces it. The new subscribe replaces it on the server too.
      this.drop(subscription);
      subscription = undefined;
    }
    if (subscription === undefined) {
      subscription = {
        tableId,
        store: new TableStore(tableId, status, filter),
        snapshot,
        filter,
        handles: 0,
        refusals: 0,
        sentOn: null,
        pendingRef: null,
        releaseTimer: null,
        queue: [],
        trackedOn: null,
      };
      this.byTable.set(tableId, subscription);
    }
    if (subscription.releaseTimer !== null) {
      clearTimeout(subscription.releaseTimer);
      subscription.releaseTimer = null;
    }
    subscription.handles += 1;
    const connection = this.link.current;
    if (connection !== null && connection.open && subscription.sentOn !== connection) {
      this.subscribe(connection, subscription);
    }
    return subscription;
  }

  /** A handle closed. */
  release(subscription: Subscription): void {
    subscription.handles -= 1;
    if (subscription.handles > 0 || this.link.closed) return;
    // Deferred so that a release followed at once by a new `table()` (React
    // StrictMode, a route change) keeps the subscription and its rows.
    subscription.releaseTimer = setTimeout(() => {
      subscription.releaseTimer = null;
      if (subscription.handles > 0 || !this.isHeld(subscription)) return;
      const connection = this.link.current;
      if (connection !== null && connection.open && subscription.sentOn === connection) {
        connection.send({ type: "unsubscribe", ref: this.link.nextRef(), table_id: subscription.tableId });
      }
      this.drop(subscription);
    }, this.unsubscribeDelayMs);
  }

  /** Forget a subscription nobody holds: nothing more comes to its store. */
  private drop(subscription: Subscription): void {
    if (subscription.releaseTimer !== null) clearTimeout(subscription.releaseTimer);
    subscription.releaseTimer = null;
    this.byTable.delete(subscription.tableId);
    subscription.sentOn = null;
    subscription.pendingRef = null;
    subscription.trackedOn = null;
    subscription.store.connectionLost();
    this.requests.dropQueued(subscription);
  }

  /** A new connection opened: subscribe every table still held on it. */
  subscribeAll(connection: Connection): void {
    for (const subscription of this.byTable.values()) {
      // A table nobody holds any more (waiting for its unsubscribe delay) is
      // not worth resubscribing: its release will simply drop it.
      if (subscription.handles > 0) this.subscribe(connection, subscription);
    }
  }

  /** Apply one table message; returns the store it changed, if any. */
  receive(connection: Connection, message: TableMessage): TableStore | null {
    const subscription = this.byTable.get(message.table_id);
    if (subscription === undefined || subscription.sentOn !== connection) return null;
    if (message.type === "subscribed") {
      if (subscription.pendingRef === message.ref) subscription.pendingRef = null;
      return null;
    }
    if (subscription.pendingRef !== null) return null;
    const store = subscription.store;
    switch (message.type) {
      case "change":
        store.applyChange(message);
        // The cursor moves on even when the change itself was a re-send.
        if (message.cursor !== undefined) store.applyCursor(message.cursor);
        return store;
      case "synced":
        // The server accepts broadcasts and presence from now on. What waited
        // goes first, before `synced` listeners can add to it.
        subscription.refusals = 0;
        this.requests.flush(connection, subscription);
        store.applySynced(message.cursor);
        return store;
      case "cursor":
        store.applyCursor(message.cursor);
        return store;
      case "reset":
        store.applyReset(message.reason);
        return store;
      case "broadcast":
        store.applyBroadcast(message.event, message.payload);
        return null;
      case "presence_state":
        store.presence.applyState(message.presences);
        return null;
      case "presence_diff":
        store.presence.applyDiff(message.joins, message.leaves);
        return null;
    }
  }

  /**
   * An error that answers no request: end the subscription it is about, if
   * any (the one whose subscribe it answers: too_many_subscriptions,
   * forbidden, bad_filter, rate_limited, unavailable; or the one it names: a
   * refreshed token that no longer allows the table). Returns the error to
   * report.
   */
  end(connection: Connection, message: ErrorMessage): BroadcasterError {
    let ended: Subscription | undefined;
    let answeredSubscribe = false;
    for (const subscription of this.byTable.values()) {
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
      const named = this.byTable.get(message.table_id);
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
      if (answeredSubscribe && TRANSIENT_REFUSALS.has(message.code)) {
        this.retrySubscribe(connection, ended, message.code);
      } else {
        // No retry on this connection: what waited for the table to sync fails with it.
        this.requests.failQueued(ended, error);
      }
    }
    return error;
  }

  /** The connection is gone: nothing is subscribed any more; rows and cursors stay for the resume. */
  connectionLost(): void {
    for (const subscription of this.byTable.values()) {
      subscription.sentOn = null;
      subscription.pendingRef = null;
      subscription.store.connectionLost();
    }
  }

  setStatus(status: ClientStatus): void {
    for (const subscription of this.byTable.values()) subscription.store.setStatus(status);
  }

  /** The client is closing: stores keep their last rows, nothing more comes. */
  closeAll(): void {
    for (const subscription of this.byTable.values()) {
      if (subscription.releaseTimer !== null) clearTimeout(subscription.releaseTimer);
      subscription.store.connectionLost();
    }
  }

  forgetAll(): void {
    this.byTable.clear();
  }

  private subscribe(connection: Connection, subscription: Subscription): void {
    const ref = this.link.nextRef();
    const { store, tableId, filter } = subscription;
    subscription.sentOn = connection;
    subscription.pendingRef = ref;
    // Presence is always asked for: a presence_state (often empty) and the
    // diffs of a table nobody tracks on cost next to nothing. The filter goes
    // with every subscribe: a cursor does not carry it.
    const message: ClientMessage = { type: "subscribe", ref, table_id: tableId, presence: true };
    if (filter !== null) message.filter = filter;
    // The last cursor seen wins: resume from it. Without one (first load, or
    // a first load cut short) start from a snapshot again.
    if (store.cursor !== null) {
      store.beginSubscription("resume");
      message.cursor = store.cursor;
    } else if (subscription.snapshot) {
      store.beginSubscription("snapshot");
      message.snapshot = true;
    } else {
      store.beginSubscription("none");
    }
    connection.send(message);
  }

  /**
   * A subscribe the server refused for now is sent again later: one dropped
   * by its rate limit after a second, one it could not serve (`unavailable`:
   * it could not look a published table up) after the reconnection backoff,
   * growing while the refusals go on.
   */
  private retrySubscribe(connection: Connection, subscription: Subscription, code: string): void {
    let delay = RATE_LIMIT_RETRY_MS;
    if (code === "unavailable") {
      delay = backoffDelay(subscription.refusals, this.backoff);
      subscription.refusals += 1;
    }
    setTimeout(() => {
      if (
        this.link.isOpen(connection) &&
        this.isHeld(subscription) &&
        subscription.sentOn === null &&
        subscription.handles > 0
      ) {
        this.subscribe(connection, subscription);
      }
    }, delay);
  }
}
