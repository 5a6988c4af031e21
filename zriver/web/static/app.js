/* zriver dashboard: plain JS, no build step, no request outside this host.
 *
 * Everything comes from the JSON API under /api/v1 (the same field names as the CLI's --json)
 * and stays live from the /api/v1/events WebSocket: no polling loops. An event either updates
 * what the page holds in place or triggers one (coalesced) re-read of what it changed.
 */
"use strict";

const STATES = ["pending", "assigned", "running", "paused", "unreachable", "completed",
                "failed", "killed", "killed_oom", "lost", "timeout"];
const FINAL = new Set(["completed", "failed", "killed", "killed_oom", "lost", "timeout"]);

const app = {
  session: null,           // {name, role, csrf}
  view: "overview",
  nodes: new Map(),        // name -> public_node (+ last_heartbeat, heartbeat)
  tasks: [],               // the tasks page shown
  latest: new Map(),       // task id -> its newest event (seq numbered), the last LATEST kept
  taskPage: {before: null, stack: [], next: null, more: 0},  // next: the older page's cursor
  counts: {},              // state -> count
  detail: null,            // {id, task, events, stream, offset, loading, again}
  vps: [],
  envs: null,
  events: null,            // the events WebSocket
  reconnectDelay: 500,
  pending: new Map(),      // coalesced reloads: key -> timer
  terminal: null,          // {ws, term, id}
};

// ---- small helpers ----------------------------------------------------------------------
const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function size(bytes) {
  if (bytes === null || bytes === undefined || bytes === "") return "-";
  const units = ["B", "K", "M", "G", "T"];
  let value = Number(bytes), unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return (unit === 0 ? String(value) : value.toFixed(value < 10 ? 1 : 0)) + units[unit];
}

function parseSize(text) {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$/i.exec(text);
  if (!match) throw new Error(`bad size ${JSON.stringify(text)}: use e.g. 512M or 2G`);
  const power = {"": 0, k: 1, m: 2, g: 3, t: 4}[match[2].toLowerCase()];
  const value = Math.floor(parseFloat(match[1]) * 1024 ** power);
  if (value <= 0) throw new Error("size must be positive");
  return value;
}

function when(seconds) {
  if (!seconds) return "-";
  return new Date(seconds * 1000).toLocaleString();
}

function ago(seconds) {
  if (!seconds) return "-";
  const delta = Math.max(0, Date.now() / 1000 - seconds);
  if (delta < 60) return `${delta.toFixed(1)} s ago`;
  if (delta < 3600) return `${Math.floor(delta / 60)} min ago`;
  return when(seconds);
}

function stateBadge(state) {
  return el("span", {class: `state state-${state}`}, state);
}

function isAdmin() { return app.session && app.session.role === "admin"; }

function notice(text, isError = false) {
  const box = $("#notice");
  box.textContent = text;
  box.className = isError ? "error" : "ok";
  box.hidden = !text;
}

/** Run a function once after a quiet moment, however often it is asked for meanwhile. */
function coalesce(key, fn, delay = 150) {
  if (app.pending.has(key)) return;
  app.pending.set(key, setTimeout(() => { app.pending.delete(key); fn(); }, delay));
}

// ---- the API ----------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = {"Accept": "application/json"};
  if (method !== "GET" && app.session && app.session.csrf) headers["X-CSRF-Token"] = app.session.csrf;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await response.json(); } catch (_) { data = null; }
  if (!response.ok) {
    const error = (data && data.error) || {};
    if (response.status === 401 && path !== "/api/v1/login") showLogin();
    throw new ApiError(response.status, error.code || "error",
                       error.message || `${method} ${path}: HTTP ${response.status}`);
  }
  return data;
}

function query(params) {
  const parts = Object.entries(params)
    .filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`);
  return parts.length ? `?${parts.join("&")}` : "";
}

/** Run an action from a button: errors go to the notice line, never unhandled. */
async function act(label, fn) {
  try {
    const result = await fn();
    notice(label);
    return result;
  } catch (error) {
    notice(`${error.code ? error.code + ": " : ""}${error.message}`, true);
    return null;
  }
}

// ---- sign in ----------------------------------------------------------------------------
function showLogin() {
  app.session = null;
  closeEvents();
  $("#login-view").hidden = false;
  $("#tabs").hidden = true;
  $("#whoami").hidden = true;
  $("#logout").hidden = true;
  $$(".view").forEach((v) => { v.hidden = true; });
  $("#terminal-pane").hidden = true;
  $("#login-token").focus();
}

async function login(event) {
  event.preventDefault();
  const error = $("#login-error");
  error.hidden = true;
  try {
    await api("POST", "/api/v1/login", {token: $("#login-token").value.trim()});
    $("#login-token").value = "";
    await startSession();
  } catch (err) {
    error.textContent = err.message;
    error.hidden = false;
  }
}

async function logout() {
  await act("signed out", () => api("POST", "/api/v1/logout", {}));
  showLogin();
}

async function startSession() {
  app.session = await api("GET", "/api/v1/session");
  $("#login-view").hidden = true;
  $("#tabs").hidden = false;
  $("#logout").hidden = false;
  const who = $("#whoami");
  who.textContent = `${app.session.name} (${app.session.role})`;
  who.hidden = false;
  document.body.classList.toggle("admin", isAdmin());
  openEvents();
  show(location.hash.slice(1) || app.view);
}

// ---- views ------------------------------------------------------------------------------
const VIEWS = {
  overview: loadOverview,
  nodes: loadNodes,
  tasks: loadTasks,
  submit: loadSubmit,
  vps: loadVps,
  envs: loadEnvs,
};

function show(view) {
  if (!VIEWS[view]) view = "overview";
  app.view = view;
  if (location.hash !== `#${view}`) history.replaceState(null, "", `#${view}`);
  $$(".view").forEach((v) => { v.hidden = v.id !== `view-${view}`; });
  $$("#tabs button").forEach((b) => b.classList.toggle("active", b.dataset.view === view));
  VIEWS[view]().then(() => {
    // The first view's data is on the screen: a mark the browser test reads (load time).
    if (!performance.getEntriesByName("zriver:first-view").length) performance.mark("zriver:first-view");
  }).catch((error) => notice(error.message, true));
}

