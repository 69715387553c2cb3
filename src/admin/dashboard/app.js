// Switchboard's dashboard: plain JavaScript over the management API (RabbitMQ's endpoints),
// no build step, no external assets. Credentials live in sessionStorage for the tab's life and
// go with every API call as HTTP basic auth, as RabbitMQ's management UI does.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children.flat()) e.append(c instanceof Node ? c : String(c ?? ""));
  return e;
};

const PAGE_SIZE = 100;
const HISTORY = 60; // chart samples kept
let auth = sessionStorage.getItem("switchboard-auth");
let me = null;
let timer = null;

// ---- API ----

class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.reason || body.error)) || `HTTP ${status}`);
    this.status = status;
  }
}

async function api(method, path, body) {
  // X-Requested-With: the broker then sends no basic-auth challenge that would make the
  // browser open its own login dialog.
  const headers = { Authorization: "Basic " + auth, "X-Requested-With": "XMLHttpRequest" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  if (!res.ok) throw new ApiError(res.status, json);
  return json;
}
const get = (path) => api("GET", path);
const enc = encodeURIComponent;

// ---- login ----

function tagsOf(user) {
  const t = user.tags;
  return Array.isArray(t) ? t : String(t || "").split(",").filter(Boolean);
}

async function login(user, password) {
  auth = btoa(unescape(encodeURIComponent(`${user}:${password}`)));
  const who = await get("/api/whoami");
  const tags = tagsOf(who);
  if (!tags.some((t) => ["management", "monitoring", "administrator", "policymaker"].includes(t))) {
    throw new Error("This user has no management access (needs tag management, monitoring or administrator)");
  }
  me = { name: who.name, tags };
  sessionStorage.setItem("switchboard-auth", auth);
}

function showLogin(message) {
  clearInterval(timer);
  me = null;
  auth = null;
  sessionStorage.removeItem("switchboard-auth");
  $("#login").hidden = false;
  $("#page").hidden = true;
  $("#nav").hidden = true;
  $("#logout").hidden = true;
  $("#who").textContent = "";
  $("#login-error").textContent = message || "";
}

function showApp() {
  $("#login").hidden = true;
  $("#page").hidden = false;
  $("#nav").hidden = false;
  $("#logout").hidden = false;
  $("#nav-admin").hidden = !me.tags.includes("administrator");
  $("#who").textContent = `${me.name} (${me.tags.join(", ")})`;
  route();
}

$("#login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("#login-error").textContent = "";
  try {
    await login($("#login-user").value, $("#login-password").value);
    showApp();
  } catch (e) {
    showLogin(e.status === 401 ? "Login failed" : e.message);
  }
});
$("#logout").addEventListener("click", () => showLogin());

// ---- formatting ----

const fmt = (n) => (n === undefined || n === null ? "" : Number(n).toLocaleString("en-US"));
const rate = (stats, field) => {
  const d = stats && stats[field + "_details"];
  return d ? d.rate : 0;
};
const fmtRate = (r) => (Math.round((r || 0) * 10) / 10).toLocaleString("en-US") + "/s";

// ---- sortable, filterable, paged table (client-side: 10,000 rows render 100 at a time) ----

