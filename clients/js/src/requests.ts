/**
 * Broadcasts, tracks and untracks: each waits until its table is synced on
 * the current connection, is then sent with a ref, and is settled by the
 * server's answer to that ref (`sent`, `tracked`, `untracked` or an error) or
 * failed when the connection is lost first. There is no per-request timeout:
 * a connection that stops answering is found by the heartbeat, and losing it
 * fails everything in flight.
 */

import type { Connection, Link } from "./connection.js";
import type { TrackIntent } from "./presence.js";
import type { ClientMessage, DoneMessage, ErrorMessage, Ref } from "./protocol.js";
import type { TableActions } from "./store.js";
import type { Subscription } from "./subscriptions.js";
import { BroadcasterError } from "./types.js";

/** The answer that settles a request. */
export type Answer = DoneMessage["type"];

/** A broadcast, track or untrack: sent once the table is synced, settled by the server's answer. */
export interface PendingRequest {
  readonly subscription: Subscription;
  readonly answer: Answer;
  readonly build: (ref: Ref) => ClientMessage;
  /** For a track: the intent it sends. */
  readonly intent: TrackIntent | null;
  /** null: answered as expected; otherwise the error it failed with. */
  settle(error: BroadcasterError | null): void;
}

// Server errors that say nothing against a track's meta: the same meta is
// still worth re-tracking on the next connection.
const TRANSIENT_ERRORS: ReadonlySet<string> = new Set(["rate_limited", "unavailable"]);

function trackMessage(ref: Ref, tableId: string, intent: TrackIntent): ClientMessage {
  return intent.key === undefined
    ? { type: "track", ref, table_id: tableId, meta: intent.meta }
    : { type: "track", ref, table_id: tableId, meta: intent.meta, key: intent.key };
}

/** What the request is called in error messages. */
export function answerLabel(answer: Answer): string {
  return answer === "sent" ? "broadcast" : answer === "tracked" ? "track" : "untrack";
}

export class Requests {
  /** Requests sent on the current connection and not answered yet, by ref. */
  private readonly inflight = new Map<Ref, PendingRequest>();

  constructor(
    private readonly link: Link,
    /** The subscription is still the client's (not released, the client not closed). */
    private readonly isHeld: (subscription: Subscription) => boolean,
  ) {}

  /** What a table's handles call to broadcast and track on it. */
  actionsFor(subscription: Subscription): TableActions {
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
   * The table is synced on `connection`: track again what this client tracked
   * (the server forgot it with the previous connection), then send what waited.
   */
  flush(connection: Connection, subscription: Subscription): void {
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
          this.link.reportError(error);
        },
      });
    }
    for (const request of queued) {
      if (this.link.current !== connection) break; // Settled by the loss of the connection.
      this.dispatch(connection, request);
    }
  }

  /** Settle every request waiting or unanswered: the connection they belong to is gone. */
  failAll(code: string, reason: string, subscriptions: Iterable<Subscription>): void {
    const pending = [...this.inflight.values()];
    this.inflight.clear();
    for (const subscription of subscriptions) {
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

  /** Fail what waits for the table to sync: it will not sync on this connection. */
  failQueued(subscription: Subscription, error: BroadcasterError): void {
    const queued = subscription.queue;
    subscription.queue = [];
    for (const request of queued) request.settle(error);
  }

  /** The table was released: what waited for it is never sent. */
  dropQueued(subscription: Subscription): void {
    const queued = subscription.queue;
    subscription.queue = [];
    for (const request of queued) {
      const text = `the table was released: ${answerLabel(request.answer)} not sent`;
      request.settle(new BroadcasterError("closed", text, { tableId: subscription.tableId }));
    }
  }

  /** `sent`, `tracked` or `untracked`: the request with that ref succeeded. */
  answer(message: DoneMessage): void {
    const ref = message.ref;
    const request = ref === undefined || ref === null ? undefined : this.inflight.get(ref);
    if (ref === undefined || ref === null || request === undefined || request.answer !== message.type) return;
    this.inflight.delete(ref);
    request.settle(null);
  }

  /**
   * An error answering a request fails that request only; the table's
   * subscription goes on (even when the error names it). False if the error
   * answers no request.
   */
  refuse(message: ErrorMessage): boolean {
    const ref = message.ref;
    const request = ref === undefined || ref === null ? undefined : this.inflight.get(ref);
    if (ref === undefined || ref === null || request === undefined) return false;
    this.inflight.delete(ref);
    const presence = request.subscription.store.presence;
    if (request.intent !== null && presence.intent === request.intent && !TRANSIENT_ERRORS.has(message.code)) {
      // The server refuses this meta (too_large, …): do not send it again.
      presence.intent = null;
    }
    request.settle(new BroadcasterError(message.code, message.message, { tableId: request.subscription.tableId, ref }));
    return true;
  }

  /**
   * Send a request once its table is synced on the current connection. It
   * fails if that connection (or the attempt to open it) is lost first, and at
   * once when there is no connection, open or opening.
   */
  private request(
    subscription: Subscription,
    answer: Answer,
    build: (ref: Ref) => ClientMessage,
    intent: TrackIntent | null = null,
  ): Promise<void> {
    return new Promise((resolve, reject) => {
      const { tableId } = subscription;
      if (this.link.closed || !this.isHeld(subscription)) {
        const text = this.link.closed ? "the client is closed" : "the table was released";
        reject(new BroadcasterError("closed", `${text}: ${answerLabel(answer)} not sent`, { tableId }));
        return;
      }
      if (this.link.current === null && !this.link.opening) {
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
      const connection = this.link.current;
      if (connection !== null && this.inForce(connection, subscription)) this.dispatch(connection, request);
      else subscription.queue.push(request);
    });
  }

  /** The table is subscribed and synced on `connection`: the server accepts broadcasts and presence for it. */
  private inForce(connection: Connection, subscription: Subscription): boolean {
    return (
      this.link.isOpen(connection) &&
      subscription.sentOn === connection &&
      subscription.pendingRef === null &&
      subscription.store.synced
    );
  }

  private dispatch(connection: Connection, request: PendingRequest): void {
    const ref = this.link.nextRef();
    const subscription = request.subscription;
    if (request.answer === "tracked") subscription.trackedOn = connection;
    else if (request.answer === "untracked") subscription.trackedOn = null;
    this.inflight.set(ref, request);
    if (!connection.send(request.build(ref))) {
      this.inflight.delete(ref);
      // A socket no longer open is closing: its close event is on the way.
      const [code, text] = connection.writable
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
}
