// @ts-check
/**
 * A real broadcaster server and Postgres for the tests, started the way a user
 * starts them (`python -m broadcaster serve`, see tests/support/process.py).
 *
 * With BROADCASTER_TEST_DATABASE_URL set (a server where databases may be
 * created), each Backend creates a fresh database there, migrates it with
 * `python -m broadcaster migrate` and drops it at the end. Without it, the
 * server starts an embedded Postgres in a temporary BROADCASTER_DATA_DIR and
 * the tests connect over its Unix socket (the DSN is parsed from the banner).
 *
 * BROADCASTER_PYTHON overrides the interpreter (default: the repository's
 * .venv). Every wait is bounded.
 */

import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { eventually, within } from "./wait.js";

const REPO_ROOT = fileURLToPath(new URL("../../../../", import.meta.url));
export const PYTHON = process.env["BROADCASTER_PYTHON"] ?? join(REPO_ROOT, ".venv", "bin", "python");
const ADMIN_URL = process.env["BROADCASTER_TEST_DATABASE_URL"];

/** The environment of a child process: ours without DATABASE_URL, plus `extra`. */
/** @param {Record<string, string>} extra */
function environment(extra) {
  /** @type {Record<string, string>} */
  const env = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (key !== "DATABASE_URL" && value !== undefined) env[key] = value;
  }
  return { ...env, PYTHONUNBUFFERED: "1", ...extra };
}

/**
 * Run `python -m broadcaster ARGS` to completion.
 * @param {string[]} args
 * @param {Record<string, string>} env
 */
async function runBroadcaster(args, env) {
  const child = spawn(PYTHON, ["-m", "broadcaster", ...args], { cwd: REPO_ROOT, env: environment(env) });
  let output = "";
  child.stdout.on("data", (/** @type {Buffer} */ chunk) => (output += chunk.toString()));
  child.stderr.on("data", (/** @type {Buffer} */ chunk) => (output += chunk.toString()));
  /** @type {unknown[]} */
  const exited = await within(once(child, "exit"), 60_000, `broadcaster ${args.join(" ")}`);
  const [code] = /** @type {[number | null, NodeJS.Signals | null]} */ (exited);
  if (code !== 0) throw new Error(`broadcaster ${args.join(" ")} exited ${String(code)}:\n${output}`);
}

/** A running `broadcaster serve`. */
export class ServeProcess {
  /** @param {import("node:child_process").ChildProcessWithoutNullStreams} child */
  constructor(child) {
    this.child = child;
    this.log = "";
    this.wsUrl = "";
    this.port = 0;
    /** @type {string | null} */
    this.embeddedDsn = null;
    child.stderr.on("data", (/** @type {Buffer} */ chunk) => (this.log += chunk.toString()));
  }

  /** Read stdout until the banner names the WebSocket URL. */
  async readBanner() {
    let stdout = "";
    const banner = new Promise((resolve, reject) => {
      const onData = (/** @type {Buffer} */ chunk) => {
        stdout += chunk.toString();
        this.log += chunk.toString();
        const dsn = /embedded Postgres ready: (\S+)/.exec(stdout);
        if (dsn !== null) this.embeddedDsn = dsn[1] ?? null;
        const serving = /serving on (\S+) \(WebSocket (ws:\/\/\S+)\)/.exec(stdout);
        if (serving !== null) {
          this.child.stdout.off("data", onData);
          this.wsUrl = serving[2] ?? "";
          this.port = Number(new URL(this.wsUrl).port);
          // Keep draining stdout so the child never blocks on a full pipe.
          this.child.stdout.on("data", (/** @type {Buffer} */ more) => (this.log += more.toString()));
          resolve(undefined);
        }
      };
      this.child.stdout.on("data", onData);
      this.child.once("exit", (code) => reject(new Error(`serve exited early (${code}):\n${this.log}`)));
    });
    await within(banner, 90_000, "the serve banner");
  }