function dataTable({ columns, rows, id, onRow }) {
  const state = { sort: null, desc: false, filter: "", page: 0 };
  const root = el("div", { class: "table", id });
  const filter = el("input", { placeholder: "Filter (regex)", class: "filter", "aria-label": "filter" });
  const count = el("span", { class: "count" });
  const table = el("table");
  const pager = el("div", { class: "pager" });
  root.append(el("div", { class: "tools" }, filter, count), table, pager);

  const value = (row, col) => (col.value ? col.value(row) : row[col.key]);
  const matcher = () => {
    if (!state.filter) return () => true;
    let re;
    try { re = new RegExp(state.filter, "i"); } catch (_) {
      const needle = state.filter.toLowerCase();
      return (row) => columns.some((c) => String(value(row, c) ?? "").toLowerCase().includes(needle));
    }
    return (row) => columns.some((c) => re.test(String(value(row, c) ?? "")));
  };

  function render() {
    let shown = rows.filter(matcher());
    if (state.sort !== null) {
      const col = columns[state.sort];
      shown = shown.slice().sort((a, b) => {
        const x = value(a, col), y = value(b, col);
        const r = typeof x === "number" && typeof y === "number" ? x - y : String(x ?? "").localeCompare(String(y ?? ""));
        return state.desc ? -r : r;
      });
    }
    const pages = Math.max(1, Math.ceil(shown.length / PAGE_SIZE));
    state.page = Math.min(state.page, pages - 1);
    const slice = shown.slice(state.page * PAGE_SIZE, (state.page + 1) * PAGE_SIZE);
    count.textContent = `${fmt(shown.length)} of ${fmt(rows.length)}`;
    const head = el("tr", {}, columns.map((c, i) =>
      el("th", {
        class: [c.num ? "num" : "", state.sort === i ? (state.desc ? "sorted-desc" : "sorted-asc") : ""].join(" "),
        "data-key": c.key || c.title,
        onclick: () => {
          if (state.sort === i) state.desc = !state.desc; else { state.sort = i; state.desc = false; }
          render();
        },
      }, c.title)));
    const body = slice.map((row) => {
      const tr = el("tr", {}, columns.map((c) => {
        const v = c.render ? c.render(row) : value(row, c);
        return el("td", { class: c.num ? "num" : "" }, c.num && typeof v === "number" ? fmt(v) : v);
      }));
      if (onRow) { tr.style.cursor = "pointer"; tr.addEventListener("click", () => onRow(row)); }
      return tr;
    });
    table.replaceChildren(el("thead", {}, head), el("tbody", {}, body));
    pager.replaceChildren(
      el("button", { onclick: () => { state.page = Math.max(0, state.page - 1); render(); }, disabled: state.page === 0 ? "" : null }, "‹ Prev"),
      el("span", {}, `page ${state.page + 1} of ${pages}`),
      el("button", { onclick: () => { state.page = Math.min(pages - 1, state.page + 1); render(); }, disabled: state.page >= pages - 1 ? "" : null }, "Next ›"));
  }
  filter.addEventListener("input", () => { state.filter = filter.value; state.page = 0; render(); });
  root.update = (newRows) => { rows = newRows; render(); };
  render();
  return root;
}

// ---- charts, drawn on canvas ----

const COLORS = ["#f60", "#2e90fa", "#12b76a", "#9e77ed", "#f04438"];

function lineChart(title, seriesNames) {
  const canvas = el("canvas", { width: 600, height: 180 });
  const legend = el("div", { class: "legend" },
    seriesNames.map((n, i) => el("span", {}, el("i", { style: `background:${COLORS[i]}` }), n)));
  const box = el("div", { class: "chart" }, el("h3", {}, title), canvas, legend);
  const history = seriesNames.map(() => []);
  box.push = (values) => {
    values.forEach((v, i) => { history[i].push(v || 0); if (history[i].length > HISTORY) history[i].shift(); });
    draw();
  };
  function draw() {
    const w = canvas.clientWidth || 600, h = canvas.clientHeight || 180;
    canvas.width = w; canvas.height = h;
    const g = canvas.getContext("2d");
    g.clearRect(0, 0, w, h);
    const max = Math.max(1, ...history.flat());
    const left = 50, bottom = h - 16, top = 8;
    g.strokeStyle = "#d8dde6"; g.fillStyle = "#667085"; g.font = "11px system-ui";
    for (let k = 0; k <= 4; k++) {
      const y = bottom - (bottom - top) * k / 4;
      g.beginPath(); g.moveTo(left, y); g.lineTo(w, y); g.stroke();
      g.fillText(fmt(Math.round(max * k / 4)), 2, y + 4);
    }
    history.forEach((pts, i) => {
      if (pts.length < 2) return;
      g.strokeStyle = COLORS[i]; g.lineWidth = 2; g.beginPath();
      pts.forEach((v, j) => {
        const x = left + (w - left) * j / (HISTORY - 1);
        const y = bottom - (bottom - top) * v / max;
        if (j === 0) g.moveTo(x, y); else g.lineTo(x, y);
      });
      g.stroke();
    });
  }
  return box;
}

// ---- pages ----

function every(ms, f) {
  clearInterval(timer);
  const run = () => f().catch(handleError);
  run();
  timer = setInterval(run, ms);
}