// ---- overview ---------------------------------------------------------------------------
async function loadOverview() {
  await Promise.all([refreshNodes(), refreshCounts(), refreshChart()]);
}

/** The usage history (``usage.history``), drawn as one line per resource. */
async function refreshChart() {
  const range = Number($("#ov-range").value);
  const step = range <= 21600 ? 60 : range <= 172800 ? 900 : 3 * 3600;
  let reply;
  try {
    reply = await api("POST", "/api/v1/ops/usage.history", {since: Date.now() / 1000 - range, step});
  } catch (error) {
    $("#ov-chart-info").textContent = `no history: ${error.message}`;
    return;
  }
  renderChart(reply.samples || [], range);
}

function renderChart(samples, range) {
  const svg = $("#ov-chart");
  const width = 600, height = 160, end = Date.now() / 1000, start = end - range;
  const x = (at) => ((at - start) / range) * width;
  const y = (used, total) => height - (total > 0 ? (used / total) : 0) * (height - 4) - 2;
  const ns = "http://www.w3.org/2000/svg";
  const lines = [["cores", "cores_used", "cores_total"], ["memory", "memory_used", "memory_total"],
                 ["gpus", "gpus_used", "gpus_total"]];
  svg.replaceChildren();
  svg.dataset.samples = String(samples.length);
  for (const level of [0.25, 0.5, 0.75]) {
    const grid = document.createElementNS(ns, "line");
    Object.entries({x1: 0, x2: width, y1: y(level, 1), y2: y(level, 1), class: "grid-line"})
      .forEach(([k, v]) => grid.setAttribute(k, v));
    svg.append(grid);
  }
  for (const [name, used, total] of lines) {
    if (!samples.some((s) => s[total] > 0)) continue;
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("class", `line-${name}`);
    line.setAttribute("points", samples.map((s) => `${x(s.at).toFixed(1)},${y(s[used], s[total]).toFixed(1)}`).join(" "));
    svg.append(line);
  }
  $("#ov-chart-info").textContent = samples.length
    ? `${samples.length} samples since ${when(samples[0].at)}` : "no samples yet (one a minute)";
}

function renderOverview() {
  const nodes = Array.from(app.nodes.values());
  const online = nodes.filter((n) => n.state === "online");
  const sum = (list, f) => list.reduce((total, n) => total + (Number(f(n)) || 0), 0);
  const cores = sum(online, (n) => n.cores), coresUsed = sum(online, (n) => n.cores_used);
  const memory = sum(online, (n) => n.memory), memoryUsed = sum(online, (n) => n.memory_used);
  const gpus = sum(online, (n) => (n.gpus || []).length);
  const gpusFree = sum(online, (n) => (n.gpus_free || []).length);
  $("#ov-nodes").textContent = `${online.length} / ${nodes.length}`;
  $("#ov-cores").textContent = `${coresUsed} / ${cores - coresUsed}`;
  $("#ov-memory").textContent = `${size(memoryUsed)} / ${size(Math.max(0, memory - memoryUsed))}`;
  $("#ov-gpus").textContent = `${gpus - gpusFree} / ${gpusFree}`;
  const body = $("#ov-states tbody");
  body.replaceChildren(...STATES.filter((s) => app.counts[s]).map((state) =>
    el("tr", {dataset: {state}}, el("td", {}, stateBadge(state)),
       el("td", {class: "num"}, app.counts[state]))));
  if (!body.children.length) body.append(el("tr", {}, el("td", {colspan: 2}, "no tasks")));
}

/** Tasks by state (task.counts): unfinished ones exact, finished ones exact up to the host's
 * cap ("100000+" above it). */
async function refreshCounts() {
  const reply = await api("GET", "/api/v1/counts");
  const capped = new Set(reply.capped || []);
  app.counts = Object.fromEntries(Object.entries(reply.counts).map(
    ([state, n]) => [state, capped.has(state) ? `${n}+` : n]));
  renderOverview();
}

// ---- nodes ------------------------------------------------------------------------------
async function loadNodes() {
  await refreshNodes();
}

async function refreshNodes() {
  const reply = await api("GET", "/api/v1/nodes");
  const seen = new Set();
  for (const node of reply.nodes) {
    const old = app.nodes.get(node.name) || {};
    app.nodes.set(node.name, {...old, ...node});
    seen.add(node.name);
  }
  for (const name of Array.from(app.nodes.keys())) if (!seen.has(name)) app.nodes.delete(name);
  renderNodes();
  renderOverview();
  fillTargets();
  fillTargetPickers();
}

function gpuCell(node) {
  const gpus = node.gpus || [];
  if (!gpus.length) return "-";
  const free = new Set((node.gpus_free || []).map(String));
  const live = (node.heartbeat && node.heartbeat.gpus) || [];
  return el("div", {class: "gpus"}, gpus.map((gpu, i) => {
    const index = gpu.index !== undefined ? gpu.index : i;
    const now = live.find((g) => g.index === index || (g.uuid && g.uuid === gpu.uuid)) || {};
    const bits = [`#${index}`, gpu.name || "", free.has(String(index)) ? "free" : "busy"];
    if (now.utilization !== undefined) bits.push(`${now.utilization}%`);
    if (now.memory_used !== undefined) bits.push(size(now.memory_used));
    if (now.temperature !== undefined) bits.push(`${now.temperature}°C`);
    return el("div", {}, bits.filter(Boolean).join(" "));
  }));
}

function nodeRow(node) {
  const state = node.drained ? `${node.state}, drained` : node.state;
  const heartbeat = node.last_heartbeat || node.last_seen;
  const actions = isAdmin() ? (node.drained
    ? el("button", {type: "button", class: "small", onclick: () => drainNode(node.name, false)}, "undrain")
    : el("button", {type: "button", class: "small", onclick: () => drainNode(node.name, true)}, "drain")) : "";
  return el("tr", {dataset: {node: node.name}},
    el("td", {}, node.name), el("td", {class: "node-state"}, stateBadge(state)),
    el("td", {}, `${node.cores_used}/${node.cores}`),
    el("td", {}, `${size(node.memory_used)}/${size(node.memory)}`),
    el("td", {}, node.numa_zones),
    el("td", {class: "gpu-cell"}, gpuCell(node)),
    el("td", {}, (node.backends || []).join(", ") + (node.docker === false ? " (docker down)" : "")),
    el("td", {class: "heartbeat"}, ago(heartbeat)),
    el("td", {}, node.version),
    el("td", {}, actions));
}

