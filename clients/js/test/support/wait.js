// @ts-check
/** Bounded waiting: every wait in these tests ends, with a message saying what it waited for. */

import { inspect } from "node:util";

/**
 * Resolve with `promise`, or reject after `ms` with `label`.
 * @template T
 * @param {Promise<T>} promise
 * @param {number} ms
 * @param {string} label
 * @returns {Promise<T>}
 */
export function within(promise, ms, label) {
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${label}`)), ms);
  });
  return /** @type {Promise<T>} */ (Promise.race([promise, timeout])).finally(() => clearTimeout(timer));
}

/**
 * Poll `check` until it returns a truthy value (returned), or fail after `ms`.
 * `describe` is called on failure to say what was seen instead.
 * @template T
 * @param {() => T | Promise<T>} check
 * @param {{ ms?: number, interval?: number, label: string, describe?: () => unknown }} options
 * @returns {Promise<NonNullable<T>>}
 */
export async function eventually(check, { ms = 10_000, interval = 25, label, describe }) {
  const deadline = Date.now() + ms;
  /** @type {unknown} */
  let lastError;
  for (;;) {
    try {
      const value = await check();
      if (value) return /** @type {NonNullable<T>} */ (value);
      lastError = undefined;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) {
      const seen = describe === undefined ? "" : `\nseen: ${JSON.stringify(describe(), null, 1)}`;
      const cause =
        lastError === undefined
          ? ""
          : `\nlast error: ${lastError instanceof Error ? String(lastError) : inspect(lastError)}`;
      throw new Error(`timed out after ${ms} ms waiting for: ${label}${seen}${cause}`);
    }
    await sleep(interval);
  }
}

/** @param {number} ms */
export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
