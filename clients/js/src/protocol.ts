/**
 * The wire protocol (docs/protocol.md in the broadcaster repository), as types
 * and as the checks that turn an untrusted frame into those types.
 *
 * Validation is deliberately shallow: the server is trusted to send what the
 * protocol says, but a message that lacks what the client relies on (a
 * `table_id`, a change's `id` and its row's `version`) is dropped rather than
 * allowed to corrupt a store. Unknown message types and extra fields are
 * ignored, so a newer server can add to the protocol without breaking this
 * client.
 */

/** A client's correlation value; replies carry it unchanged. */
export type Ref = string | number;

/**
 * A reply's `ref`: the client's, or null when no client message carried one
 * (an `authenticated` answering a token sent with the upgrade request).
 */
export type ReplyRef = Ref | null;

/** The cells of a row: `rows.data`, a JSON object. */
export type RowData = Record<string, unknown>;

/** A row of the `rows` table as the server sends it. */
export interface Row<TData extends object = RowData> {
  id: string;
  table_id: string;
  data: TData;
  /** Keys of `data` being enriched right now. */
  enriching_columns: string[];
  /** The change's place in the change log: grows with every change of the row, including its deletion; 0 in a snapshot. */
  version: number;
  /** ISO 8601 with microseconds and the UTC offset of the writer's session. */
  created_at: string;
  updated_at: string;
}

/** The whole row before an `UPDATE` or `DELETE`, as the change log holds it (no `version`). */
export type OldRow<TData extends object = RowData> = Omit<Row<TData>, "version">;

/**
 * A row of a published table (`schema.table`, see docs/publishing.md): its
 * own columns as Postgres' `to_jsonb` writes them, and `version` (the change's,
 * which hides a column of that name).
 */
export type PublishedRow<TColumns extends object = RowData> = TColumns & { version: number };

/** What every row a store holds carries: the version of its latest change. */
export interface Versioned {
  version: number;
}

/** What a `DELETE` carries: the row's key (as the change's `id`), its table and the version of the deletion. */
export interface DeletedRow {
  id: string;
  table_id: string;
  version: number;
}

/** A change's row as received, before a store gives it a type: any table's, so only its `version` is known. */
export type ChangedRow = Versioned;

export type Op = "INSERT" | "UPDATE" | "DELETE";

export type ResetReason = "malformed_cursor" | "foreign_cursor" | "history_pruned" | (string & {});

export interface SubscribedMessage {
  type: "subscribed";
  ref?: ReplyRef;
  table_id: string;
}

export interface UnsubscribedMessage {
  type: "unsubscribed";
  ref?: ReplyRef;
  table_id: string;
}

/**
 * A change of one row. `id` is the row's key: `rows`' id, or a published
 * table's primary key as text (`42`), or JSON array text for a composite key
 * (`[5, 1]`). A server that does not send it has it in `row.id`; the parser
 * fills it in from there.
 */
export type ChangeMessage =
  | { type: "change"; table_id: string; op: "INSERT"; id: string; row: ChangedRow; cursor?: string }
  | {
      type: "change";
      table_id: string;
      op: "UPDATE";
      id: string;
      row: ChangedRow;
      old?: object;
      cursor?: string;
    }
  | {
      type: "change";
      table_id: string;
      op: "DELETE";
      id: string;
      row: DeletedRow;
      old?: object;
      cursor?: string;
    };

export interface SyncedMessage {
  type: "synced";
  table_id: string;
  cursor: string;
}

export interface CursorMessage {
  type: "cursor";
  table_id: string;
  cursor: string;
}

export interface ResetMessage {
  type: "reset";
  table_id: string;
  reason: ResetReason;
}

export interface PongMessage {
  type: "pong";
  ref?: ReplyRef;
}

export interface AuthenticatedMessage {
  type: "authenticated";
  ref?: ReplyRef;
  /** Unix seconds after which the token is no longer accepted; null: it does not expire. */
  expires_at: number | null;
}

export interface ErrorMessage {
  type: "error";
  ref?: ReplyRef;
  code: string;
  message: string;
  /** Present when the error concerns one table (`forbidden`): its subscription has ended. */
  table_id?: string;
}

/** The answer to a `broadcast` (`sent`), a `track` (`tracked`) or an `untrack` (`untracked`). */
export interface DoneMessage {
  type: "sent" | "tracked" | "untracked";
  ref?: ReplyRef;
  table_id: string;
}

/** A message another client broadcast on a table this client is subscribed to. */
export interface BroadcastMessage {
  type: "broadcast";
  table_id: string;
  event: string;
  payload: unknown;
}

/** A presence's meta as the server sends it: the tracked meta plus its `phx_ref`. */
export type WireMeta = Record<string, unknown> & { phx_ref: string };

/** Presences by key, in the Phoenix shape. */
export type WirePresences = Record<string, { metas: WireMeta[] }>;

export interface PresenceStateMessage {
  type: "presence_state";
  table_id: string;
  presences: WirePresences;
}

export interface PresenceDiffMessage {
  type: "presence_diff";
  table_id: string;
  joins: WirePresences;
  leaves: WirePresences;
}

export type ServerMessage =
  | SubscribedMessage
  | DoneMessage
  | BroadcastMessage
  | PresenceStateMessage
  | PresenceDiffMessage
  | UnsubscribedMessage
  | ChangeMessage
  | SyncedMessage
  | CursorMessage
  | ResetMessage
  | PongMessage
  | AuthenticatedMessage
  | ErrorMessage;