function handleError(e) {
  if (e.status === 401) showLogin("Session expired: log in again");
  else setStatus(e.message);
}

function setStatus(text) {
  const s = $("#status");
  if (s) s.textContent = text;
}

let pollMs = 5000;

async function overviewPage(page) {
  const cards = el("div", { class: "cards", id: "totals" });
  const rates = lineChart("Message rates", ["publish", "deliver / get", "ack"]);
  const depth = lineChart("Queued messages", ["ready", "unacknowledged"]);
  rates.id = "chart-rates"; depth.id = "chart-depth";
  page.replaceChildren(el("h2", {}, "Overview"), cards, el("div", { class: "charts" }, rates, depth), el("p", { id: "status", class: "error" }));
  const card = (k, n, id) => el("div", { class: "card", id }, el("div", { class: "n" }, n), el("div", { class: "k" }, k));
  const o = await get("/api/overview");
  pollMs = Math.min(5000, Math.max(1000, o.statistics_interval_ms || 5000));
  every(pollMs, async () => {
    const o = await get("/api/overview");
    const ms = o.message_stats || {};
    const qt = o.queue_totals || {};
    const ot = o.object_totals || {};
    cards.replaceChildren(
      card("connections", fmt(ot.connections), "total-connections"),
      card("queues", fmt(ot.queues), "total-queues"),
      card("exchanges", fmt(ot.exchanges), "total-exchanges"),
      card("messages ready", fmt(qt.messages_ready), "total-ready"),
      card("unacknowledged", fmt(qt.messages_unacknowledged), "total-unacked"),
      card("published", fmt(ms.publish), "total-published"),
      card("publish rate", fmtRate(rate(ms, "publish")), "rate-publish"),
      card("deliver / get rate", fmtRate(rate(ms, "deliver_get")), "rate-deliver"),
      card("memory alarm", o.memory && o.memory.alarm ? "ON" : "off", "memory-alarm"));
    rates.push([rate(ms, "publish"), rate(ms, "deliver_get"), rate(ms, "ack")]);
    depth.push([qt.messages_ready, qt.messages_unacknowledged]);
  });
}

function listPage(title, path, columns, opts = {}) {
  return async (page) => {
    let table = null;
    page.replaceChildren(el("h2", {}, title), el("p", { id: "status", class: "error" }));
    every(pollMs, async () => {
      const rows = await get(path);
      if (!table) {
        table = dataTable({ columns, rows, id: opts.id, onRow: opts.onRow });
        page.append(table);
      } else table.update(rows);
    });
  };
}

const queueHref = (q) => `#/queue/${enc(q.vhost)}/${enc(q.name)}`;

const queuesPage = listPage("Queues", "/api/queues", [
  { title: "Virtual host", key: "vhost" },
  { title: "Name", key: "name", render: (q) => el("a", { href: queueHref(q) }, q.name) },
  { title: "Features", value: (q) => [q.durable ? "D" : "", q.auto_delete ? "AD" : "", q.exclusive ? "Excl" : ""].filter(Boolean).join(" ") },
  { title: "Ready", key: "messages_ready", num: true },
  { title: "Unacked", key: "messages_unacknowledged", num: true },
  { title: "Total", key: "messages", num: true },
  { title: "Consumers", key: "consumers", num: true },
  { title: "Incoming", num: true, value: (q) => rate(q.message_stats, "publish"), render: (q) => fmtRate(rate(q.message_stats, "publish")) },
  { title: "Deliver / get", num: true, value: (q) => rate(q.message_stats, "deliver_get"), render: (q) => fmtRate(rate(q.message_stats, "deliver_get")) },
  { title: "Ack", num: true, value: (q) => rate(q.message_stats, "ack"), render: (q) => fmtRate(rate(q.message_stats, "ack")) },
], { id: "queues-table" });

const exchangesPage = listPage("Exchanges", "/api/exchanges", [
  { title: "Virtual host", key: "vhost" },
  { title: "Name", value: (e) => e.name || "(AMQP default)" },
  { title: "Type", key: "type" },
  { title: "Features", value: (e) => [e.durable ? "D" : "", e.auto_delete ? "AD" : "", e.internal ? "I" : ""].filter(Boolean).join(" ") },
  { title: "Message rate in", num: true, value: (e) => rate(e.message_stats, "publish_in"), render: (e) => fmtRate(rate(e.message_stats, "publish_in")) },
  { title: "Message rate out", num: true, value: (e) => rate(e.message_stats, "publish_out"), render: (e) => fmtRate(rate(e.message_stats, "publish_out")) },
], { id: "exchanges-table" });

