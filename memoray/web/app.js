// memoray viewer: vanilla JS, no dependencies. Everything the server returns is inserted as
// text (textContent), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "memoray.token";
const state = { q: "", filters: {}, cursor: null, selected: null, timeline: null };
const FACETS = [["workspace", "f-workspace"], ["branch", "f-branch"], ["eventType", "f-event"],
                ["start", "f-start"], ["end", "f-end"]];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c != null) node.append(c);
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

// -- API with the token asked once per browser session ----------------------------------------
let tokenPrompt = null;

function askToken(message) {
  if (tokenPrompt) return tokenPrompt;
  const dialog = $("token-dialog");
  $("token-error").textContent = message || "";
  $("token").value = "";
  tokenPrompt = new Promise((resolve) => {
    $("token-form").onsubmit = (ev) => {
      ev.preventDefault();
      const value = $("token").value.trim();
      if (!value) return;
      sessionStorage.setItem(TOKEN_KEY, value);
      dialog.close();
      tokenPrompt = null;
      resolve(value);
    };
  });
  if (!dialog.open) dialog.showModal();
  return tokenPrompt;
}

async function api(path, options = {}) {
  for (let attempt = 0; attempt < 5; attempt++) {
    const headers = { "X-Memoray-Client": "viewer", ...(options.headers || {}) };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    const res = await fetch(path, { ...options, headers });
    if (res.status === 401) {
      const body = await res.json().catch(() => ({}));
      if (token) sessionStorage.removeItem(TOKEN_KEY);
      await askToken(token ? "That token was refused: " + (body.message || "") : "");
      continue;
    }
    const body = await res.json().catch(() => ({ message: res.statusText }));
    if (!res.ok) throw new Error((body.code ? body.code + ": " : "") + (body.message || res.status));
    return body;
  }
  throw new Error("no valid token");
}

function query(params) {
  const out = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") out.set(k, v);
  const s = out.toString();
  return s ? "?" + s : "";
}

function apiFilters() {
  const f = { ...state.filters };
  if (f.start) f.start = f.start + "T00:00:00Z";
  if (f.end) f.end = f.end + "T23:59:59.999Z";
  return f;
}

// -- rendering ---------------------------------------------------------------------------------
function setStatus(text, error = false) {
  const s = $("status");
  s.textContent = text;
  s.className = error ? "status error" : "status";
}

function fmtTime(iso) {
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString();
}

function card(m) {
  const meta = el("div", { class: "meta" },
    el("span", { class: "tag type", text: m.eventType }),
    el("span", { class: "tag", text: m.workspaceId }),
    m.gitBranch ? el("span", { class: "tag", text: "⎇ " + m.gitBranch }) : null,
    m.chunkCount ? el("span", { class: "tag", text: `chunk ${m.chunkIndex + 1}/${m.chunkCount}` }) : null,
    el("time", { datetime: m.timestamp, text: fmtTime(m.timestamp) }),
    m.score !== undefined ? el("span", { class: "score", text: "score " + m.score.toFixed(3) }) : null);
  const li = el("li", { class: "card", "data-id": m.id, tabindex: "0" }, meta,
    el("div", { class: "text", text: m.content + (m.truncated ? " …" : "") }));
  li.addEventListener("click", () => openDetail(m.id));
  li.addEventListener("keydown", (ev) => { if (ev.key === "Enter") openDetail(m.id); });
  return li;
}

async function loadList(append = false) {
  const list = $("list");
  if (!append) { list.replaceChildren(); state.cursor = null; }
  $("more").hidden = true;
  try {
    if (state.q) {
      $("list-title").textContent = `Results for “${state.q}”`;
      setStatus("Searching…");
      const res = await api("/api/search" + query({ q: state.q, limit: 50, ...apiFilters() }));
      res.memories.forEach((m) => list.append(card(m)));
      setStatus(res.count ? `${res.count} result${res.count === 1 ? "" : "s"}` : "No memories match.");
    } else {
      $("list-title").textContent = "Newest memories";
      setStatus("Loading…");
      const res = await api("/api/memories" + query({ limit: 50, cursor: state.cursor, ...apiFilters() }));
      res.memories.forEach((m) => list.append(card(m)));
      state.cursor = res.nextCursor;
      $("more").hidden = !res.nextCursor;
      const shown = list.children.length;
      setStatus(shown ? `${shown} shown, newest first` : "No memories yet.");
    }
  } catch (err) {
    setStatus(err.message, true);
  }
}