  get running() {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** SIGKILL: the process dies at once, without closing its clients. */
  async kill() {
    if (!this.running) return;
    const exited = once(this.child, "exit");
    this.child.kill("SIGKILL");
    await within(exited, 10_000, "serve to die");
  }

  /** SIGTERM (graceful: clients get 1001), SIGKILL if it lingers. */
  async stop() {
    if (!this.running) return;
    const exited = once(this.child, "exit");
    this.child.kill("SIGTERM");
    try {
      await within(exited, 15_000, "serve to stop");
    } catch {
      await this.kill();
    }
  }
}

export class Backend {
  /**
   * @param {{ mode: "url", adminUrl: string, databaseUrl: string, databaseName: string } | { mode: "embedded", dataDir: string }} where
   */
  constructor(where) {
    this.where = where;
    /** @type {string | null} libpq URL the tests connect to; known after the first serve in embedded mode. */
    this.dsn = where.mode === "url" ? where.databaseUrl : null;
    /** @type {ServeProcess[]} */
    this.servers = [];
    /** @type {pg.Client | null} */
    this.db = null;
    /** @type {Array<() => Promise<void>>} */
    this.cleanups = [];
  }

  /** A fresh database (or embedded data directory) for one test file. */
  static async create() {
    if (ADMIN_URL === undefined || ADMIN_URL === "") {
      const dataDir = await mkdtemp(join(tmpdir(), "broadcaster-js-"));
      return new Backend({ mode: "embedded", dataDir });
    }
    const databaseName = `broadcaster_js_${randomBytes(6).toString("hex")}`;
    const databaseUrl = await createMigratedDatabase(ADMIN_URL, databaseName);
    return new Backend({ mode: "url", adminUrl: ADMIN_URL, databaseUrl, databaseName });
  }

  /**
   * Start `broadcaster serve` on `port` (0: any free port) against this backend's database,
   * or against `databaseUrl` when given.
   * `env` adds to the server's environment.
   * @param {{ port?: number, databaseUrl?: string, args?: string[], env?: Record<string, string> }} [options]
   */
  async serve(options = {}) {
    const { port = 0, databaseUrl, args = [] } = options;
    // Servers with token auth require it by default when DATABASE_URL is set;
    // these tests read without tokens (auth.test.js covers the auth path).
    /** @type {Record<string, string>} */
    const env = { BROADCASTER_AUTH: "none", ...options.env };
    if (databaseUrl !== undefined) env["DATABASE_URL"] = databaseUrl;
    else if (this.where.mode === "url") env["DATABASE_URL"] = this.where.databaseUrl;
    else env["BROADCASTER_DATA_DIR"] = this.where.dataDir;
    const child = spawn(
      PYTHON,
      ["-m", "broadcaster", "serve", "--port", String(port), "--close-timeout", "1", "--log-level", "warning", ...args],
      { cwd: REPO_ROOT, env: environment(env) },
    );
    const server = new ServeProcess(child);
    this.servers.push(server);
    await server.readBanner();
    if (this.dsn === null && server.embeddedDsn !== null) this.dsn = server.embeddedDsn;
    return server;
  }

  /** A pg client on the backend's database (serve first, in embedded mode). */
  async connect() {
    if (this.db !== null) return this.db;
    if (this.dsn === null) throw new Error("no database yet: call serve() first");
    const client = new pg.Client({ connectionString: this.dsn });
    // An idle connection's error (Postgres stopping at the end, or the embedded
    // Postgres closing its connections when a server stops) is not a test
    // failure: the next query connects again.
    client.on("error", () => {
      if (this.db === client) this.db = null;
    });
    await within(client.connect(), 10_000, "connecting to Postgres");
    this.db = client;
    return client;
  }

  /**
   * Run SQL on the backend's database.
   * @param {string} sql
   * @param {unknown[]} [params]
   */
  async query(sql, params = []) {
    const db = await this.connect();
    return within(db.query(sql, params), 10_000, sql);
  }

  /**
   * Publish tables (`broadcaster publish`, docs/publishing.md) on the backend's database.
   * @param {string[]} tables
   */
  async publish(...tables) {
    if (this.dsn === null) throw new Error("no database yet: call serve() first");
    await runBroadcaster(["publish", ...tables], { DATABASE_URL: this.dsn });
  }