const connectionsPage = listPage("Connections", "/api/connections", [
  { title: "Name", key: "name" },
  { title: "Protocol", key: "protocol" },
  { title: "User", key: "user" },
  { title: "Virtual host", key: "vhost" },
  { title: "Client id", value: (c) => (c.client_properties && c.client_properties.client_id) || "" },
  { title: "State", key: "state" },
  { title: "Channels", key: "channels", num: true },
  { title: "From client", num: true, value: (c) => (c.recv_oct_details || {}).rate || 0, render: (c) => fmt(Math.round((c.recv_oct_details || {}).rate || 0)) + " B/s" },
  { title: "To client", num: true, value: (c) => (c.send_oct_details || {}).rate || 0, render: (c) => fmt(Math.round((c.send_oct_details || {}).rate || 0)) + " B/s" },
  { title: "Published", num: true, value: (c) => (c.message_stats || {}).publish || 0 },
], { id: "connections-table" });

const mqttPage = listPage("MQTT sessions", "/api/mqtt/sessions", [
  { title: "Virtual host", key: "vhost" },
  { title: "Client id", key: "client_id" },
  { title: "Connected", value: (s) => (s.connected ? "yes" : "no") },
  { title: "Subscriptions", key: "subscriptions", num: true },
  { title: "In flight", key: "in_flight", num: true },
  { title: "Queued", key: "messages", num: true },
  { title: "Expiry (s)", key: "expiry_interval", num: true },
  { title: "Queue", key: "queue", render: (s) => el("a", { href: queueHref({ vhost: s.vhost, name: s.queue }) }, s.queue) },
], { id: "mqtt-table" });