function barChart(target, items, { vertical, onPick }) {
  const box = $(target);
  box.replaceChildren();
  if (!items.length) { box.append(el("p", { class: "status", text: "nothing to chart" })); return; }
  // The viewBox is the box's own size, so text is never stretched.
  const W = Math.max(200, box.clientWidth || 600), H = 150, max = Math.max(...items.map((i) => i.value), 1);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  if (vertical) {
    const bw = (W - 30) / items.length;
    items.forEach((it, i) => {
      const h = Math.max(1, (H - 22) * it.value / max);
      const r = svg("rect", { class: "bar", x: 30 + i * bw + 1, y: H - 16 - h, width: Math.max(1, bw - 2), height: h });
      const t = svg("title"); t.textContent = `${it.label}: ${it.value}`; r.append(t);
      r.addEventListener("click", () => onPick && onPick(it));
      root.append(r);
    });
    const first = svg("text", { x: 30, y: H - 3 }); first.textContent = items[0].label;
    const last = svg("text", { x: W, y: H - 3, "text-anchor": "end" }); last.textContent = items[items.length - 1].label;
    const top = svg("text", { x: 0, y: 10 }); top.textContent = String(max);
    root.append(first, last, top);
  } else {
    const shown = items.slice(0, 8), bh = Math.min(26, H / shown.length), left = 96;
    shown.forEach((it, i) => {
      const w = Math.max(1, (W - left - 40) * it.value / max);
      const name = it.label.length > 15 ? it.label.slice(0, 14) + "…" : it.label;
      const label = svg("text", { x: 0, y: i * bh + bh / 2 + 4 }); label.textContent = name;
      const r = svg("rect", { class: "bar", x: left, y: i * bh + 3, width: w, height: Math.max(2, bh - 6) });
      const t = svg("title"); t.textContent = `${it.label}: ${it.value}`; r.append(t);
      r.addEventListener("click", () => onPick && onPick(it));
      const n = svg("text", { x: left + w + 4, y: i * bh + bh / 2 + 4 }); n.textContent = String(it.value);
      root.append(label, r, n);
    });
  }
  box.append(root);
}

function dayRange(days) {
  if (!days.length) return [];
  const counts = new Map(days.map((d) => [d.day, d.total]));
  const out = [];
  const end = new Date(days[days.length - 1].day + "T00:00:00Z");
  let cur = new Date(days[0].day + "T00:00:00Z");
  const floor = new Date(end.getTime() - 89 * 86400000);  // at most 90 days of bars
  if (cur < floor) cur = floor;
  for (; cur <= end; cur = new Date(cur.getTime() + 86400000)) {
    const key = cur.toISOString().slice(0, 10);
    out.push({ label: key, value: counts.get(key) || 0 });
  }
  return out;
}

async function loadCharts() {
  try {
    state.timeline = await api("/api/timeline" + query(apiFilters()));
    renderCharts();
  } catch (err) {
    $("chart-days").replaceChildren(el("p", { class: "status error", text: err.message }));
  }
}

// Drawn at the boxes' current size (text never stretched); redrawn when the layout changes.
function renderCharts() {
  const t = state.timeline;
  if (!t) return;
  {
    barChart("chart-days", dayRange(t.days), { vertical: true, onPick: (it) => {
      state.filters.start = it.label; state.filters.end = it.label; syncInputs(); refresh();
    } });
    barChart("chart-types", Object.entries(t.eventTypes).map(([label, value]) => ({ label, value })),
      { vertical: false, onPick: (it) => { state.filters.eventType = it.label; syncInputs(); refresh(); } });
  }
}

function fillSelect(id, values, current) {
  const sel = $(id);
  const keep = new Set([...values, current].filter(Boolean));
  sel.replaceChildren(el("option", { value: "", text: "all" }),
    ...[...keep].sort().map((v) => el("option", { value: v, text: v })));
  sel.value = current || "";
}

async function loadStore() {
  try {
    const [info, stats] = await Promise.all([api("/api/info"), api("/api/stats")]);
    fillSelect("f-workspace", Object.keys(stats.workspaces || {}), state.filters.workspace);
    fillSelect("f-event", Object.keys(stats.eventTypes || {}), state.filters.eventType);
    const rows = [["memories", stats.total], ["workspaces", Object.keys(stats.workspaces || {}).length],
                  ["shards", info.shards], ["embedder", info.embedder], ["version", info.version]];
    if (stats.storageBytes !== undefined) rows.push(["on disk", (stats.storageBytes / 1048576).toFixed(1) + " MiB"]);
    if (info.dataDir) rows.push(["data", info.dataDir]);
    $("store").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })]));
  } catch (err) {
    $("store").replaceChildren(el("dd", { class: "error", text: err.message }));
  }
}