function renderNodes() {
  const body = $("#nodes-table tbody");
  const nodes = Array.from(app.nodes.values()).sort((a, b) => a.name.localeCompare(b.name));
  body.replaceChildren(...nodes.map(nodeRow));
  if (!nodes.length) body.append(el("tr", {}, el("td", {colspan: 10}, "no nodes")));
}

function renderHeartbeats() {
  for (const row of $$("#nodes-table tr[data-node]")) {
    const node = app.nodes.get(row.dataset.node);
    const cell = $("td.heartbeat", row);
    if (node && cell) cell.textContent = ago(node.last_heartbeat || node.last_seen);
    const gpus = $("td.gpu-cell", row);  // utilisation, memory, temperature: from heartbeats
    if (node && gpus && (node.gpus || []).length) gpus.replaceChildren(gpuCell(node));
  }
}

async function drainNode(name, drain) {
  await act(`${drain ? "drained" : "undrained"} ${name}`, () =>
    api("POST", `/api/v1/nodes/${encodeURIComponent(name)}/${drain ? "drain" : "undrain"}`, {}));
  await refreshNodes();
}

// ---- tasks ------------------------------------------------------------------------------
function taskFilter() {
  const form = $("#task-filter");
  return {
    state: form.state.value, owner: form.owner.value.trim(), node: form.node.value.trim(),
    batch: form.batch.value.trim(), name: form.name.value.trim(), limit: Number(form.limit.value),
  };
}

function matchesFilter(task, filter) {
  return (!filter.state || task.state === filter.state) &&
    (!filter.owner || task.owner === filter.owner) &&
    (!filter.node || task.node === filter.node) &&
    (!filter.batch || String(task.batch_id) === filter.batch) &&
    (!filter.name || (task.name || "").includes(filter.name));
}

async function loadTasks() {
  await refreshTasks();
}

/** Task events remembered for rows read while they were on their way. */
const LATEST = 5000;

/** ``task`` as read at the host's event ``seq``, brought up to a newer event already
 * applied (rows and events travel apart: a page read in the tick a task started could
 * arrive after its start's event and would show it assigned for good). */
function newest(task, seq) {
  const event = app.latest.get(task.id);
  const read = typeof seq === "number" ? seq : 0;
  if (!event || event.seq <= read) return {...task, seq: read};
  return {...task, state: event.state, node: event.node, exit_code: event.exit_code,
          detail: event.detail, attempt: event.attempt, seq: event.seq};
}

function remember(body) {
  if (typeof body.seq !== "number") return;
  app.latest.delete(body.id);
  app.latest.set(body.id, body);
  if (app.latest.size > LATEST) app.latest.delete(app.latest.keys().next().value);
}

async function refreshTasks() {
  const filter = taskFilter();
  const reply = await api("GET", `/api/v1/tasks${query({...filter, before: app.taskPage.before})}`);
  app.tasks = reply.tasks.map((task) => newest(task, reply.seq));
  app.taskPage.next = reply.next ?? null;
  app.taskPage.more = reply.more || 0;
  app.taskPage.moreExact = reply.more_exact !== false;
  renderTasks();
}

function commandText(command) {
  return (command || []).map((part) => (/^[\w@%+=:,./-]+$/.test(part) ? part : `'${part.replace(/'/g, "'\\''")}'`)).join(" ");
}

function taskRow(task) {
  return el("tr", {dataset: {task: task.id}, class: "clickable", onclick: () => openTask(task.id)},
    el("td", {}, task.id), el("td", {}, task.name || "-"), el("td", {}, task.owner),
    el("td", {class: "task-state"}, stateBadge(task.state)), el("td", {}, task.node || "-"),
    el("td", {class: "command"}, commandText(task.command)), el("td", {}, task.cores),
    el("td", {}, size(task.memory)), el("td", {}, task.gpus), el("td", {}, when(task.submitted_at)),
    el("td", {}, task.exit_code === null || task.exit_code === undefined ? "" : task.exit_code));
}

function renderTasks() {
  const body = $("#tasks-table tbody");
  body.replaceChildren(...app.tasks.map(taskRow));
  if (!app.tasks.length) body.append(el("tr", {}, el("td", {colspan: 11}, "no tasks")));
  const ids = app.tasks.map((t) => t.id);
  const more = app.taskPage.next === null ? ""
    : ` · ${app.taskPage.more.toLocaleString()}${app.taskPage.moreExact ? "" : "+"} more`;
  $("#page-info").textContent = ids.length
    ? `tasks ${Math.min(...ids)}-${Math.max(...ids)}${more}` : "";
  $("#page-older").disabled = app.taskPage.next === null;
  $("#page-newer").disabled = !app.taskPage.stack.length;
}

function pageOlder() {
  if (app.taskPage.next === null) return;
  app.taskPage.stack.push(app.taskPage.before);
  app.taskPage.before = app.taskPage.next;
  refreshTasks().catch((e) => notice(e.message, true));
}

function pageNewer() {
  app.taskPage.before = app.taskPage.stack.length ? app.taskPage.stack.pop() : null;
  refreshTasks().catch((e) => notice(e.message, true));
}

function pageNewest() {
  app.taskPage = {before: null, stack: [], next: null, more: 0};
  refreshTasks().catch((e) => notice(e.message, true));
}

/** The summary of a big submit (count tasks, no event of their own): the first page and the
 * counts are read again. */
function onBatchEvent(body) {
  if (app.taskPage.before === null) coalesce("tasks-refresh", () => refreshTasks().catch(() => {}), 200);
  coalesce("counts", () => refreshCounts().catch(() => {}), 500);
}