async function queuePage(page, vhost, name) {
  clearInterval(timer);
  const base = `/api/queues/${enc(vhost)}/${enc(name)}`;
  const info = el("div", { class: "cards", id: "queue-info" });
  const bindings = el("div", { id: "queue-bindings" });
  const consumers = el("div", { id: "queue-consumers" });
  const result = el("div", { id: "queue-result" });
  const status = el("p", { id: "status", class: "error" });

  const payload = el("textarea", { id: "publish-payload", rows: 3, cols: 40 });
  const publish = el("form", { id: "publish-form", onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      const r = await api("POST", `/api/exchanges/${enc(vhost)}/amq.default/publish`, {
        properties: {}, routing_key: name, payload: payload.value, payload_encoding: "string",
      });
      result.replaceChildren(el("p", {}, r && r.routed ? "Message published." : "Message published, but not routed."));
      refresh();
    } catch (e) { handleError(e); }
  } }, el("label", {}, "Payload", payload), el("button", { type: "submit" }, "Publish message"));

  const count = el("input", { id: "get-count", type: "number", value: 1, min: 1 });
  const ackmode = el("select", { id: "get-ackmode" },
    el("option", { value: "ack_requeue_true" }, "Nack message requeue true"),
    el("option", { value: "ack_requeue_false" }, "Automatic ack"),
    el("option", { value: "reject_requeue_true" }, "Reject requeue true"),
    el("option", { value: "reject_requeue_false" }, "Reject requeue false"));
  const getForm = el("form", { id: "get-form", onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      const msgs = await api("POST", `${base}/get`, { count: Number(count.value), ackmode: ackmode.value, encoding: "auto", truncate: 50000 });
      result.replaceChildren(msgs.length ? el("div", {}, msgs.map((m, i) => el("div", { class: "message" },
        el("h4", {}, `Message ${i + 1}`),
        el("p", {}, `Exchange: ${m.exchange || "(AMQP default)"} · Routing key: ${m.routing_key} · Redelivered: ${m.redelivered} · ${fmt(m.message_count)} left`),
        el("pre", { class: "payload" }, m.payload)))) : el("p", {}, "Queue is empty"));
      refresh();
    } catch (e) { handleError(e); }
  } }, el("label", {}, "Ack mode", ackmode), el("label", {}, "Messages", count), el("button", { type: "submit" }, "Get messages"));

  const purge = el("button", { id: "purge", onclick: async () => {
    if (!confirm(`Purge all messages from ${name}?`)) return;
    try { await api("DELETE", `${base}/contents`); result.replaceChildren(el("p", {}, "Queue purged.")); refresh(); } catch (e) { handleError(e); }
  } }, "Purge messages");
  const del = el("button", { id: "delete", class: "danger", onclick: async () => {
    if (!confirm(`Delete queue ${name}?`)) return;
    try { await api("DELETE", base); location.hash = "#/queues"; } catch (e) { handleError(e); }
  } }, "Delete queue");

  page.replaceChildren(
    el("h2", {}, `Queue ${name}`, el("small", {}, ` in ${vhost}`)), status, info,
    el("div", { class: "panel" }, el("h3", {}, "Bindings"), bindings),
    el("div", { class: "panel" }, el("h3", {}, "Consumers"), consumers),
    el("div", { class: "panel" }, el("h3", {}, "Publish message"), publish),
    el("div", { class: "panel" }, el("h3", {}, "Get messages"), getForm, result),
    el("div", { class: "panel" }, el("h3", {}, "Purge / delete"), purge, " ", del));

  async function queueObject() {
    try { return await get(base); } catch (e) {
      if (e.status !== 404 && e.status !== 405) throw e;
      const all = await get("/api/queues");
      const q = all.find((q) => q.vhost === vhost && q.name === name);
      if (!q) throw new ApiError(404, { reason: `no queue '${name}' in vhost '${vhost}'` });
      return q;
    }
  }
  async function queueBindings() {
    try { return await get(`${base}/bindings`); } catch (e) {
      if (e.status !== 404 && e.status !== 405) throw e;
      return (await get("/api/bindings")).filter((b) => b.vhost === vhost && b.destination === name && b.destination_type === "queue");
    }
  }
  async function queueConsumers() {
    try {
      return (await get(`/api/consumers/${enc(vhost)}`)).filter((c) => c.queue && c.queue.name === name);
    } catch (e) { if (e.status === 404 || e.status === 405) return null; throw e; }
  }
  async function refresh() {
    const q = await queueObject();
    const ms = q.message_stats || {};
    const card = (k, n) => el("div", { class: "card" }, el("div", { class: "n" }, n), el("div", { class: "k" }, k));
    info.replaceChildren(
      card("ready", fmt(q.messages_ready)), card("unacked", fmt(q.messages_unacknowledged)),
      card("total", fmt(q.messages)), card("consumers", fmt(q.consumers)),
      card("incoming", fmtRate(rate(ms, "publish"))), card("deliver / get", fmtRate(rate(ms, "deliver_get"))),
      card("durable", q.durable ? "yes" : "no"));
    info.dataset.ready = q.messages_ready;
    const bs = await queueBindings();
    bindings.replaceChildren(el("table", {}, el("tr", {}, el("th", {}, "From"), el("th", {}, "Routing key"), el("th", {}, "Arguments")),
      bs.map((b) => el("tr", {}, el("td", {}, b.source || "(AMQP default)"), el("td", {}, b.routing_key), el("td", {}, JSON.stringify(b.arguments || {}))))));
    const cs = await queueConsumers();
    consumers.replaceChildren(cs === null ? el("p", {}, `${fmt(q.consumers)} consumer(s)`) :
      el("table", {}, el("tr", {}, el("th", {}, "Channel"), el("th", {}, "Consumer tag"), el("th", {}, "Ack required"), el("th", {}, "Prefetch")),
        cs.map((c) => el("tr", {}, el("td", {}, (c.channel_details && c.channel_details.name) || ""), el("td", {}, c.consumer_tag), el("td", {}, String(c.ack_required)), el("td", {}, fmt(c.prefetch_count))))));
  }
  every(pollMs, refresh);
}

