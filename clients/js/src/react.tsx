"use client";
/**
 * React bindings: one client per <RealtimeProvider>, and hooks that share its
 * table subscriptions. Every hook on a table takes a handle from
 * `client.table()` (or `client.publishedTable()`), whose reference count
 * keeps one subscription per table however many components use it and
 * unsubscribes when the last unmounts.
 *
 * The client is created in an effect, never during render: rendering on a
 * server (Next.js) or twice (StrictMode) must not open sockets. Until it
 * exists, hooks report no rows and not connected.
 */

import {
  createContext,
  useCallback,
  useContext,
  useEffect,
  useRef,
  useState,
  useSyncExternalStore,
  type ReactElement,
  type ReactNode,
} from "react";

import { createClient } from "./client.js";
import type { PublishedRow, Row, RowData, Versioned } from "./protocol.js";
import type {
  BroadcasterClient,
  ChangeEventOf,
  ClientOptions,
  ClientStatus,
  DeleteEventOf,
  LivePublishedTable,
  LiveRows,
  LiveTable,
  WebSocketConstructor,
} from "./types.js";

// undefined: no provider above (a bug, reported); null: the provider's client
// does not exist yet (first render, server render).
const RealtimeContext = createContext<BroadcasterClient | null | undefined>(undefined);

const EMPTY_ROWS: readonly never[] = Object.freeze([]);
const EMPTY_IDS: ReadonlySet<string> = new Set<string>();

type ClientSettings = Omit<ClientOptions, "token" | "getToken" | "WebSocket">;

interface OwnedClientProps extends ClientSettings {
  /** The server's WebSocket URL, e.g. `wss://realtime.example.com/ws`. */
  url: string;
  /** Sent as the `auth` token; when it changes, the open connection re-authenticates with the new one. */
  token?: string;
  /** Called for each connection and before expiry; wins over `token`. The latest function passed is used. */
  getToken?: () => Promise<string> | string;
  /** Default `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
  client?: undefined;
}

interface SharedClientProps {
  /** Use this client instead of creating one; the provider does not close it. */
  client: BroadcasterClient;
  url?: undefined;
}

export type RealtimeProviderProps = (OwnedClientProps | SharedClientProps) & { children?: ReactNode };

/**
 * Creates one client for its subtree (or provides the one given as `client`).
 * It is re-created when `url`, `WebSocket` or whether a token is used change;
 * the other client options are read when it is created.
 */
export function RealtimeProvider(props: RealtimeProviderProps): ReactElement {
  const latest = useRef(props);
  // Declared first so that it runs before the effects below read `latest`.
  useEffect(() => {
    latest.current = props;
  });

  const shared = props.client;
  const url = props.url;
  const WebSocketImpl = props.client === undefined ? props.WebSocket : undefined;
  const token = props.client === undefined ? props.token : undefined;
  const usesAuth = props.client === undefined && (props.token !== undefined || props.getToken !== undefined);
  const [owned, setOwned] = useState<BroadcasterClient | null>(null);

  useEffect(() => {
    if (shared !== undefined || url === undefined) return undefined;
    const current = latest.current;
    if (current.client !== undefined) return undefined;
    const {
      url: _url,
      token: _token,
      getToken: _getToken,
      WebSocket: _ws,
      client: _client,
      children: _children,
      ...settings
    } = current;
    const options: ClientOptions = { ...settings };
    if (WebSocketImpl !== undefined) options.WebSocket = WebSocketImpl;
    if (usesAuth) {
      // Read the props at call time: a new getToken or token prop must not
      // require a new connection.
      options.getToken = () => {
        const now = latest.current;
        if (now.client !== undefined) return "";
        return now.getToken !== undefined ? now.getToken() : (now.token ?? "");
      };
    }
    const created = createClient(url, options);
    setOwned(created);
    return () => {
      created.close();
      setOwned((currentClient) => (currentClient === created ? null : currentClient));
    };
  }, [shared, url, WebSocketImpl, usesAuth]);

  // A new static token: authenticate the open connection with it.
  const lastToken = useRef(token);
  useEffect(() => {
    if (lastToken.current === token) return;
    lastToken.current = token;
    if (owned !== null && token !== undefined) void owned.refreshAuth();
  }, [owned, token]);

  const client = shared ?? owned;
  return <RealtimeContext.Provider value={client}>{props.children}</RealtimeContext.Provider>;
}

