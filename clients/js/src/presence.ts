/**
 * Who is on a table: the presences the server reports (`presence_state`, then
 * `presence_diff`s, in the Phoenix shape), as a state by key with `join`,
 * `leave` and `sync` events like supabase-js. Knows nothing of sockets: the
 * table's subscription (subscriptions.ts) feeds it, and this client's own
 * track/untrack go out as requests (requests.ts).
 */

import { Emitter } from "./emitter.js";
import type { WireMeta, WirePresences } from "./protocol.js";
import type { Presence, PresenceEvents, PresenceMeta, PresenceState } from "./types.js";

type Metas = readonly Presence[];

/** This client's own presence on a table, as last asked for. */
export interface TrackIntent {
  readonly meta: PresenceMeta;
  readonly key: string | undefined;
}

function toPresence(meta: WireMeta): Presence {
  const { phx_ref: presenceRef, ...rest } = meta;
  return Object.freeze({ ...rest, presenceRef });
}

function toState(presences: WirePresences): Map<string, Metas> {
  const state = new Map<string, Metas>();
  for (const [key, { metas }] of Object.entries(presences)) {
    if (metas.length > 0) state.set(key, Object.freeze(metas.map(toPresence)));
  }
  return state;
}

/** Same presence and same meta: nothing to announce. */
function samePresence(a: Presence, b: Presence): boolean {
  return a.presenceRef === b.presenceRef && JSON.stringify(a) === JSON.stringify(b);
}

export class PresenceStore {
  readonly events = new Emitter<PresenceEvents>();
  /** What this client tracks, re-tracked after every reconnect; set and cleared by the client. */
  intent: TrackIntent | null = null;

  private current = new Map<string, Metas>();
  private cache: PresenceState | null = null;
  private stateReceived = false;
  // Diffs received before this subscription's presence_state: the server
  // follows the table before it reads the state, so they are applied after it.
  private early: Array<{ joins: WirePresences; leaves: WirePresences }> = [];

  constructor(readonly tableId: string) {}

  /** True once `presence_state` arrived for the current subscription. */
  get synced(): boolean {
    return this.stateReceived;
  }

  state(): PresenceState {
    if (this.cache === null) this.cache = Object.freeze(Object.fromEntries(this.current));
    return this.cache;
  }

  /** A subscribe was sent: a new presence_state will replace the state (kept until then). */
  beginSubscription(): void {
    this.stateReceived = false;
    this.early = [];
  }

  /**
   * The server's full state: it replaces what is held (which may be stale
   * after a reconnect). Differences are announced as leaves and joins, then
   * the diffs that arrived early are applied, then one `sync` (always: the
   * state is now known, even if empty).
   */
  applyState(presences: WirePresences): void {
    const next = toState(presences);
    const leaves = new Map<string, Metas>();
    const joins = new Map<string, Metas>();
    for (const [key, metas] of this.current) {
      const kept = next.get(key) ?? [];
      const left = metas.filter((meta) => !kept.some((other) => samePresence(meta, other)));
      if (left.length > 0) leaves.set(key, left);
    }
    for (const [key, metas] of next) {
      const held = this.current.get(key) ?? [];
      const joined = metas.filter((meta) => !held.some((other) => samePresence(meta, other)));
      if (joined.length > 0) joins.set(key, joined);
    }
    this.announce(leaves, joins);
    // The announcements moved `current` to the same presences; take the server's order.
    this.current = next;
    this.cache = null;
    this.stateReceived = true;
    const early = this.early;
    this.early = [];
    for (const diff of early) this.applyChanges(toState(diff.leaves), toState(diff.joins));
    this.events.emit("sync", { tableId: this.tableId });
  }

  applyDiff(joins: WirePresences, leaves: WirePresences): void {
    if (!this.stateReceived) {
      this.early.push({ joins, leaves });
      return;
    }
    if (this.applyChanges(toState(leaves), toState(joins))) this.events.emit("sync", { tableId: this.tableId });
  }

  /**
   * Leaves first, then joins: a re-track is a leave of the old meta and a
   * join of the new one under the same ref, and must end with the new one.
   * Announces only what changes the state; true if anything did.
   */
  private applyChanges(leaves: Map<string, Metas>, joins: Map<string, Metas>): boolean {
    const realLeaves = new Map<string, Metas>();
    for (const [key, metas] of leaves) {
      const held = this.current.get(key) ?? [];
      const left = held.filter((meta) => metas.some((other) => other.presenceRef === meta.presenceRef));
      if (left.length > 0) realLeaves.set(key, left);
    }
    const realJoins = new Map<string, Metas>();
    for (const [key, metas] of joins) {
      const held = (this.current.get(key) ?? []).filter(
        (meta) => !(realLeaves.get(key) ?? []).some((other) => other.presenceRef === meta.presenceRef),
      );
      const joined = metas.filter((meta) => !held.some((other) => samePresence(meta, other)));
      if (joined.length > 0) realJoins.set(key, joined);
    }
    return this.announce(realLeaves, realJoins);
  }

  /** Apply leaves (by ref), then joins (replacing a meta of the same ref), emitting an event per key. */
  private announce(leaves: ReadonlyMap<string, Metas>, joins: ReadonlyMap<string, Metas>): boolean {
    const tableId = this.tableId;
    for (const [key, leftPresences] of leaves) {
      const refs = new Set(leftPresences.map((meta) => meta.presenceRef));
      const currentPresences = Object.freeze(
        (this.current.get(key) ?? []).filter((meta) => !refs.has(meta.presenceRef)),
      );
      this.set(key, currentPresences);
      this.events.emit("leave", { tableId, key, currentPresences, leftPresences });
    }
    for (const [key, newPresences] of joins) {
      const refs = new Set(newPresences.map((meta) => meta.presenceRef));
      const currentPresences = this.current.get(key) ?? Object.freeze([]);
      this.set(
        key,
        Object.freeze([...currentPresences.filter((meta) => !refs.has(meta.presenceRef)), ...newPresences]),
      );
      this.events.emit("join", { tableId, key, currentPresences, newPresences });
    }
    return leaves.size > 0 || joins.size > 0;
  }

  private set(key: string, metas: Metas): void {
    if (metas.length === 0) this.current.delete(key);
    else this.current.set(key, metas);
    this.cache = null;
  }
}
