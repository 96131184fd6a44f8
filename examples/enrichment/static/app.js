/**
 * The enrichment demo's page: a grid of companies, rendered from the live
 * store of @broadcaster/client and from nothing else.
 *
 * The page asks the API to enrich cells (POST /tables/{id}/enrich) but never
 * renders what the API answers: the spinners appear when the broadcaster
 * delivers the API's write (the cells' keys in `enriching_columns`), and the
 * values when it delivers the worker's. Every open tab therefore shows the
 * same thing, and a tab that was offline catches up by itself.
 *
 * For tests, each cell is `td[data-row][data-column]` with
 * `data-state="enriching|value|error|empty"` and `data-value` (the cell's
 * JSON, absent when the key is); `#status[data-status]` is the client's
 * status; `#grid[data-synced]` says whether the table's catch-up is complete.
 */

import { createClient } from "/client/index.js";

const config = await fetch("/config.json").then((response) => response.json());
const tableId = new URLSearchParams(location.search).get("table") || config.tableId;
const columns = config.columns;
const enrichable = config.enrichable;
const enrichableSet = new Set(enrichable);

const client = createClient(resolveWsUrl(config.wsUrl), config.clientOptions ?? {});
const table = client.table(tableId, { snapshot: true });
// Handy in the browser's console; the page itself uses only the DOM below.
window.demo = { client, table };

const grid = document.getElementById("grid");
const tbody = grid.tBodies[0];
const statusBox = document.getElementById("status");
const enrichButton = document.getElementById("enrich");
const selectionInfo = document.getElementById("selection-info");
const message = document.getElementById("message");
const summary = document.getElementById("summary");
document.getElementById("table-name").textContent = tableId;

/** A broadcaster listening on every interface is reached by the host this page came from. */
function resolveWsUrl(raw) {
  const url = new URL(raw, location.href);
  if (url.hostname === "0.0.0.0" || url.hostname === "[::]") url.hostname = location.hostname;
  return url.href;
}

// -- connection indicator ----------------------------------------------------

const STATUS_LABELS = {
  connecting: "connecting…",
  live: "live",
  reconnecting: "reconnecting…",
  offline: "offline",
};

function showStatus() {
  statusBox.dataset.status = client.status;
  statusBox.querySelector(".label").textContent = STATUS_LABELS[client.status] ?? client.status;
  grid.dataset.synced = String(table.synced);
}

client.on("status", showStatus);
table.on("synced", showStatus);
client.on("error", (error) => console.warn("broadcaster:", error.code, error.message));
showStatus();

// -- the grid ----------------------------------------------------------------

const collator = new Intl.Collator(undefined, { numeric: true });
/** Row id → its <tr>. */
const trs = new Map();
/** Row ids in display order (by id), the order of the <tr>s in tbody. */
let order = [];

const headRow = grid.tHead.rows[0];
headRow.append(th("#", "index"), ...columns.map((column) => th(column)));

function th(text, className) {
  const cell = document.createElement("th");
  cell.textContent = text;
  if (className) cell.className = className;
  return cell;
}

function cellState(row, column) {
  if (row.enriching_columns.includes(column)) return "enriching";
  const value = row.data[column];
  if (value === undefined || value === null || value === "") return "empty";
  if (typeof value === "object" && !Array.isArray(value) && "error" in value) return "error";
  return "value";
}

function formatValue(value) {
  if (typeof value === "number") return value.toLocaleString("en-US");
  if (typeof value === "string") return value;
  return JSON.stringify(value);
}