async function adminPage(page) {
  clearInterval(timer);
  const status = el("p", { id: "status", class: "error" });
  const users = el("div", { id: "users" });
  const vhosts = el("div", { id: "vhosts" });
  const perms = el("div", { id: "permissions" });
  const field = (label, attrs) => el("label", {}, label, el("input", attrs));
  const act = (f) => async (ev) => { ev.preventDefault(); try { await f(ev.target); await refresh(); status.textContent = ""; } catch (e) { handleError(e); } };
  const val = (form, n) => form.elements[n].value;

  const addUser = el("form", { id: "add-user", onsubmit: act((f) => api("PUT", `/api/users/${enc(val(f, "name"))}`, { password: val(f, "password"), tags: val(f, "tags") })) },
    field("Name", { name: "name", required: "" }), field("Password", { name: "password", type: "password" }),
    field("Tags", { name: "tags", placeholder: "management,monitoring" }), el("button", {}, "Add / update user"));
  const addVhost = el("form", { id: "add-vhost", onsubmit: act((f) => api("PUT", `/api/vhosts/${enc(val(f, "name"))}`, {})) },
    field("Name", { name: "name", required: "" }), el("button", {}, "Add virtual host"));
  const setPerm = el("form", { id: "set-permission", onsubmit: act((f) => api("PUT", `/api/permissions/${enc(val(f, "vhost"))}/${enc(val(f, "user"))}`, { configure: val(f, "configure"), write: val(f, "write"), read: val(f, "read") })) },
    field("User", { name: "user", required: "" }), field("Virtual host", { name: "vhost", value: "/" }),
    field("Configure", { name: "configure", value: ".*" }), field("Write", { name: "write", value: ".*" }), field("Read", { name: "read", value: ".*" }),
    el("button", {}, "Set permission"));

  page.replaceChildren(el("h2", {}, "Admin"), status,
    el("div", { class: "panel" }, el("h3", {}, "Users"), users, addUser),
    el("div", { class: "panel" }, el("h3", {}, "Virtual hosts"), vhosts, addVhost),
    el("div", { class: "panel" }, el("h3", {}, "Permissions"), perms, setPerm));

  const del = (path) => el("button", { class: "danger", onclick: async () => {
    if (!confirm(`Delete ${path}?`)) return;
    try { await api("DELETE", path); await refresh(); } catch (e) { handleError(e); }
  } }, "Delete");
  async function refresh() {
    const [us, vs, ps] = await Promise.all([get("/api/users"), get("/api/vhosts"), get("/api/permissions")]);
    users.replaceChildren(dataTable({ id: "users-table", rows: us, columns: [
      { title: "Name", key: "name" }, { title: "Tags", value: (u) => tagsOf(u).join(", ") },
      { title: "", render: (u) => del(`/api/users/${enc(u.name)}`) }] }));
    vhosts.replaceChildren(dataTable({ id: "vhosts-table", rows: vs, columns: [
      { title: "Name", key: "name" },
      { title: "Published", num: true, value: (v) => (v.message_stats || {}).publish || 0 },
      { title: "", render: (v) => del(`/api/vhosts/${enc(v.name)}`) }] }));
    perms.replaceChildren(dataTable({ id: "permissions-table", rows: ps, columns: [
      { title: "User", key: "user" }, { title: "Virtual host", key: "vhost" },
      { title: "Configure", key: "configure" }, { title: "Write", key: "write" }, { title: "Read", key: "read" },
      { title: "", render: (p) => del(`/api/permissions/${enc(p.vhost)}/${enc(p.user)}`) }] }));
  }
  await refresh().catch(handleError);
}

// ---- routing ----

function route() {
  if (!me) return;
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const name = parts[0] || "overview";
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === name || (name === "queue" && a.dataset.page === "queues"));
  const page = $("#page");
  page.dataset.page = name;
  const pages = {
    overview: () => overviewPage(page),
    queues: () => queuesPage(page),
    exchanges: () => exchangesPage(page),
    connections: () => connectionsPage(page),
    mqtt: () => mqttPage(page),
    queue: () => queuePage(page, parts[1], parts.slice(2).join("/")),
    admin: () => adminPage(page),
  };
  (pages[name] || pages.overview)().catch(handleError);
}
window.addEventListener("hashchange", route);

(async () => {
  if (!auth) return showLogin();
  try {
    const who = await get("/api/whoami");
    me = { name: who.name, tags: tagsOf(who) };
    showApp();
  } catch (_) {
    showLogin();
  }
})();
