/**
 * Tokens: where the client gets them (a static `token` or `getToken`), and
 * when a fresh one is due on an open connection.
 */

// A refreshed token is never requested sooner than this after the last
// `authenticated`, so a server answering with very short lifetimes cannot
// make the client spin.
const MIN_REFRESH_DELAY_MS = 1_000;

export class TokenSource {
  constructor(
    private readonly token: string | undefined,
    private readonly getToken: (() => Promise<string> | string) | undefined,
  ) {}

  /** Connections authenticate: a `token` or a `getToken` was given. */
  get used(): boolean {
    return this.token !== undefined || this.getToken !== undefined;
  }

  /** A refused or expiring token can be replaced: only `getToken` gives new ones. */
  get renewable(): boolean {
    return this.getToken !== undefined;
  }

  /** The token to send now; `getToken` wins over `token`. */
  async fetch(): Promise<string> {
    const token = this.getToken !== undefined ? await this.getToken() : this.token;
    if (typeof token !== "string" || token === "") throw new TypeError("the token is not a non-empty string");
    return token;
  }
}

/**
 * How long after an `authenticated` to send a fresh token: `marginMs` before
 * `expiresAt` (seconds since the epoch). A token living less than twice the
 * margin is refreshed halfway through instead, so a refresh never follows at
 * once.
 */
export function refreshDelay(expiresAt: number, marginMs: number, now: number = Date.now()): number {
  const remaining = expiresAt * 1000 - now;
  return Math.max(MIN_REFRESH_DELAY_MS, remaining > 2 * marginMs ? remaining - marginMs : remaining / 2);
}