/** A task event: update the row in place; a new task on the first page is fetched and shown. */
function onTaskEvent(body) {
  remember(body);
  const index = app.tasks.findIndex((t) => t.id === body.id);
  const included = index >= 0 && (body.seq || 0) > 0 && (app.tasks[index].seq || 0) >= body.seq;
  if (index >= 0 && !included) {  // (an event the row, read after it, already includes: none)
    const task = {...app.tasks[index], state: body.state, node: body.node,
                  exit_code: body.exit_code, detail: body.detail, attempt: body.attempt,
                  seq: body.seq || 0};
    app.tasks[index] = task;
    const row = $(`#tasks-table tr[data-task="${body.id}"]`);
    if (row) row.replaceWith(taskRow(task));
  } else if (index < 0 && app.taskPage.before === null && matchesFilter(body, taskFilter())) {
    // A task this page has not shown (new, or newly matching): one re-read of the first
    // page for however many arrive together (a sweep of thousands is one request).
    coalesce("tasks-refresh", () => refreshTasks().catch(() => {}), 200);
  }
  if (app.detail && app.detail.id === body.id) coalesce("detail", refreshDetail, 50);
  coalesce("counts", () => refreshCounts().catch(() => {}), 500);
  if (app.view === "overview") coalesce("chart", () => refreshChart().catch(() => {}), 5000);
  coalesce("nodes", () => refreshNodes().catch(() => {}), 300);
  if (app.view === "vps") coalesce("vps", () => refreshVps().catch(() => {}), 300);
}

// ---- a task's details and its output ----------------------------------------------------
async function openTask(id) {
  if (app.view !== "tasks") show("tasks");
  app.detail = {id, task: null, events: [], stream: "stdout", offset: 0, loading: false, again: false};
  $$("input[name=td-stream]").forEach((r) => { r.checked = r.value === "stdout"; });
  $("#td-log").textContent = "";
  $("#task-detail").hidden = false;
  await refreshDetail();
  $("#task-detail").scrollIntoView({block: "nearest"});
}

function closeTask() {
  app.detail = null;
  $("#task-detail").hidden = true;
}

async function refreshDetail() {
  const detail = app.detail;
  if (!detail) return;
  const reply = await api("GET", `/api/v1/tasks/${detail.id}`);
  if (app.detail !== detail) return;
  detail.task = newest(reply.task, reply.seq);
  detail.events = reply.events;
  renderDetail();
  followLog();
}