/** The provider's client; null until it has been created (the first render, and on a server). */
export function useRealtimeClient(): BroadcasterClient | null {
  const client = useContext(RealtimeContext);
  if (client === undefined) throw new Error("@broadcaster/client/react: use the hooks inside <RealtimeProvider>");
  return client;
}

/** The client's connection status; re-renders when it changes. */
export function useRealtimeStatus(): { status: ClientStatus; isConnected: boolean } {
  const client = useRealtimeClient();
  const subscribe = useCallback(
    (onChange: () => void) => (client === null ? () => {} : client.on("status", onChange)),
    [client],
  );
  const status = useSyncExternalStore(
    subscribe,
    () => client?.status ?? "connecting",
    () => "connecting" as const,
  );
  return { status, isConnected: status === "live" };
}

/** What a hook asks of a table besides its id. */
export interface LiveTableHookOptions {
  /** A published table's rows that pass this filter only (`"room_id=eq.5"`); see `TableOptions.filter`. */
  filter?: string | undefined;
}

/**
 * A handle held for as long as the component is mounted with the same
 * client, table and filter; null while there is none (no client yet,
 * disabled). `published` picks the client's method: the rows' type differs,
 * the subscription does not.
 */
function useHandle<TRow extends Versioned>(
  tableId: string | null | undefined,
  filter: string | undefined,
  published: boolean,
): LiveRows<TRow> | null {
  const client = useRealtimeClient();
  const [table, setTable] = useState<LiveRows<TRow> | null>(null);
  useEffect(() => {
    if (client === null || tableId === null || tableId === undefined || tableId === "") {
      setTable(null);
      return undefined;
    }
    const options = filter === undefined ? {} : { filter };
    // TRow is the caller's declaration of the rows' shape, which the client cannot check.
    const handle = (published
      ? client.publishedTable(tableId, options)
      : client.table(tableId, options)) as unknown as LiveRows<TRow>;
    setTable(handle);
    return () => handle.close();
  }, [client, tableId, filter, published]);
  // Between an effect's cleanup and the next render the state may still hold
  // a closed handle or another table's.
  return table !== null && !table.closed && table.tableId === tableId && table.filter === (filter ?? null)
    ? table
    : null;
}

/**
 * A handle on `tableId`, a table of `rows`, held for as long as the component
 * is mounted with the same client and table; null while there is none (no
 * client yet, disabled).
 */
export function useLiveTable<TData extends object = RowData>(
  tableId: string | null | undefined,
  options: LiveTableHookOptions = {},
): LiveTable<TData> | null {
  return useHandle<Row<TData>>(tableId, options.filter, false);
}

/** `useLiveTable` for a published table, `schema.table`, whole or by `options.filter`. */
export function useLivePublishedTable<TColumns extends object = RowData>(
  tableId: string | null | undefined,
  options: LiveTableHookOptions = {},
): LivePublishedTable<TColumns> | null {
  return useHandle<PublishedRow<TColumns>>(tableId, options.filter, true);
}

function useTableRows<TRow extends Versioned>(table: LiveRows<TRow> | null): readonly TRow[] {
  const subscribe = useCallback(
    (onChange: () => void) => (table === null ? () => {} : table.on("change", onChange)),
    [table],
  );
  return useSyncExternalStore(
    subscribe,
    () => (table === null ? EMPTY_ROWS : table.rows()),
    () => EMPTY_ROWS,
  );
}

function useTableSynced<TRow extends Versioned>(table: LiveRows<TRow> | null): boolean {
  const subscribe = useCallback(
    (onChange: () => void) => {
      if (table === null) return () => {};
      const offSynced = table.on("synced", onChange);
      const offStatus = table.on("status", onChange);
      const offReset = table.on("reset", onChange);
      return () => {
        offSynced();
        offStatus();
        offReset();
      };
    },
    [table],
  );
  return useSyncExternalStore(
    subscribe,
    () => table?.synced ?? false,
    () => false,
  );
}

