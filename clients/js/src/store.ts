/**
 * One table's rows as the client holds them, and the handles that share them.
 *
 * The store applies the client's side of the contract (docs/guarantees.md):
 * keep per row key (the change's `id`) the state with the highest `version`,
 * drop anything not newer, remember the version of deleted keys so an older
 * re-sent state is not resurrected, and drop everything on `reset`. It holds
 * rows of any table: `rows`' or a published table's, whose only common field
 * is `version`. The table's subscription
 * (subscriptions.ts) feeds the store; the store knows nothing of sockets.
 */

import { Emitter, type Listener, type Unsubscribe } from "./emitter.js";
import { PresenceStore } from "./presence.js";
import type { ChangeMessage, ResetReason, Row, Versioned } from "./protocol.js";
import {
  BroadcasterError,
  type BroadcastOptions,
  type ChangeKind,
  type ClientStatus,
  type LivePresence,
  type LiveRows,
  type PresenceEvents,
  type PresenceMeta,
  type PresenceState,
  type TableEventsOf,
  type TrackOptions,
} from "./types.js";

/** What a handle asks of the client (which owns the connection) for broadcast and presence. */
export interface TableActions {
  broadcast(event: string, payload: unknown, self: boolean): Promise<void>;
  track(meta: PresenceMeta, key: string | undefined): Promise<void>;
  untrack(): Promise<void>;
}

/** How the current subscription's catch-up is to be labelled. */
export type CatchUp = "snapshot" | "resume" | "none";

export class TableStore<TRow extends Versioned = Row> {
  readonly events = new Emitter<TableEventsOf<TRow>>();
  readonly presence: PresenceStore;
  cursor: string | null = null;
  synced = false;
  status: ClientStatus;

  private readonly byId = new Map<string, TRow>();
  // Versions of deleted ids. Kept until a reset (versions from before a reset
  // may come from another database: see `reset`). Grows with the number of
  // distinct ids deleted while subscribed; an id re-inserted leaves it.
  private readonly deletedVersions = new Map<string, number>();
  private rowsCache: readonly TRow[] | null = null;
  private catchUp: CatchUp = "none";
  // During a snapshot into a store that already holds rows (a first load cut
  // short by a disconnect): the ids the snapshot sent. Rows it did not send
  // were deleted meanwhile and are dropped at `synced`.
  private seen: Set<string> | null = null;
  // What the frame being applied changed; flushed as one `change` event.
  private pending = new Map<string, ChangeKind>();
  private pendingReset = false;

  constructor(
    readonly tableId: string,
    status: ClientStatus,
    /** The filter its subscription is asked with; null for none. */
    readonly filter: string | null = null,
  ) {
    this.status = status;
    this.presence = new PresenceStore(tableId);
  }

  get size(): number {
    return this.byId.size;
  }

  get(id: string): TRow | undefined {
    return this.byId.get(id);
  }

  has(id: string): boolean {
    return this.byId.has(id);
  }

  rows(): readonly TRow[] {
    if (this.rowsCache === null) this.rowsCache = Object.freeze([...this.byId.values()]);
    return this.rowsCache;
  }

  /** A subscribe was sent: what follows until `synced` is its catch-up. */
  beginSubscription(catchUp: CatchUp): void {
    this.catchUp = catchUp;
    this.synced = false;
    this.seen = catchUp === "snapshot" && this.byId.size > 0 ? new Set() : null;
    this.presence.beginSubscription();
  }

  /** The connection carrying the subscription is gone; rows and cursor stay for the resume. */
  connectionLost(): void {
    this.synced = false;
    // Presences stay as they were until the next presence_state replaces them.
    this.presence.beginSubscription();
  }