function renderDetail() {
  const {task, events} = app.detail;
  $("#td-id").textContent = task.id;
  $("#td-state").replaceChildren(stateBadge(task.state));
  $("#td-state").dataset.state = task.state;
  const fields = [
    ["name", task.name || "-"], ["owner", task.owner], ["node", task.node || "-"],
    ["command", commandText(task.command)], ["cores", task.cores], ["memory", size(task.memory)],
    ["gpus", task.gpus], ["target", task.target || "auto"], ["backend", task.backend],
    ["container", task.container || "-"], ["env version", task.env_version || "-"],
    ["attempt", task.attempt], ["exit code", task.exit_code ?? "-"], ["detail", task.detail || "-"],
    ["submitted", when(task.submitted_at)], ["started", when(task.started_at)],
    ["finished", when(task.finished_at)], ["batch", task.batch_id ?? "-"],
    ["allocated cores", (task.allocated_cores || []).join(",") || "-"],
    ["allocated gpus", (task.allocated_gpus || []).join(",") || "-"],
  ];
  $("#td-fields").replaceChildren(...fields.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  $("#td-history tbody").replaceChildren(...events.map((e) =>
    el("tr", {}, el("td", {}, when(e.at)), el("td", {}, stateBadge(e.state)), el("td", {}, e.detail || ""))));
  const live = !FINAL.has(task.state);
  const action = (name) => $(`#task-detail [data-task-action=${name}]`);
  action("kill").disabled = !live;
  action("pause").disabled = task.state !== "running";
  action("resume").disabled = task.state !== "paused";
  $("#td-terminal").hidden = !(task.state === "running" && task.backend === "docker");
}

async function taskAction(name) {
  const id = app.detail && app.detail.id;
  if (!id) return;
  await act(`task ${id}: ${name} sent`, () => api("POST", `/api/v1/tasks/${id}/${name}`, {}));
  coalesce("detail", refreshDetail, 0);
}

const LOG_READ = 256 * 1024;  // bytes asked for per log read

/** How many bytes of the log a reply covers. The API sends the bytes as UTF-8 text with bad
 * bytes replaced: without a replacement character the text's UTF-8 length is exact; with
 * one, the slice's own length (what read_slice read: the limit, or up to the file's size). */
function logBytesRead(reply, text, byteLength, offset) {
  if (!text.includes("\uFFFD") || reply.size === undefined) return byteLength;
  return Math.max(0, Math.min(LOG_READ, reply.size - offset));
}

function decodeLogData(reply) {
  // Text or {"data_base64"}/"encoding": "base64" (bytes): count bytes for the next offset.
  let bytes;
  if (reply.encoding === "base64" || reply.data_base64 !== undefined) {
    const raw = atob(reply.data_base64 !== undefined ? reply.data_base64 : reply.data);
    bytes = Uint8Array.from(raw, (c) => c.charCodeAt(0));
  } else {
    bytes = new TextEncoder().encode(reply.data || "");
  }
  return {bytes, text: new TextDecoder().decode(bytes)};
}

/** Read the followed stream from where the page is; called on events, never on a timer. */
async function followLog() {
  const detail = app.detail;
  if (!detail) return;
  if (detail.loading) { detail.again = true; return; }
  detail.loading = true;
  try {
    for (;;) {
      detail.again = false;
      const stream = detail.stream;
      const reply = await api("GET", `/api/v1/tasks/${detail.id}/logs${query({stream, offset: detail.offset, limit: LOG_READ})}`);
      if (app.detail !== detail || detail.stream !== stream) return;
      const {bytes, text} = decodeLogData(reply);
      const start = reply.offset !== undefined ? reply.offset : detail.offset;
      if (start === detail.offset && bytes.length) {
        const pre = $("#td-log");
        const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        pre.append(text);
        detail.offset += logBytesRead(reply, text, bytes.length, detail.offset);
        if (atBottom && $("#td-follow").checked) pre.scrollTop = pre.scrollHeight;
      }
      const more = reply.size !== undefined && detail.offset < reply.size;
      if (!more && !detail.again) break;
    }
  } catch (error) {
    if (error.status !== 404) notice(`logs: ${error.message}`, true);
  } finally {
    detail.loading = false;
  }
}

function switchStream() {
  if (!app.detail) return;
  app.detail.stream = $("input[name=td-stream]:checked").value;
  app.detail.offset = 0;
  $("#td-log").textContent = "";
  followLog();
}

function followWanted() {
  return app.detail && app.detail.task && $("#td-follow").checked && !FINAL.has(app.detail.task.state);
}

// ---- submit -----------------------------------------------------------------------------
async function loadSubmit() {
  await Promise.all([refreshNodes(), refreshEnvChoices()]);
  previewCommand();
}

function fillTargets() {
  const list = $("#target-list");
  const options = ["auto"];
  for (const node of app.nodes.values()) {
    options.push(node.name);
    // Target syntax (zriver.spec.parse_target): NODE, NODE:ZONE, NODE::GPU[,GPU], NODE:ZONE:GPU.
    for (let z = 0; node.numa_zones > 1 && z < node.numa_zones; z++) options.push(`${node.name}:${z}`);
    (node.gpus || []).forEach((gpu, i) => options.push(`${node.name}::${gpu.index ?? i}`));
  }
  list.replaceChildren(...options.map((value) => el("option", {value})));
}

/** The task form's target pickers, from the live inventory: a node (online ones; "any": no
 * target), that node's NUMA zones, its GPUs (busy ones disabled); they compose the read-only
 * target (zriver.spec.parse_target: NODE, NODE:ZONE, NODE::GPU[,GPU], NODE:ZONE:GPU[,...]). */
function fillTargetPickers() {
  const form = $("#submit-form");
  const nodeSelect = form.t_node, zoneSelect = form.t_zone, box = $("#t-gpus");
  const online = Array.from(app.nodes.values()).filter((n) => n.state === "online")
    .sort((a, b) => a.name.localeCompare(b.name));
  const setOptions = (select, values) => {  // rebuilt only when they change (keeps it open)
    const keep = select.value;
    const now = Array.from(select.options).slice(1).map((o) => o.value);
    if (now.join("\n") !== values.join("\n")) {
      select.replaceChildren(el("option", {value: ""}, "any"),
        ...values.map((value) => el("option", {value}, value)));
    }
    select.value = values.includes(keep) ? keep : "";
  };
  setOptions(nodeSelect, online.map((n) => n.name));
  const node = app.nodes.get(nodeSelect.value);
  const zones = node ? Math.max(1, Number(node.numa_zones) || 1) : 0;
  setOptions(zoneSelect, Array.from({length: zones}, (_, z) => String(z)));
  zoneSelect.disabled = !node;
  const free = new Set(((node && node.gpus_free) || []).map(String));
  const checked = box.dataset.node === nodeSelect.value
    ? new Set($$("input[type=checkbox]:checked", box).map((c) => c.value)) : new Set();
  box.dataset.node = nodeSelect.value;
  const gpus = node ? (node.gpus || []) : [];
  if (!gpus.length) box.replaceChildren(node ? "none on this node" : "pick a node");
  else {
    box.replaceChildren(...gpus.map((gpu, i) => {
      const index = String(gpu.index !== undefined ? gpu.index : i);
      const busy = !free.has(index);
      const input = el("input", {type: "checkbox", name: "t_gpu", value: index, onchange: composeTarget});
      input.disabled = busy;
      input.checked = !busy && checked.has(index);
      return el("label", {class: busy ? "gpu-pick busy" : "gpu-pick", title: gpu.name || ""},
                input, ` ${index}${busy ? " (busy)" : ""}`);
    }));
  }
  composeTarget();
}

function composeTarget() {
  const form = $("#submit-form");
  const node = form.t_node.value, zone = form.t_zone.value;
  const gpus = $$("#t-gpus input[type=checkbox]:checked").map((c) => c.value);
  let target = node;
  if (node && zone !== "") target += `:${zone}`;
  if (node && gpus.length) target += `${zone !== "" ? ":" : "::"}${gpus.join(",")}`;
  form.target.value = target;
}

async function refreshEnvChoices() {
  let envs = [];
  try { envs = (await api("GET", "/api/v1/envs")).envs || []; } catch (_) { envs = []; }
  for (const select of $$("select[name=container]")) {
    const keep = select.value;
    const first = select.options[0];
    select.replaceChildren(first, ...envs.map((env) => el("option", {value: env.name}, env.name)));
    select.value = keep;
  }
}

function splitWords(text) {
  const words = [];
  let word = null, quote = null;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quote) {
      if (c === quote) quote = null;
      else if (c === "\\" && quote === '"' && i + 1 < text.length) word += text[++i];
      else word += c;
    } else if (c === "'" || c === '"') { quote = c; word = word ?? ""; }
    else if (c === "\\" && i + 1 < text.length) { word = (word ?? "") + text[++i]; }
    else if (/\s/.test(c)) { if (word !== null) { words.push(word); word = null; } }
    else word = (word ?? "") + c;
  }
  if (quote) throw new Error("unclosed quote in the command");
  if (word !== null) words.push(word);
  return words;
}

