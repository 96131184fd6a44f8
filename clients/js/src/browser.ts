/**
 * Browser signals worth acting on before the backoff or the next heartbeat
 * would: the network coming back (`online`), going (`offline`), and a tab
 * becoming visible again, whose socket may have died while it slept. Nothing
 * is installed where there is no `window` or `document` (Node).
 */

export interface BrowserSignals {
  online(): void;
  offline(): void;
  /** The document became visible. */
  visible(): void;
}

/** Listen for the signals; returns the function that stops listening. */
export function watchBrowser(signals: BrowserSignals): () => void {
  const onOnline = (): void => signals.online();
  const onOffline = (): void => signals.offline();
  const onVisibilityChange = (): void => {
    if (typeof document !== "undefined" && document.visibilityState === "visible") signals.visible();
  };
  if (typeof window !== "undefined" && typeof window.addEventListener === "function") {
    window.addEventListener("online", onOnline);
    window.addEventListener("offline", onOffline);
  }
  if (typeof document !== "undefined" && typeof document.addEventListener === "function") {
    document.addEventListener("visibilitychange", onVisibilityChange);
  }
  return () => {
    if (typeof window !== "undefined" && typeof window.removeEventListener === "function") {
      window.removeEventListener("online", onOnline);
      window.removeEventListener("offline", onOffline);
    }
    if (typeof document !== "undefined" && typeof document.removeEventListener === "function") {
      document.removeEventListener("visibilitychange", onVisibilityChange);
    }
  };
}

/** The browser says there is no network; `navigator.onLine` can be wrong, so it only labels the status. */
export function browserOffline(): boolean {
  // Node 21+ has a `navigator` without `onLine`: only an explicit false means offline.
  return typeof navigator !== "undefined" && (navigator as { onLine?: boolean }).onLine === false;
}