  applyChange(message: ChangeMessage): void {
    // A change with a cursor is live; without, it belongs to the catch-up.
    const kind: ChangeKind = message.cursor !== undefined ? "live" : this.catchUp === "resume" ? "resume" : "snapshot";
    const id = message.id;
    const version = message.row.version;
    if (kind === "snapshot") this.seen?.add(id);
    const held = this.byId.get(id);
    const known = held?.version ?? this.deletedVersions.get(id);
    // At-least-once delivery: a state not newer than the one held is a re-send.
    if (known !== undefined && version <= known) return;

    if (message.op === "DELETE") {
      this.deletedVersions.set(id, version);
      if (held === undefined) return; // Nothing held, nothing visible changed.
      this.byId.delete(id);
      this.touched(id, kind);
      const old = message.old as Omit<TRow, "version"> | undefined;
      this.events.emit("delete", { tableId: this.tableId, id, previous: held, old, version, kind });
      return;
    }

    // The row as the caller declared its type; the client cannot check it.
    const row = message.row as unknown as TRow;
    this.deletedVersions.delete(id);
    this.byId.set(id, row);
    this.touched(id, kind);
    const old = message.op === "UPDATE" ? (message.old as Omit<TRow, "version"> | undefined) : undefined;
    const event = { tableId: this.tableId, id, row, previous: held, old, op: message.op, kind };
    this.events.emit(held === undefined ? "insert" : "update", event);
  }

  /**
   * Drop everything held: the cursor could not be served, every row follows.
   * Remembered versions go too: after `foreign_cursor` the rows come from
   * another database whose versions may be lower than the ones held.
   */
  applyReset(reason: ResetReason): void {
    this.byId.clear();
    this.deletedVersions.clear();
    this.rowsCache = null;
    this.catchUp = "snapshot";
    this.seen = null;
    this.pending.clear();
    this.pendingReset = true;
    this.events.emit("reset", { tableId: this.tableId, reason });
  }

  applySynced(cursor: string): void {
    if (this.seen !== null) this.sweep(this.seen);
    this.seen = null;
    this.cursor = cursor;
    this.synced = true;
    const resumed = this.catchUp === "resume";
    this.catchUp = "none";
    this.events.emit("synced", { tableId: this.tableId, cursor, resumed });
  }

  applyCursor(cursor: string): void {
    this.cursor = cursor;
  }

  /** End of a frame: one `change` event for everything it changed. */
  flush(): void {
    if (this.pending.size === 0 && !this.pendingReset) return;
    const changed = this.pending;
    const reset = this.pendingReset;
    this.pending = new Map();
    this.pendingReset = false;
    this.events.emit("change", { tableId: this.tableId, changed, reset });
  }

  setStatus(status: ClientStatus): void {
    if (status === this.status) return;
    this.status = status;
    this.events.emit("status", status);
  }

  fail(error: BroadcasterError): void {
    this.events.emit("error", error);
  }

  applyBroadcast(event: string, payload: unknown): void {
    this.events.emit("broadcast", { tableId: this.tableId, event, payload });
  }

  /**
   * Drop the rows a completed snapshot did not contain. The deletion's own
   * version is unknown (a snapshot sends no tombstones), so the event carries
   * the last version held, and nothing is remembered for the id: any later
   * state of it comes from a read after this snapshot, hence is newer.
   */
  private sweep(seen: ReadonlySet<string>): void {
    for (const [id, previous] of [...this.byId]) {
      if (seen.has(id)) continue;
      this.byId.delete(id);
      this.touched(id, "snapshot");
      this.events.emit("delete", {
        tableId: this.tableId,
        id,
        previous,
        old: undefined,
        version: previous.version,
        kind: "snapshot",
      });
    }
  }

  private touched(id: string, kind: ChangeKind): void {
    this.rowsCache = null;
    this.pending.set(id, kind);
  }
}

function closedError(tableId: string): BroadcasterError {
  return new BroadcasterError("closed", "the table handle is closed", { tableId });
}

/** One `client.table()` call's view of a shared store. */
export class TableHandle<TRow extends Versioned = Row, TMeta extends object = PresenceMeta> implements LiveRows<
  TRow,
  TMeta