  /**
   * The rows of a table as the store would hold them, keyed by id.
   * @param {string} tableId
   * @returns {Promise<Map<string, { data: unknown, enriching_columns: string[] }>>}
   */
  async tableRows(tableId) {
    /** @typedef {{ id: string, data: unknown, enriching_columns: string[] }} DbRow */
    const result = /** @type {import("pg").QueryResult<DbRow>} */ (
      await this.query("SELECT id, data, enriching_columns FROM rows WHERE table_id = $1 ORDER BY id", [tableId])
    );
    return new Map(result.rows.map((r) => [r.id, { data: r.data, enriching_columns: r.enriching_columns }]));
  }

  /** Another migrated database on the same Postgres (a foreign database for cursors). */
  async siblingDatabase() {
    const name = `broadcaster_js_${randomBytes(6).toString("hex")}`;
    if (this.where.mode === "url") {
      const url = await createMigratedDatabase(this.where.adminUrl, name);
      this.cleanups.push(() => dropDatabase(/** @type {{ adminUrl: string }} */ (this.where).adminUrl, name));
      return url;
    }
    // Embedded: same cluster, reached over the same socket directory.
    if (this.dsn === null) throw new Error("no database yet: call serve() first");
    await this.query(`CREATE DATABASE ${name}`);
    // postgresql://postgres:@/postgres?host=/tmp/…: no host, so not a WHATWG URL.
    const url = this.dsn.replace(/^(postgres(?:ql)?:\/\/[^/]*\/)[^?]*/, `$1${name}`);
    await runBroadcaster(["migrate"], { DATABASE_URL: url });
    return url;
  }

  async close() {
    if (this.db !== null) await this.db.end().catch(() => {});
    this.db = null;
    for (const server of this.servers) await server.stop();
    for (const cleanup of this.cleanups) await cleanup().catch(() => {});
    if (this.where.mode === "url") {
      await dropDatabase(this.where.adminUrl, this.where.databaseName);
    } else {
      await stopEmbeddedPostgres(this.where.dataDir);
      await rm(this.where.dataDir, { recursive: true, force: true });
    }
  }

  /** The servers' logs, for a failing test's message. */
  logs() {
    return this.servers.map((server, i) => `--- serve #${i + 1}\n${server.log}`).join("\n");
  }
}

/**
 * @param {string} adminUrl
 * @param {string} name
 */
async function createMigratedDatabase(adminUrl, name) {
  const admin = new pg.Client({ connectionString: adminUrl });
  await within(admin.connect(), 10_000, "connecting to BROADCASTER_TEST_DATABASE_URL");
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  await runBroadcaster(["migrate"], { DATABASE_URL: url.toString() });
  return url.toString();
}

/**
 * @param {string} adminUrl
 * @param {string} name
 */
async function dropDatabase(adminUrl, name) {
  const admin = new pg.Client({ connectionString: adminUrl });
  await within(admin.connect(), 10_000, "connecting to BROADCASTER_TEST_DATABASE_URL");
  try {
    await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  } finally {
    await admin.end();
  }
}

/**
 * The embedded Postgres outlives a server killed with SIGKILL (it runs
 * detached, and its owner never got to stop it): stop it through the pid in
 * its own postmaster.pid, with a fast shutdown.
 * @param {string} dataDir
 */
async function stopEmbeddedPostgres(dataDir) {
  let pid;
  try {
    const text = await readFile(join(dataDir, "pgdata", "postmaster.pid"), "utf8");
    pid = Number(text.split("\n")[0]);
  } catch {
    return; // Not running.
  }
  if (!Number.isInteger(pid) || pid <= 0) return;
  const alive = () => {
    try {
      process.kill(/** @type {number} */ (pid), 0);
      return true;
    } catch {
      return false;
    }
  };
  if (!alive()) return;
  process.kill(pid, "SIGINT");
  await eventually(() => !alive(), { ms: 20_000, label: `the embedded Postgres (pid ${pid}) to stop` });
}
