/** A minimal typed event emitter: no dependency, works in browsers and Node alike. */

export type Listener<T> = (value: T) => void;

/** Removes the listener it was returned for; calling it again does nothing. */
export type Unsubscribe = () => void;

/**
 * Report a listener's exception without letting it break the caller: the
 * client is in the middle of applying a frame and must finish it. Browsers
 * (and Node 22+) log it like an uncaught error via `reportError`; elsewhere it
 * is rethrown from a fresh task so it still surfaces as uncaught.
 */
function reportListenerError(error: unknown): void {
  const report = (globalThis as { reportError?: (error: unknown) => void }).reportError;
  if (typeof report === "function") {
    report(error);
    return;
  }
  setTimeout(() => {
    throw error;
  }, 0);
}

export class Emitter<Events extends object> {
  // Sets keep insertion order and make removal O(1); a listener added twice is
  // registered once, like EventTarget.
  private readonly listeners = new Map<keyof Events, Set<Listener<never>>>();

  on<K extends keyof Events>(event: K, listener: Listener<Events[K]>): Unsubscribe {
    let set = this.listeners.get(event);
    if (set === undefined) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(listener);
    return () => {
      set.delete(listener);
    };
  }

  emit<K extends keyof Events>(event: K, value: Events[K]): void {
    const set = this.listeners.get(event);
    if (set === undefined || set.size === 0) return;
    // Copy: a listener may unsubscribe itself or others while we iterate.
    for (const listener of [...set]) {
      try {
        (listener as Listener<Events[K]>)(value);
      } catch (error) {
        reportListenerError(error);
      }
    }
  }
}