> {
  readonly presence: LivePresence<TMeta>;
  private isClosed = false;
  // Listeners registered through this handle, removed when it closes.
  private readonly unsubscribers = new Set<Unsubscribe>();
  private readonly closeCallbacks = new Set<() => void>();

  constructor(
    private readonly store: TableStore<TRow>,
    private readonly release: () => void,
    private readonly actions: TableActions,
  ) {
    this.presence = new PresenceHandle<TMeta>(this, store.presence, actions);
  }

  get tableId(): string {
    return this.store.tableId;
  }
  get filter(): string | null {
    return this.store.filter;
  }
  get cursor(): string | null {
    return this.store.cursor;
  }
  get synced(): boolean {
    return this.store.synced;
  }
  get status(): ClientStatus {
    return this.store.status;
  }
  get size(): number {
    return this.store.size;
  }
  get closed(): boolean {
    return this.isClosed;
  }

  get(id: string): TRow | undefined {
    return this.store.get(id);
  }

  has(id: string): boolean {
    return this.store.has(id);
  }

  rows(): readonly TRow[] {
    return this.store.rows();
  }

  on<K extends keyof TableEventsOf<TRow>>(event: K, listener: Listener<TableEventsOf<TRow>[K]>): Unsubscribe {
    if (this.isClosed) return () => {};
    return this.holdListener(this.store.events.on(event, listener));
  }

  broadcast(event: string, payload?: unknown, options: BroadcastOptions = {}): Promise<void> {
    if (this.isClosed) return Promise.reject(closedError(this.tableId));
    if (typeof event !== "string" || event === "") {
      return Promise.reject(new TypeError("@broadcaster/client: a broadcast event must be a non-empty string"));
    }
    return this.actions.broadcast(event, payload === undefined ? null : payload, options.self === true);
  }

  whenSynced(): Promise<void> {
    if (this.store.synced) return Promise.resolve();
    return new Promise((resolve, reject) => {
      if (this.isClosed) {
        reject(new BroadcasterError("closed", "the table handle is closed", { tableId: this.tableId }));
        return;
      }
      const offSynced = this.on("synced", () => {
        offSynced();
        offClosed();
        resolve();
      });
      // `close()` drops every listener registered through this handle, so a
      // close before the sync is seen through this dedicated hook.
      const offClosed = this.onClose(() => {
        offSynced();
        reject(
          new BroadcasterError("closed", "the table handle was closed before it synced", { tableId: this.tableId }),
        );
      });
    });
  }

  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    for (const unsubscribe of [...this.unsubscribers]) unsubscribe();
    for (const callback of [...this.closeCallbacks]) callback();
    this.closeCallbacks.clear();
    this.release();
  }

  /** @internal Tie a listener registered elsewhere (the presence's) to this handle: removed when it closes. */
  holdListener(off: Unsubscribe): Unsubscribe {
    if (this.isClosed) {
      off();
      return () => {};
    }
    const unsubscribe = (): void => {
      off();
      this.unsubscribers.delete(unsubscribe);
    };
    this.unsubscribers.add(unsubscribe);
    return unsubscribe;
  }

  private onClose(callback: () => void): Unsubscribe {
    this.closeCallbacks.add(callback);
    return () => {
      this.closeCallbacks.delete(callback);
    };
  }
}

/** A handle's view of its table's presence; listeners registered through it go when the handle closes. */
class PresenceHandle<TMeta extends object> implements LivePresence<TMeta> {
  constructor(
    private readonly handle: { readonly closed: boolean; holdListener(off: Unsubscribe): Unsubscribe },
    private readonly store: PresenceStore,
    private readonly actions: TableActions,
  ) {}

  get tracked(): TMeta | null {
    return (this.store.intent?.meta ?? null) as TMeta | null;
  }

  get synced(): boolean {
    return this.store.synced;
  }

  // The state holds whatever metas clients tracked; TMeta is the caller's
  // declaration of their shape, which the client cannot check.
  state(): PresenceState<TMeta> {
    return this.store.state() as unknown as PresenceState<TMeta>;
  }

  track(meta: TMeta, options: TrackOptions = {}): Promise<void> {
    if (this.handle.closed) return Promise.reject(closedError(this.store.tableId));
    // Checked as unknown: callers in plain JavaScript are not held to TMeta.
    const value: unknown = meta;
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      return Promise.reject(new TypeError("@broadcaster/client: a presence meta must be a JSON object"));
    }
    const key = options.key;
    if (key !== undefined && (typeof key !== "string" || key === "")) {
      return Promise.reject(new TypeError("@broadcaster/client: a presence key must be a non-empty string"));
    }
    return this.actions.track(meta as PresenceMeta, key);
  }

  untrack(): Promise<void> {
    if (this.handle.closed) return Promise.reject(closedError(this.store.tableId));
    return this.actions.untrack();
  }

  on<K extends keyof PresenceEvents<TMeta>>(event: K, listener: Listener<PresenceEvents<TMeta>[K]>): Unsubscribe {
    if (this.handle.closed) return () => {};
    const events = this.store.events as unknown as Emitter<PresenceEvents<TMeta>>;
    return this.handle.holdListener(events.on(event, listener));
  }
}