export type ClientMessage =
  | {
      type: "subscribe";
      ref: Ref;
      table_id: string;
      snapshot?: boolean;
      cursor?: string;
      presence?: boolean;
      filter?: string;
    }
  | { type: "broadcast"; ref: Ref; table_id: string; event: string; payload: unknown; self: boolean }
  | { type: "track"; ref: Ref; table_id: string; meta: Record<string, unknown>; key?: string }
  | { type: "untrack"; ref: Ref; table_id: string }
  | { type: "unsubscribe"; ref: Ref; table_id: string }
  | { type: "ping"; ref: Ref }
  | { type: "auth"; ref: Ref; token: string };

/** Close codes of the protocol that the client reacts to. */
export const CloseCode = {
  normal: 1000,
  goingAway: 1001,
  slowConsumer: 4000,
  unauthorized: 4001,
  tokenExpired: 4002,
} as const;

type JsonObject = Record<string, unknown>;

function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isRef(value: unknown): value is Ref {
  return typeof value === "string" || (typeof value === "number" && Number.isFinite(value));
}

function optionalRef(message: JsonObject): boolean {
  return message["ref"] === undefined || message["ref"] === null || isRef(message["ref"]);
}

function hasString(message: JsonObject, key: string): boolean {
  return typeof message[key] === "string";
}

/** A row of any table: only `version` is common to all (a published table's columns are its own). */
function isChangedRow(value: unknown): value is ChangedRow & JsonObject {
  return isObject(value) && typeof value["version"] === "number";
}

/** `{key: {metas: [{..., phx_ref: "..."}]}}`; anything else is malformed. */
function isPresences(value: unknown): value is WirePresences {
  if (!isObject(value)) return false;
  for (const entry of Object.values(value)) {
    if (!isObject(entry) || !Array.isArray(entry["metas"])) return false;
    for (const meta of entry["metas"]) {
      if (!isObject(meta) || typeof meta["phx_ref"] !== "string") return false;
    }
  }
  return true;
}

/** The change's key: its `id`, or `row.id` from a server that does not send one; null if neither is a string. */
function changeKey(message: JsonObject, row: JsonObject): string | null {
  const id = message["id"] === undefined ? row["id"] : message["id"];
  return typeof id === "string" ? id : null;
}

/**
 * The message if it is well-formed and of a type this client understands;
 * "unknown" for a well-formed message of another type (a newer server's);
 * null for anything malformed.
 */
export function toServerMessage(value: unknown): ServerMessage | "unknown" | null {
  if (!isObject(value) || typeof value["type"] !== "string" || !optionalRef(value)) return null;
  const message = value;
  switch (message["type"]) {
    case "subscribed":
    case "unsubscribed":
      return hasString(message, "table_id") ? (message as unknown as ServerMessage) : null;
    case "change": {
      if (!hasString(message, "table_id")) return null;
      if (message["cursor"] !== undefined && !hasString(message, "cursor")) return null;
      const op = message["op"];
      if (op !== "INSERT" && op !== "UPDATE" && op !== "DELETE") return null;
      if (message["old"] !== undefined && !isObject(message["old"])) return null;
      const row = message["row"];
      if (!isChangedRow(row)) return null;
      const id = changeKey(message, row);
      if (id === null) return null;
      return (message["id"] === id ? message : { ...message, id }) as unknown as ChangeMessage;
    }
    case "synced":
    case "cursor":
      return hasString(message, "table_id") && hasString(message, "cursor")
        ? (message as unknown as ServerMessage)
        : null;
    case "reset":
      return hasString(message, "table_id") ? (message as unknown as ResetMessage) : null;
    case "pong":
      return message as unknown as PongMessage;
    case "sent":
    case "tracked":
    case "untracked":
      return hasString(message, "table_id") ? (message as unknown as DoneMessage) : null;
    case "broadcast":
      return hasString(message, "table_id") && hasString(message, "event")
        ? ({ ...message, payload: message["payload"] ?? null } as unknown as BroadcastMessage)
        : null;
    case "presence_state":
      return hasString(message, "table_id") && isPresences(message["presences"])
        ? (message as unknown as PresenceStateMessage)
        : null;
    case "presence_diff": {
      if (!hasString(message, "table_id")) return null;
      // A side may be left out when it is empty.
      const joins = message["joins"] ?? {};
      const leaves = message["leaves"] ?? {};
      return isPresences(joins) && isPresences(leaves)
        ? ({ ...message, joins, leaves } as unknown as PresenceDiffMessage)
        : null;
    }
    case "authenticated": {
      const expiresAt = message["expires_at"];
      const valid = expiresAt === undefined || expiresAt === null || typeof expiresAt === "number";
      return valid ? ({ ...message, expires_at: expiresAt ?? null } as unknown as AuthenticatedMessage) : null;
    }
    case "error":
      if (message["table_id"] !== undefined && !hasString(message, "table_id")) return null;
      return hasString(message, "code") ? (message as unknown as ErrorMessage) : null;
    default:
      return "unknown";
  }
}

/**
 * Split a text frame into its messages. A frame is one message (an object) or
 * a batch (an array of them, in order). Returns the messages this client
 * understands, in order, and how many items were malformed (not JSON, or
 * missing what the client relies on). Messages of unknown types are skipped
 * silently.
 */
export function parseFrame(text: string): { messages: ServerMessage[]; malformed: number } {
  let decoded: unknown;
  try {
    decoded = JSON.parse(text);
  } catch {
    return { messages: [], malformed: 1 };
  }
  const items: unknown[] = Array.isArray(decoded) ? decoded : [decoded];
  const messages: ServerMessage[] = [];
  let malformed = 0;
  for (const item of items) {
    const message = toServerMessage(item);
    if (message === null) malformed += 1;
    else if (message !== "unknown") messages.push(message);
  }
  return { messages, malformed };
}