/** The options of `useTableRealtime` and `usePublishedTableRealtime`, for rows of type `TRow`. */
export interface RealtimeOptionsOf<TRow extends Versioned> {
  /** The table to follow; null or undefined follows none. */
  tableId: string | null | undefined;
  /** False unsubscribes (when no other component holds the table). Default true. */
  enabled?: boolean;
  /** A published table's rows that pass this filter only (`"room_id=eq.5"`); a new filter resubscribes. */
  filter?: string | undefined;
  /**
   * Called for rows the store gains, live or caught up after a reconnect; not
   * for the rows of a snapshot (the first load, or the reload after a reset),
   * which arrive through `rows`.
   */
  onRowInsert?: (row: TRow, event: ChangeEventOf<TRow>) => void;
  /** Called for a newer state of a row the store holds (same rule as onRowInsert). */
  onRowUpdate?: (row: TRow, event: ChangeEventOf<TRow>) => void;
  /** Called with the last state of a row the store drops (same rule as onRowInsert). */
  onRowDelete?: (previous: TRow, event: DeleteEventOf<TRow>) => void;
  /** How long an id stays in `updatedRows` after its last change. Default 2000 ms. */
  updatedRowsWindowMs?: number;
}

export type UseTableRealtimeOptions<TData extends object = RowData> = RealtimeOptionsOf<Row<TData>>;

export type UsePublishedTableRealtimeOptions<TColumns extends object = RowData> = RealtimeOptionsOf<
  PublishedRow<TColumns>
>;

/** What `useTableRealtime` and `usePublishedTableRealtime` return, for rows of type `TRow`. */
export interface RealtimeStateOf<TRow extends Versioned> {
  /** The client is connected (status "live"). */
  isConnected: boolean;
  status: ClientStatus;
  /** The table's catch-up is complete: `rows` equals the database as of the table's cursor. */
  isSynced: boolean;
  /** Every row, in the order first received; a new array only when a row changed. */
  rows: readonly TRow[];
  /**
   * Ids inserted, updated or deleted within the last `updatedRowsWindowMs`,
   * live or caught up after a reconnect (not snapshot rows): for highlighting
   * what just changed. Each id leaves the set when its window ends.
   */
  updatedRows: ReadonlySet<string>;
  /** The underlying store handle, for `get()` and events; null while not subscribed. */
  table: LiveRows<TRow> | null;
}

export type TableRealtimeState<TData extends object = RowData> = RealtimeStateOf<Row<TData>>;

export type PublishedTableRealtimeState<TColumns extends object = RowData> = RealtimeStateOf<PublishedRow<TColumns>>;

const DEFAULT_UPDATED_WINDOW_MS = 2_000;

/** The rows of a table of `rows`, kept live, with change callbacks. */
export function useTableRealtime<TData extends object = RowData>(
  options: UseTableRealtimeOptions<TData>,
): TableRealtimeState<TData> {
  return useRealtime(options, false);
}

/** The rows of a published table, `schema.table`, whole or by `filter`, kept live, with change callbacks. */
export function usePublishedTableRealtime<TColumns extends object = RowData>(
  options: UsePublishedTableRealtimeOptions<TColumns>,
): PublishedTableRealtimeState<TColumns> {
  return useRealtime(options, true);
}

function useRealtime<TRow extends Versioned>(
  options: RealtimeOptionsOf<TRow>,
  published: boolean,
): RealtimeStateOf<TRow> {
  const { tableId, enabled = true } = options;
  const windowMs = options.updatedRowsWindowMs ?? DEFAULT_UPDATED_WINDOW_MS;
  const table = useHandle<TRow>(enabled ? tableId : null, options.filter, published);
  const { status, isConnected } = useRealtimeStatus();
  const rows = useTableRows(table);
  const isSynced = useTableSynced(table);

  // The callbacks are read when an event fires, so inline arrow functions do
  // not resubscribe anything.
  const handlers = useRef(options);
  useEffect(() => {
    handlers.current = options;
  });

  useEffect(() => {
    if (table === null) return undefined;
    const offs = [
      table.on("insert", (event) => {
        if (event.kind !== "snapshot") handlers.current.onRowInsert?.(event.row, event);
      }),
      table.on("update", (event) => {
        if (event.kind !== "snapshot") handlers.current.onRowUpdate?.(event.row, event);
      }),
      table.on("delete", (event) => {
        if (event.kind !== "snapshot") handlers.current.onRowDelete?.(event.previous, event);
      }),
    ];
    return () => {
      for (const off of offs) off();
    };
  }, [table]);

  const updatedRows = useRecentlyChanged(table, windowMs);
  return { isConnected, status, isSynced, rows, updatedRows, table };
}