/** Bring one cell in line with the row; `live` flashes a cell whose value just arrived. */
function paintCell(td, row, column, live) {
  const state = cellState(row, column);
  const value = row.data[column];
  const json = value === undefined ? undefined : JSON.stringify(value);
  if (td.dataset.state === state && td.dataset.value === json) return;
  const wasEnriching = td.dataset.state === "enriching";
  td.dataset.state = state;
  if (json === undefined) delete td.dataset.value;
  else td.dataset.value = json;
  td.removeAttribute("title");
  if (state === "enriching") {
    const spinner = document.createElement("span");
    spinner.className = "spinner";
    spinner.setAttribute("aria-label", "enriching");
    td.replaceChildren(spinner);
  } else if (state === "error") {
    const error = document.createElement("span");
    error.className = "error";
    error.textContent = `⚠ ${value.error}`;
    td.title = String(value.error);
    td.replaceChildren(error);
  } else if (state === "value") {
    td.replaceChildren(formatValue(value));
  } else {
    td.replaceChildren();
  }
  if (live && wasEnriching && state !== "enriching") {
    td.classList.remove("fresh");
    void td.offsetWidth; // Restart the animation if it was running.
    td.classList.add("fresh");
  }
}

function buildRow(row) {
  const tr = document.createElement("tr");
  tr.dataset.row = row.id;
  const index = document.createElement("td");
  index.className = "index";
  tr.append(index);
  for (const column of columns) {
    const td = document.createElement("td");
    td.dataset.row = row.id;
    td.dataset.column = column;
    if (enrichableSet.has(column)) td.className = "cell";
    paintCell(td, row, column, false);
    tr.append(td);
  }
  return tr;
}

function paintRow(tr, row, live) {
  columns.forEach((column, i) => paintCell(tr.cells[i + 1], row, column, live));
}

function renumber() {
  order.forEach((id, i) => {
    trs.get(id).cells[0].textContent = String(i + 1);
  });
}

function renderAll() {
  order = table.rows().map((row) => row.id).sort(collator.compare);
  trs.clear();
  const fragment = document.createDocumentFragment();
  for (const id of order) {
    const tr = buildRow(table.get(id));
    trs.set(id, tr);
    fragment.append(tr);
  }
  tbody.replaceChildren(fragment);
  renumber();
  pruneSelection();
  markSelection(selected, true);
  summarize();
}

function insertRow(row) {
  // Binary search for its place among the ids shown.
  let low = 0;
  let high = order.length;
  while (low < high) {
    const mid = (low + high) >> 1;
    if (collator.compare(order[mid], row.id) < 0) low = mid + 1;
    else high = mid;
  }
  const tr = buildRow(row);
  tbody.insertBefore(tr, low < order.length ? trs.get(order[low]) : null);
  order.splice(low, 0, row.id);
  trs.set(row.id, tr);
}

// One event per frame from the broadcaster, after the store applied it all.
table.on("change", ({ changed, reset }) => {
  if (reset || changed.size > 100) {
    renderAll();
    return;
  }
  let moved = false;
  for (const [id, kind] of changed) {
    const row = table.get(id);
    const tr = trs.get(id);
    if (row === undefined) {
      if (tr !== undefined) {
        tr.remove();
        trs.delete(id);
        order = order.filter((other) => other !== id);
        moved = true;
      }
    } else if (tr === undefined) {
      insertRow(row);
      moved = true;
    } else {
      paintRow(tr, row, kind === "live");
    }
  }
  if (moved) {
    renumber();
    pruneSelection();
  }
  summarize();
});

function summarize() {
  let enriching = 0;
  let errors = 0;
  for (const row of table.rows()) {
    enriching += row.enriching_columns.length;
    for (const column of enrichable) if (cellState(row, column) === "error") errors += 1;
  }
  summary.textContent = `${table.size} rows · ${enriching} enriching · ${errors} failed`;
}

// -- selecting cells: click, ctrl/cmd-click, shift-click, drag ----------------

/** Selected cells as "rowId\u0000column". */
let selected = new Set();
/** Where the last plain click or drag started: the corner shift-click extends from. */
let anchor = null;
/** While the mouse button is down: the selection the dragged rectangle adds to. */
let drag = null;

const keyOf = (rowId, column) => `${rowId}\u0000${column}`;

function cellAt(target) {
  const td = target instanceof Element ? target.closest("td.cell") : null;
  return td !== null && tbody.contains(td) ? { row: td.dataset.row, column: td.dataset.column } : null;
}