function commandFromForm(form) {
  const text = form.command.value.trim();
  if (!text) return [];
  const mode = form.shell.value;
  const shelly = /[;&|<>$`(){}*?~#\n]/.test(text.replace(SPAN, ""));
  if (mode === "sh" || (mode === "auto" && shelly)) return ["sh", "-c", text];
  return splitWords(text);
}

// Sweeps, as zriver.sweep: span:{1..4} and span:[a,b] anywhere in a word expand to the
// Cartesian product of the commands, the first span varying slowest. The page counts a sweep
// and makes only the commands it shows; the host expands what it is sent.
const SPAN = /span:(\{(-?\d+)\.\.(-?\d+)\}|\[([^\[\]]*)\])/g;
const MAX_SWEEP = 1000000;

function spanLength(match) {
  if (match[2] !== undefined) return Math.abs(Number(match[3]) - Number(match[2])) + 1;
  const items = match[4].split(",").map((item) => item.trim());
  if (!items.every(Boolean)) throw new Error(`bad span ${match[0]}: empty value in the list`);
  return items.length;
}

function spanValue(match, index) {
  if (match[2] !== undefined) {
    const low = Number(match[2]), high = Number(match[3]);
    return String(high >= low ? low + index : low - index);
  }
  return match[4].split(",")[index].trim();
}

// {total, commands}: how many commands the sweep makes, and the first `limit` of them.
function expandSweep(command, limit = Infinity) {
  const slots = [];
  command.forEach((word, index) => {
    if (!word.includes("span:")) return;
    const matches = Array.from(word.matchAll(SPAN));
    if (!matches.length) throw new Error(`bad span in ${JSON.stringify(word)}: use span:{1..4} or span:[a,b]`);
    matches.forEach((match) => slots.push({index, match}));
  });
  if (!slots.length) return {total: 1, commands: [command.slice()]};
  const lengths = slots.map((slot) => spanLength(slot.match));
  const total = lengths.reduce((n, length) => n * length, 1);
  if (total > MAX_SWEEP) {
    throw new Error(`this sweep has ${total} tasks; at most ${MAX_SWEEP} in one submit: split it`);
  }
  // Replace from the right within a word so earlier offsets stay valid.
  const order = slots.map((slot, i) => i).sort((a, b) =>
    slots[a].index - slots[b].index || slots[b].match.index - slots[a].match.index);
  const commands = [];
  for (let n = 0; n < Math.min(total, limit); n++) {
    let rest = n;
    const combo = new Array(slots.length);
    for (let i = slots.length - 1; i >= 0; i--) {
      combo[i] = rest % lengths[i];
      rest = Math.floor(rest / lengths[i]);
    }
    const words = command.slice();
    for (const i of order) {
      const {index, match} = slots[i];
      const word = words[index];
      words[index] = word.slice(0, match.index) + spanValue(match, combo[i]) + word.slice(match.index + match[0].length);
    }
    commands.push(words);
  }
  return {total, commands};
}

const PREVIEW_SHOWN = 20;

function previewCommand() {
  const form = $("#submit-form");
  const box = $("#submit-preview");
  try {
    const {total, commands} = expandSweep(commandFromForm(form), PREVIEW_SHOWN);
    const shown = commands.map((c) => el("li", {}, el("code", {}, JSON.stringify(c))));
    if (total > PREVIEW_SHOWN) shown.push(el("li", {}, `... ${total - PREVIEW_SHOWN} more`));
    $("#submit-count").textContent = total === 1 ? "1 task" : `${total} tasks (a sweep)`;
    box.replaceChildren(...shown);
  } catch (error) {
    $("#submit-count").textContent = "";
    box.replaceChildren(el("li", {class: "error"}, error.message));
  }
}

function parseEnvironment(text) {
  const env = {};
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    const at = line.indexOf("=");
    if (at <= 0) throw new Error(`environment: ${JSON.stringify(line)} is not KEY=VALUE`);
    env[line.slice(0, at).trim()] = line.slice(at + 1);
  }
  return env;
}

function intField(input, fallback) {
  const text = input.value.trim();
  return text === "" ? fallback : Number.parseInt(text, 10);
}

function backendFields(backend, container) {
  if (container) return {backend: "docker", container};
  return {backend: backend || "auto"};
}

function taskSpecFromForm(form) {
  const spec = {
    command: commandFromForm(form), name: form.name.value.trim(),
    cores: intField(form.cores, 1), gpus: intField(form.gpus, 0),
    memory: form.memory.value.trim() ? parseSize(form.memory.value) : null,
    target: form.target.value.trim() && form.target.value.trim() !== "auto" ? form.target.value.trim() : null,
    env: parseEnvironment(form.environment.value),
    priority: intField(form.priority, 0), retries: intField(form.retries, 0),
    time_limit: intField(form.time_limit, null),
    ...backendFields(form.backend.value, form.container.value),
  };
  if (form.env_version.value.trim()) spec.env_version = form.env_version.value.trim();
  if (form.workdir.value.trim()) spec.workdir = form.workdir.value.trim();
  if (isAdmin() && form.user.value.trim()) spec.user = form.user.value.trim();
  return spec;
}

function vpsSpecFromForm(form) {
  const keys = form.public_key.value.split("\n").map((l) => l.trim()).filter(Boolean);
  return {
    kind: "vps", command: [], name: form.name.value.trim(), cores: intField(form.cores, 1),
    gpus: intField(form.gpus, 0), memory: form.memory.value.trim() ? parseSize(form.memory.value) : null,
    target: form.target.value.trim() && form.target.value.trim() !== "auto" ? form.target.value.trim() : null,
    ssh_keys: keys, idle_stop: intField(form.idle_stop, null),
    ...backendFields("auto", form.container.value),
  };
}

function submitSpec(spec, result) {
  return submitBody({tasks: [spec]}, result);
}

// A task.submit body: {tasks: [spec]}, or {sweep: {spec}} (the host expands the spans).
async function submitBody(body, result) {
  result.textContent = "";
  result.className = "result";
  try {
    const reply = await api("POST", "/api/v1/tasks", body);
    result.replaceChildren(`submitted task${reply.ids.length > 1 ? "s" : ""} `,
      ...reply.ids.slice(0, PREVIEW_SHOWN).map((id) => el("a", {href: "#tasks", class: "task-link", dataset: {task: id},
                                        onclick: (e) => { e.preventDefault(); openTask(id); }}, `${id} `)));
    if (reply.ids.length > PREVIEW_SHOWN) result.append(`... (batch ${reply.batch_id})`);
    result.dataset.ids = reply.ids.join(",");
  } catch (error) {
    result.textContent = `${error.code ? error.code + ": " : ""}${error.message}`;
    result.className = "result error";
  }
}

function onSubmitTask(event) {
  event.preventDefault();
  const result = $("#submit-result");
  let spec;
  try { spec = taskSpecFromForm(event.target); } catch (error) {
    result.textContent = error.message; result.className = "result error"; return;
  }
  let body;
  try {  // the spans are checked here first; the host expands them (a sweep is one small body)
    body = expandSweep(spec.command, 0).total > 1 ? {sweep: {spec}} : {tasks: [spec]};
  } catch (error) {
    result.textContent = error.message; result.className = "result error"; return;
  }
  submitBody(body, result);
}

function onSubmitVps(event) {
  event.preventDefault();
  const result = $("#vps-result");
  let spec;
  try { spec = vpsSpecFromForm(event.target); } catch (error) {
    result.textContent = error.message; result.className = "result error"; return;
  }
  submitSpec(spec, result);
}

// ---- VPS --------------------------------------------------------------------------------
async function loadVps() {
  await refreshVps();
}

async function refreshVps() {
  app.vps = (await api("GET", "/api/v1/vps")).vps || [];
  renderVps();
}

function vpsRow(vps) {
  const running = vps.state === "running";
  const connect = vps.host_key ? `zriver ssh ${vps.id}` : `zriver connect ${vps.id}`;
  return el("tr", {dataset: {vps: vps.id}},
    el("td", {}, vps.id), el("td", {}, vps.name || "-"), el("td", {}, vps.owner),
    el("td", {}, stateBadge(vps.state)), el("td", {}, vps.node || "-"), el("td", {}, vps.cores),
    el("td", {}, size(vps.memory)), el("td", {}, vps.gpus), el("td", {}, vps.env || "-"),
    el("td", {}, when(vps.started_at)), el("td", {}, vps.streams),
    el("td", {}, vps.cpu_percent === null || vps.cpu_percent === undefined ? "-" : Number(vps.cpu_percent).toFixed(1)),
    el("td", {}, el("code", {}, connect)),
    el("td", {class: "buttons"},
      el("button", {type: "button", class: "small", disabled: !running, onclick: () => vpsAction(vps.id, "stop")}, "stop"),
      el("button", {type: "button", class: "small", onclick: () => vpsAction(vps.id, "restart")}, "restart"),
      el("button", {type: "button", class: "small", disabled: !running, onclick: () => openTerminal(vps.id)}, "terminal")));
}

function renderVps() {
  const body = $("#vps-table tbody");
  body.replaceChildren(...app.vps.map(vpsRow));
  if (!app.vps.length) body.append(el("tr", {}, el("td", {colspan: 14}, "no VPS")));
}

async function vpsAction(id, name) {
  await act(`VPS ${id}: ${name} sent`, () => api("POST", `/api/v1/vps/${id}/${name}`, {}));
  await refreshVps();
}

// ---- envs -------------------------------------------------------------------------------
async function loadEnvs() {
  const reply = await api("GET", "/api/v1/envs");
  app.envs = reply;
  renderEnvs();
}

function envBlock(env) {
  const nodes = Object.entries(env.nodes || {}).map(([node, have]) =>
    `${node}: ${(have.versions || []).join(", ") || "-"}${have.syncing ? ` (syncing ${have.syncing})` : ""}`);
  return el("div", {class: "env card", dataset: {env: env.name}},
    el("h2", {}, env.name, " ", el("span", {class: "hint"}, env.container_state || "")),
    el("p", {}, `owner ${env.owner || "-"}, from ${env.source || "-"} (${env.base_image || "-"}), created ${when(env.created_at)}`),
    el("table", {class: "grid"},
      el("thead", {}, el("tr", {}, ["version", "size", "created", "message", "tasks", "sha256"].map((h) => el("th", {}, h)))),
      el("tbody", {}, (env.versions || []).map((v) => el("tr", {},
        el("td", {}, v.version), el("td", {}, size(v.size)), el("td", {}, when(v.created_at)),
        el("td", {}, v.message || ""), el("td", {}, v.tasks ?? ""),
        el("td", {class: "digest"}, (v.sha256 || "").slice(0, 16)))))),
    el("p", {class: "hint"}, nodes.length ? `on nodes: ${nodes.join("; ")}` : "on no node yet"),
    el("form", {class: "inline env-commit", onsubmit: (event) => commitEnv(event, env.name)},
      el("label", {}, "message ", el("input", {name: "message", size: 30})),
      el("button", {type: "submit"}, "Commit a new version")),
    el("button", {type: "button", class: "env-shell", onclick: () => openEnvShell(env.name)}, "Shell"));
}

/** A shell in the env's container on the host (env.shell: owner or admin), in the terminal pane. */
function openEnvShell(name) {
  return openTerminal(name, `/api/v1/envs/${encodeURIComponent(name)}/terminal`, `env ${name}`);
}

/** ``env.commit``: the env's container as its newest version (owner or admin). */
async function commitEnv(event, name) {
  event.preventDefault();
  const form = event.target;
  const button = $("button", form);
  button.disabled = true;
  try {
    const reply = await act(`env ${name}: committed`, () =>
      api("POST", "/api/v1/ops/env.commit", {name, message: form.message.value}));
    if (reply) notice(`env ${name}: version ${reply.version} committed`);
    await loadEnvs();
  } finally {
    button.disabled = false;
  }
}

function renderEnvs() {
  const {envs = [], store, docker = {}} = app.envs || {};
  $("#envs-info").textContent = `store ${store || "-"}; Docker ${docker.available ? "available" : `unavailable${docker.error ? ": " + docker.error : ""}`}`;
  const list = $("#envs-list");
  list.replaceChildren(...envs.map(envBlock));
  if (!envs.length) list.append(el("p", {}, "no envs (make one with zriver env create)"));
}

// ---- terminal ---------------------------------------------------------------------------
function wsUrl(path) {
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}${path}`;
}

let xtermLoading = null;

/** xterm.js (vendored) is loaded the first time a terminal opens, not with the page. */
function loadXterm() {
  if (window.Terminal) return Promise.resolve();
  if (!xtermLoading) {
    xtermLoading = new Promise((resolve, reject) => {
      const script = el("script", {src: "/static/vendor/xterm/xterm.js"});
      script.onload = resolve;
      script.onerror = () => { xtermLoading = null; reject(new Error("could not load xterm.js")); };
      document.head.append(script);
    });
  }
  return xtermLoading;
}

/** A terminal over the WebSocket at ``path``: a task's (default) or an env's shell. */
async function openTerminal(id, path = `/api/v1/terminal/${id}`, label = `task ${id}`) {
  closeTerminal();
  try { await loadXterm(); } catch (error) { notice(error.message, true); return; }
  const pane = $("#terminal-pane");
  pane.hidden = false;
  $("#term-id").textContent = label;
  $("#term-status").textContent = "connecting";
  const box = $("#terminal");
  box.replaceChildren();
  const term = new window.Terminal({cols: 100, rows: 28, convertEol: false, cursorBlink: true});
  term.open(box);
  const ws = new WebSocket(wsUrl(`${path}${query({cols: term.cols, rows: term.rows})}`));
  ws.binaryType = "arraybuffer";
  const encoder = new TextEncoder();
  app.terminal = {ws, term, id};
  ws.onopen = () => {
    $("#term-status").textContent = "connected";
    ws.send(JSON.stringify({resize: [term.cols, term.rows]}));
    term.focus();
  };
  ws.onmessage = (message) => {
    if (typeof message.data === "string") {
      let info;
      try { info = JSON.parse(message.data); } catch (_) { info = {message: message.data}; }
      const text = info.error ? (info.error.message || JSON.stringify(info.error))
        : info.exit !== undefined ? `exit ${info.exit}` : (info.message || message.data);
      term.write(`\r\n[${text}]\r\n`);
    } else {
      term.write(new Uint8Array(message.data));
    }
  };
  ws.onclose = (event) => {
    const why = event.reason || (event.code === 1000 ? "" : `code ${event.code}`);
    $("#term-status").textContent = why ? `closed (${why})` : "closed";
    if (why) term.write(`\r\n[${why}]\r\n`);
  };
  term.onData((data) => { if (ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(data)); });
  term.onResize(({cols, rows}) => {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({resize: [cols, rows]}));
  });
  pane.scrollIntoView({block: "nearest"});
}