async function loadHealth() {
  try {
    const h = await api("/api/health");
    const cls = h.status === "ok" ? "ok" : "warn";
    $("health").replaceChildren(el("span", { class: "dot " + cls }), document.createTextNode(h.status));
    $("components").replaceChildren(...Object.entries(h.components).sort().map(([name, c]) =>
      el("li", {}, el("span", { class: "dot " + (c.status === "ok" ? "ok" : "bad") }),
         document.createTextNode(`${name}: ${c.status}`))));
  } catch (err) {
    $("health").replaceChildren(el("span", { class: "dot bad" }), document.createTextNode("unreachable"));
  }
}

async function openDetail(id) {
  state.selected = id;
  document.querySelectorAll(".card.selected").forEach((c) => c.classList.remove("selected"));
  const c = document.querySelector(`.card[data-id="${id}"]`);
  if (c) c.classList.add("selected");
  try {
    const m = await api("/api/memories/" + encodeURIComponent(id));
    $("detail-title").textContent = m.id;
    const meta = [["type", m.eventType], ["workspace", m.workspaceId], ["branch", m.gitBranch],
      ["session", m.sessionId], ["agent", m.agentId], ["tier", m.tier], ["time", fmtTime(m.timestamp)],
      ["document", m.parentId ? `${m.parentId} (chunk ${m.chunkIndex + 1}/${m.chunkCount})` : null]];
    for (const [k, v] of Object.entries(m.metadata || {})) meta.push(["meta." + k, typeof v === "string" ? v : JSON.stringify(v)]);
    $("detail-meta").replaceChildren(...meta.filter(([, v]) => v != null && v !== "")
      .flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })]));
    $("detail-content").textContent = m.content;
    $("detail-doc").hidden = !m.parentId;
    $("detail-doc").onclick = async () => {
      const d = await api("/api/documents/" + encodeURIComponent(m.parentId));
      $("detail-content").textContent = d.content;
      $("detail-title").textContent = `${d.parentId} (document, ${d.chunks}/${d.expectedChunks} chunks${d.complete ? "" : ", incomplete"})`;
    };
    $("detail-delete").onclick = () => deleteMemory(m.id, !!m.parentId);
    $("detail").hidden = false;
    document.querySelector("main").classList.add("with-detail");
    renderCharts();
  } catch (err) {
    setStatus(err.message, true);
  }
}

function closeDetail() {
  $("detail").hidden = true;
  document.querySelector("main").classList.remove("with-detail");
  state.selected = null;
  renderCharts();
}

async function deleteMemory(id, chunk) {
  if (!confirm(chunk ? "Delete this memory's whole document?" : "Delete this memory for good?")) return;
  try {
    const r = await api("/api/memories/" + encodeURIComponent(id), { method: "DELETE" });
    closeDetail();
    const c = document.querySelector(`.card[data-id="${id}"]`);
    if (c) c.remove();
    setStatus(r.chunksDeleted ? `Deleted a document of ${r.chunksDeleted} chunks.` : "Deleted.");
    loadStore(); loadCharts();
  } catch (err) {
    setStatus(err.message, true);
  }
}

// -- state <-> URL and inputs -------------------------------------------------------------------
function syncInputs() {
  $("q").value = state.q;
  for (const [key, id] of FACETS) {
    const input = $(id);
    const v = state.filters[key] || "";
    if (input.tagName === "SELECT" && v && ![...input.options].some((o) => o.value === v))
      input.append(el("option", { value: v, text: v }));
    input.value = v;
  }
}

function readInputs() {
  state.q = $("q").value.trim();
  state.filters = {};
  for (const [key, id] of FACETS) if ($(id).value) state.filters[key] = $(id).value.trim();
}

function pushUrl() {
  history.replaceState(null, "", "/" + query({ q: state.q, ...state.filters }));
}

function refresh() {
  pushUrl();
  closeDetail();
  loadList();
  loadCharts();
}

function init() {
  const params = new URLSearchParams(location.search);
  state.q = params.get("q") || "";
  for (const [key] of FACETS) if (params.get(key)) state.filters[key] = params.get(key);
  syncInputs();
  $("search-form").addEventListener("submit", (ev) => { ev.preventDefault(); readInputs(); refresh(); });
  $("f-apply").addEventListener("click", () => { readInputs(); refresh(); });
  $("f-clear").addEventListener("click", () => { state.filters = {}; state.q = ""; syncInputs(); refresh(); });
  $("more").addEventListener("click", () => loadList(true));
  $("detail-close").addEventListener("click", closeDetail);
  // One call first, so a token prompt appears once, then everything else.
  loadHealth().then(() => { loadStore(); loadList(); loadCharts(); });
  setInterval(loadHealth, 15000);
  let resizing = null;
  window.addEventListener("resize", () => { clearTimeout(resizing); resizing = setTimeout(renderCharts, 150); });
}

document.addEventListener("DOMContentLoaded", init);
