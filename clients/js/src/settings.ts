/**
 * The client's timing options with their defaults filled in, read once when
 * the client is created.
 */

import type { ClientOptions } from "./types.js";

export interface Settings {
  heartbeatIntervalMs: number;
  heartbeatTimeoutMs: number;
  connectTimeoutMs: number;
  tokenRefreshMarginMs: number;
  unsubscribeDelayMs: number;
  initialDelayMs: number;
  maxDelayMs: number;
  jitter: number;
}

const DEFAULTS: Settings = {
  heartbeatIntervalMs: 25_000,
  heartbeatTimeoutMs: 10_000,
  connectTimeoutMs: 10_000,
  tokenRefreshMarginMs: 30_000,
  unsubscribeDelayMs: 0,
  initialDelayMs: 500,
  maxDelayMs: 30_000,
  jitter: 0.5,
};

// Options come from plain JavaScript too: anything that is not a usable
// duration falls back to the default rather than breaking the timers.
function positive(value: number | undefined, fallback: number): number {
  return typeof value === "number" && Number.isFinite(value) && value >= 0 ? value : fallback;
}

export function resolveSettings(options: ClientOptions): Settings {
  const reconnect = options.reconnect ?? {};
  return {
    heartbeatIntervalMs: positive(options.heartbeatIntervalMs, DEFAULTS.heartbeatIntervalMs),
    heartbeatTimeoutMs: positive(options.heartbeatTimeoutMs, DEFAULTS.heartbeatTimeoutMs),
    connectTimeoutMs: positive(options.connectTimeoutMs, DEFAULTS.connectTimeoutMs),
    tokenRefreshMarginMs: positive(options.tokenRefreshMarginMs, DEFAULTS.tokenRefreshMarginMs),
    unsubscribeDelayMs: positive(options.unsubscribeDelayMs, DEFAULTS.unsubscribeDelayMs),
    initialDelayMs: positive(reconnect.initialDelayMs, DEFAULTS.initialDelayMs),
    maxDelayMs: positive(reconnect.maxDelayMs, DEFAULTS.maxDelayMs),
    jitter: Math.min(1, positive(reconnect.jitter, DEFAULTS.jitter)),
  };
}