function closeTerminal() {
  if (!app.terminal) return;
  try { app.terminal.ws.close(); } catch (_) { /* already closed */ }
  app.terminal.term.dispose();
  app.terminal = null;
  $("#terminal-pane").hidden = true;
}

// ---- the event stream -------------------------------------------------------------------
function setLive(on) {
  const live = $("#live");
  live.textContent = on ? "live" : "offline";
  live.className = `live ${on ? "on" : "off"}`;
}

function openEvents() {
  closeEvents();
  const ws = new WebSocket(wsUrl("/api/v1/events"));
  app.events = ws;
  ws.onopen = () => {
    app.reconnectDelay = 500;
    setLive(true);
    if (app.reconnected) VIEWS[app.view]().catch(() => {});  // catch up on what passed while away
    app.reconnected = true;
  };
  ws.onmessage = (message) => {
    let event;
    try { event = JSON.parse(message.data); } catch (_) { return; }
    onEvent(event);
  };
  ws.onclose = () => {
    setLive(false);
    if (app.events !== ws || !app.session) { app.reconnected = false; return; }
    app.events = null;
    // Reconnect after a growing pause (not polling: one attempt per lost connection).
    setTimeout(() => { if (app.session && !app.events) openEvents(); }, app.reconnectDelay);
    app.reconnectDelay = Math.min(app.reconnectDelay * 2, 10000);
  };
}