function tdOf(key) {
  const [rowId, column] = key.split("\u0000");
  return trs.get(rowId)?.cells[columns.indexOf(column) + 1];
}

/** Every cell of the rectangle with corners `a` and `b`, in display order. */
function rectangle(a, b) {
  const bRow = order.indexOf(b.row);
  const aRow = order.indexOf(a.row) === -1 ? bRow : order.indexOf(a.row);
  const aColumn = enrichable.indexOf(a.column);
  const bColumn = enrichable.indexOf(b.column);
  const cells = [];
  for (let r = Math.min(aRow, bRow); r <= Math.max(aRow, bRow); r++) {
    for (let c = Math.min(aColumn, bColumn); c <= Math.max(aColumn, bColumn); c++) {
      cells.push(keyOf(order[r], enrichable[c]));
    }
  }
  return cells;
}

function markSelection(keys, on) {
  for (const key of keys) {
    const td = tdOf(key);
    if (td === undefined) continue;
    td.classList.toggle("selected", on);
    td.setAttribute("aria-selected", String(on));
  }
}

function setSelection(next) {
  markSelection([...selected].filter((key) => !next.has(key)), false);
  markSelection([...next].filter((key) => !selected.has(key)), true);
  selected = next;
  updateButton();
}

/** Forget selected cells whose rows are gone. */
function pruneSelection() {
  const kept = new Set([...selected].filter((key) => trs.has(key.split("\u0000")[0])));
  if (kept.size !== selected.size) {
    selected = kept;
    updateButton();
  }
}

tbody.addEventListener("mousedown", (event) => {
  const here = event.button === 0 ? cellAt(event.target) : null;
  if (here === null) return;
  event.preventDefault(); // No text selection while dragging.
  const additive = event.ctrlKey || event.metaKey;
  const base = additive ? new Set(selected) : new Set();
  const key = keyOf(here.row, here.column);
  if (event.shiftKey && anchor !== null) {
    drag = { base };
    setSelection(new Set([...base, ...rectangle(anchor, here)]));
  } else if (additive && selected.has(key)) {
    base.delete(key);
    drag = null;
    setSelection(base);
  } else {
    anchor = here;
    drag = { base };
    setSelection(new Set([...base, key]));
  }
});

tbody.addEventListener("mouseover", (event) => {
  const here = drag !== null && anchor !== null ? cellAt(event.target) : null;
  if (here !== null) setSelection(new Set([...drag.base, ...rectangle(anchor, here)]));
});

window.addEventListener("mouseup", () => {
  drag = null;
});

window.addEventListener("keydown", (event) => {
  if (event.key === "Escape") setSelection(new Set());
});

// -- enriching ---------------------------------------------------------------

let requesting = false;

function updateButton() {
  const count = selected.size;
  enrichButton.disabled = count === 0 || requesting;
  enrichButton.textContent = count === 0 ? "Enrich" : `Enrich ${count} cell${count === 1 ? "" : "s"}`;
  selectionInfo.hidden = count > 0;
}

function say(text, kind = "info") {
  message.textContent = text;
  message.dataset.kind = kind;
}

enrichButton.addEventListener("click", async () => {
  const cells = [...selected].map((key) => {
    const [row_id, column] = key.split("\u0000");
    return { row_id, column };
  });
  if (cells.length === 0) return;
  requesting = true;
  updateButton();
  try {
    const response = await fetch(`/tables/${encodeURIComponent(tableId)}/enrich`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ cells }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error ?? `HTTP ${response.status}`);
    // Nothing is drawn from this answer: the spinners come from the broadcaster.
    setSelection(new Set());
    say(`Requested ${body.cells} cell${body.cells === 1 ? "" : "s"}.`);
  } catch (error) {
    say(`Could not enrich: ${error.message}`, "error");
  } finally {
    requesting = false;
    updateButton();
  }
});

updateButton();
renderAll();