/** Ids changed (live or resumed) within the last `windowMs`, each expiring on its own. */
function useRecentlyChanged<TRow extends Versioned>(
  table: LiveRows<TRow> | null,
  windowMs: number,
): ReadonlySet<string> {
  const [ids, setIds] = useState<ReadonlySet<string>>(EMPTY_IDS);
  useEffect(() => {
    setIds(EMPTY_IDS);
    if (table === null) return undefined;
    // id -> expiry time. Every entry gets the same window and a refreshed id
    // is moved to the end, so the map stays sorted by expiry.
    const expiries = new Map<string, number>();
    let timer: ReturnType<typeof setTimeout> | null = null;
    const publish = (): void => setIds(expiries.size === 0 ? EMPTY_IDS : new Set(expiries.keys()));
    const schedule = (): void => {
      if (timer !== null) return;
      const first = expiries.values().next();
      if (first.done === true) return;
      timer = setTimeout(expire, Math.max(0, first.value - Date.now()));
    };
    const expire = (): void => {
      timer = null;
      const now = Date.now();
      for (const [id, at] of expiries) {
        if (at > now) break;
        expiries.delete(id);
      }
      publish();
      schedule();
    };
    const off = table.on("change", (event) => {
      const at = Date.now() + windowMs;
      let added = false;
      if (event.reset) expiries.clear();
      for (const [id, kind] of event.changed) {
        if (kind === "snapshot") continue;
        expiries.delete(id);
        expiries.set(id, at);
        added = true;
      }
      if (added || event.reset) {
        publish();
        schedule();
      }
    });
    return () => {
      off();
      if (timer !== null) clearTimeout(timer);
    };
  }, [table, windowMs]);
  return ids;
}

/** `K`'s type in the row data when TData declares it, else unknown. */
export type CellValue<TData extends object, K extends string> = K extends keyof TData ? TData[K] : unknown;

export interface CellEnrichmentStatus<TData extends object = RowData, K extends string = string> {
  /** `columnKey` is in the row's `enriching_columns`. */
  isEnriching: boolean;
  /** `row.data[columnKey]`; undefined while the row or the key is absent. */
  cellData: CellValue<TData, K> | undefined;
  /** The whole row, undefined while not (yet) held. */
  row: Row<TData> | undefined;
}

/**
 * Whether one cell is being enriched, and its value. Re-renders only when that
 * row changes. Shares the table's subscription with every other hook.
 */
export function useCellEnrichmentStatus<TData extends object = RowData, K extends string = string>(
  tableId: string | null | undefined,
  rowId: string | null | undefined,
  columnKey: K,
): CellEnrichmentStatus<TData, K> {
  const table = useLiveTable<TData>(rowId === null || rowId === undefined ? null : tableId);
  const subscribe = useCallback(
    (onChange: () => void) => (table === null ? () => {} : table.on("change", onChange)),
    [table],
  );
  // The row object is replaced on every change of the row and kept otherwise,
  // so React re-renders this component only for its own row.
  const row = useSyncExternalStore(
    subscribe,
    () => (table === null || rowId === null || rowId === undefined ? undefined : table.get(rowId)),
    () => undefined,
  );
  const isEnriching = row !== undefined && row.enriching_columns.includes(columnKey);
  const cellData =
    row === undefined
      ? undefined
      : ((row.data as Record<string, unknown>)[columnKey] as CellValue<TData, K> | undefined);
  return { isEnriching, cellData, row };
}