function closeEvents() {
  if (!app.events) return;
  const ws = app.events;
  app.events = null;
  app.reconnected = false;
  ws.close();
  setLive(false);
}

function onEvent(event) {
  const topic = event.topic || "";
  const body = event.body || {};
  if (topic.startsWith("evt.task.")) onTaskEvent(body);
  else if (topic.startsWith("evt.batch.")) onBatchEvent(body);
  else if (topic.startsWith("evt.node.")) onNodeEvent(body);
  else if (topic.startsWith("hb.")) onHeartbeat(topic.slice(3), body);
  else if (topic.startsWith("log.")) onLogEvent(Number(topic.slice(4)), body);
}

function onNodeEvent(body) {
  const node = app.nodes.get(body.name);
  if (node) {
    Object.assign(node, {state: body.state});
    if ("drained" in body) node.drained = body.drained;
  }
  coalesce("nodes", () => refreshNodes().catch(() => {}), 100);
}

function onHeartbeat(name, body) {
  const node = app.nodes.get(name);
  if (node) {
    node.last_heartbeat = body.at || Date.now() / 1000;
    node.heartbeat = body;
    if (app.view === "nodes") coalesce("hb-render", renderHeartbeats, 250);
    if (app.view === "submit") coalesce("nodes", () => refreshNodes().catch(() => {}), 1000);
  }
  // A running task's output grows between state changes: its node's heartbeat is the event
  // that says "look again" (one read at a time; nothing runs when nothing is followed).
  if (followWanted() && app.detail.task.node === name) followLog();
}

function onLogEvent(id, body) {
  if (app.detail && app.detail.id === id && (!body.stream || body.stream === app.detail.stream)) followLog();
}

// ---- wiring -----------------------------------------------------------------------------
function wire() {
  $("#login-form").addEventListener("submit", login);
  $("#logout").addEventListener("click", logout);
  $$("#tabs button").forEach((b) => b.addEventListener("click", () => show(b.dataset.view)));
  window.addEventListener("hashchange", () => {
    if (app.session && location.hash.slice(1) !== app.view) show(location.hash.slice(1));
  });
  const stateSelect = $("#task-filter select[name=state]");
  STATES.forEach((s) => stateSelect.append(el("option", {value: s}, s)));
  $("#ov-range").addEventListener("change", () => refreshChart());
  $("#task-filter").addEventListener("submit", (e) => { e.preventDefault(); pageNewest(); });
  $("#page-older").addEventListener("click", pageOlder);
  $("#page-newer").addEventListener("click", pageNewer);
  $("#page-newest").addEventListener("click", pageNewest);
  $("#td-close").addEventListener("click", closeTask);
  $$("#task-detail [data-task-action]").forEach((b) =>
    b.addEventListener("click", () => taskAction(b.dataset.taskAction)));
  $("#td-terminal").addEventListener("click", () => app.detail && openTerminal(app.detail.id));
  $$("input[name=td-stream]").forEach((r) => r.addEventListener("change", switchStream));
  $("#submit-form").addEventListener("submit", onSubmitTask);
  $("#submit-form").addEventListener("input", previewCommand);
  $("#submit-form").t_node.addEventListener("change", fillTargetPickers);
  $("#submit-form").t_zone.addEventListener("change", composeTarget);
  $("#vps-form").addEventListener("submit", onSubmitVps);
  $("#term-close").addEventListener("click", closeTerminal);
}

async function main() {
  wire();
  try {
    await startSession();
  } catch (error) {
    showLogin();
  }
}

main();
