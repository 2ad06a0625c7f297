// The scaleout lab page: renders the server's snapshots (server-sent events, about 4 a second) and sends
// the controls. No build step; Chart.js comes from the machine's own package, served by the panel.
"use strict";

const TOKEN = new URLSearchParams(location.search).get("token") || "";
const HISTORY = 240; // snapshots kept in the charts: one minute at 4 a second
const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"];
const STATUS_COLOURS = { "200": "#2e9d4a", "401": "#d64541", "503": "#e69b23", other: "#777" };
const state = { lastActions: 0, charts: {}, replicas: [] };

function colourOf(replica) {
  const n = parseInt(String(replica).replace("api-", ""), 10);
  return Number.isFinite(n) ? COLOURS[(n - 1) % COLOURS.length] : "#999";
}

function say(text, ok) {
  const el = document.getElementById("message");
  el.textContent = text;
  el.className = ok ? "ok" : "";
}

async function post(path, body) {
  const r = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Panel-Token": TOKEN },
    body: JSON.stringify(body || {}),
  });
  let data = {};
  try { data = await r.json(); } catch (e) { data = {}; }
  if (!r.ok) {
    const detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail || r.statusText);
    say(`${path}: ${r.status} ${detail}`, false);
    throw new Error(detail);
  }
  say(data.detail || `${path}: done`, !data.detail);
  return data;
}

function lineChart(id, yLabel) {
  const ctx = document.getElementById(id);
  return new Chart(ctx, {
    type: "line",
    data: { labels: [], datasets: [] },
    options: {
      animation: false,
      responsive: true,
      elements: { point: { radius: 0 } },
      scales: { x: { display: false }, y: { beginAtZero: true, title: { display: true, text: yLabel } } },
      plugins: { legend: { position: "bottom", labels: { boxWidth: 10 } } },
    },
  });
}

function series(chart, label, colour, extra) {
  let ds = chart.data.datasets.find((d) => d.label === label);
  if (!ds) {
    ds = Object.assign({ label, data: [], borderColor: colour, backgroundColor: colour, borderWidth: 2 }, extra || {});
    chart.data.datasets.push(ds);
  }
  return ds;
}

function push(chart, values, time) {
  chart.data.labels.push(time);
  const length = chart.data.labels.length;
  for (const [label, value, colour, extra] of values) {
    const ds = series(chart, label, colour, extra);
    while (ds.data.length < length - 1) ds.data.push(null);
    ds.data.push(value);
  }
  for (const ds of chart.data.datasets) while (ds.data.length < length) ds.data.push(null);
  if (length > HISTORY) {
    chart.data.labels.shift();
    for (const ds of chart.data.datasets) ds.data.shift();
  }
  chart.update("none");
}

function renderServices(services, primary) {
  // Tiles are updated in place (their buttons are rebuilt only when a service goes up or down), so a
  // click never lands on an element the next snapshot replaced.
  const box = document.getElementById("services");
  const names = services.map((s) => s.name);
  for (const tile of [...box.children]) if (!names.includes(tile.dataset.name)) tile.remove();
  for (const s of services) {
    let tile = document.getElementById(`tile-${s.name}`);
    if (!tile) {
      tile = document.createElement("div");
      tile.id = `tile-${s.name}`;
      tile.dataset.name = s.name;
      tile.innerHTML = `<h3></h3><div class="meta"></div><div class="buttons"></div>`;
      tile.querySelector("h3").textContent = s.name;
      box.appendChild(tile);
    }
    const rps = s.rps === null || s.rps === undefined ? "" : ` · ${s.rps} req/s`;
    const cache = s.cache ? ` · cache ${Math.round(s.cache.hit_rate * 100)}% hits, ${s.cache.invalidations_per_s} inval/s` : "";
    tile.className = "tile" + (s.up ? "" : " down");
    tile.dataset.rps = String(s.rps ?? "");
    const role = primary ? (s.name === primary ? " · primary" : s.name.startsWith("redis-") ? " · replica" : "") : "";
    tile.dataset.cacheHitRate = s.cache ? String(s.cache.hit_rate) : "";
    tile.querySelector(".meta").textContent = `${s.up ? "up" : "down"} · pid ${s.pid ?? "-"}${rps}${cache}${role}`;
    if (tile.dataset.up !== String(s.up) && s.name !== "lab") {
      const buttons = tile.querySelector(".buttons");
      buttons.replaceChildren();
      for (const action of s.up ? ["stop", "kill"] : ["start"]) {
        const b = document.createElement("button");
        b.textContent = action;
        b.dataset.service = s.name;
        b.dataset.action = action;
        b.addEventListener("click", () => post("/api/service", { name: s.name, action }).catch(() => {}));
        buttons.appendChild(b);
      }
    }
    tile.dataset.up = String(s.up);
  }
}

function renderModes(modes, choices) {
  for (const [k, v] of Object.entries(modes)) {
    const el = document.getElementById(`mode-${k}`);
    if (el) el.textContent = v;
  }
  document.querySelectorAll("button[data-lb]").forEach((b) => b.classList.toggle("active", b.dataset.lb === modes.lb_mode));
  for (const [k, options] of Object.entries(choices || {})) {
    const select = document.getElementById(`restart-${k}`);
    if (!select) continue;
    if (!select.options.length) for (const o of options) select.add(new Option(o, o));
    // The form follows the cluster's modes (a balancer switch included) until the user picks another value.
    if (select.dataset.touched !== "true" && select.value !== modes[k]) select.value = modes[k];
  }
}

function renderMap(users) {
  const map = document.getElementById("user-map");
  map.replaceChildren();
  for (const u of users) {
    const label = document.createElement("span");
    label.textContent = `user ${u.user}`;
    const row = document.createElement("div");
    row.className = "row";
    row.id = `user-${u.user}`;
    row.dataset.replicas = u.replicas.join(",");
    row.dataset.statuses = u.statuses.join(",");
    u.replicas.forEach((r, i) => {
      const cell = document.createElement("span");
      const status = u.statuses[i];
      cell.className = "cell" + (status === 200 ? "" : " refused");
      cell.style.background = colourOf(r);
      cell.title = `${r}: ${status}`;
      cell.textContent = status === 200 ? "" : "×";
      row.appendChild(cell);
    });
    map.append(label, row);
  }
}

function render(snap) {
  if (snap.error) { say(snap.error, false); return; }
  renderModes(snap.modes, snap.choices);
  renderServices(snap.services, snap.primary);
  document.getElementById("faults").textContent = Object.entries(snap.faults || {})
    .map(([target, now]) => `${target}: ${now}`).join(" · ");
  renderMap(snap.user_map || []);
  const cred = snap.credential;
  document.getElementById("credential").textContent = cred ? `${cred.header}: ${cred.value}` : "(start the traffic)";
  document.getElementById("credential-size").textContent = cred ? `${cred.bytes} bytes on the wire, per request` : "";
  const time = new Date(snap.t * 1000).toLocaleTimeString();
  const w = snap.traffic.window;
  const actions = snap.actions.filter((a) => a.t > state.lastActions);
  const actionMark = ["action", null, "#000", { showLine: false, pointRadius: 7, pointStyle: "triangle", rotation: 180 }];
  if (w && w.seconds > 0) {
    const replicas = Object.keys(w.per_replica).filter((r) => r !== "-");
    for (const r of replicas) if (!state.replicas.includes(r)) state.replicas.push(r);
    state.replicas.sort();
    push(state.charts.replicas, state.replicas.map((r) => [r, (w.per_replica[r] || 0) / w.seconds, colourOf(r)]), time);
    actionMark[1] = actions.length ? Math.max(1, ...Object.values(w.statuses)) / w.seconds : null;
    push(state.charts.status, [
      ...["200", "401", "503", "other"].map((s) => [s, (w.statuses[s] || 0) / w.seconds, STATUS_COLOURS[s]]),
      actionMark,
    ], time);
    push(state.charts.latency, [["p50", w.p50_ms, "#1f77b4"], ["p99", w.p99_ms, "#d64541"]], time);
    document.body.dataset.lastWindow = JSON.stringify(w);
  } else if (state.charts.status.data.labels.length) {
    // No traffic: time keeps moving with zeros (no latency to show), and the stop is marked where it happened.
    push(state.charts.replicas, state.replicas.map((r) => [r, 0, colourOf(r)]), time);
    actionMark[1] = actions.length ? 1 : null;
    push(state.charts.status, [...["200", "401", "503", "other"].map((s) => [s, 0, STATUS_COLOURS[s]]), actionMark], time);
    push(state.charts.latency, [["p50", null, "#1f77b4"], ["p99", null, "#d64541"]], time);
    document.body.dataset.lastWindow = JSON.stringify({ idle: true, time });
  }
  if (snap.sessions) {
    const s = snap.sessions;
    document.getElementById("sessions-from").textContent =
      s.status === 200 ? `${s.replica} lists ${s.sessions.length}` : `${s.replica} answered ${s.status}`;
    document.getElementById("sessions").replaceChildren(...s.sessions.map((x) => {
      const li = document.createElement("li");
      li.textContent = `${x.id}${x.current ? " (this one)" : ""} · ${x.user_agent || "?"} · ${x.ip} · since ` +
        new Date(x.created * 1000).toLocaleTimeString();
      return li;
    }));
  }
  if (snap.actions.length) state.lastActions = snap.actions[snap.actions.length - 1].t;
  const list = document.getElementById("actions");
  list.replaceChildren(...snap.actions.slice().reverse().map((a) => {
    const li = document.createElement("li");
    li.textContent = `${new Date(a.t * 1000).toLocaleTimeString()} ${a.label}`;
    return li;
  }));
  if (snap.replay) {
    const r = snap.replay;
    const parts = Object.entries(r.replays).map(([k, n]) => `${k} ×${n}`).join(", ");
    document.getElementById("replay").textContent =
      `logout ${r.logout_status}; replays: ${parts}; accepted after logout: ${r.accepted}`;
  }
}

function wire() {
  state.charts.replicas = lineChart("chart-replicas", "req/s");
  state.charts.status = lineChart("chart-status", "responses/s");
  state.charts.latency = lineChart("chart-latency", "ms");
  const users = document.getElementById("users");
  users.addEventListener("input", () => { document.getElementById("users-out").textContent = users.value; });
  document.querySelectorAll("button[data-lb]").forEach((b) =>
    b.addEventListener("click", () => post("/api/lb", { mode: b.dataset.lb }).catch(() => {})));
  document.querySelectorAll("button[data-fault]").forEach((b) =>
    b.addEventListener("click", () => post("/api/fault", {
      target: document.getElementById("fault-target").value, kind: b.dataset.fault, value: b.dataset.value || null,
    }).catch(() => {})));
  document.getElementById("traffic-start").addEventListener("click", () =>
    post("/api/traffic", { action: "start", users: Number(users.value) }).catch(() => {}));
  document.getElementById("traffic-stop").addEventListener("click", () => post("/api/traffic", { action: "stop" }).catch(() => {}));
  document.getElementById("relogin").addEventListener("click", () => post("/api/traffic", { action: "relogin" }).catch(() => {}));
  document.getElementById("revoke-replay").addEventListener("click", () => post("/api/revoke-replay").catch(() => {}));
  document.getElementById("restart").addEventListener("click", () => {
    const body = {};
    for (const k of ["auth_mode", "session_store", "lb_mode", "jwt_revocation", "redis_topology", "session_cache"]) {
      body[k] = document.getElementById(`restart-${k}`).value;
    }
    post("/api/restart", body).catch(() => {});
    for (const k of Object.keys(body)) document.getElementById(`restart-${k}`).dataset.touched = "false";
  });
  document.querySelectorAll("select[id^=restart-]").forEach((select) =>
    select.addEventListener("change", () => { select.dataset.touched = "true"; }));
  if (!TOKEN) say("no token in the URL: use the link `make up` or `make lab` printed", false);
  const events = new EventSource(`/api/events?token=${encodeURIComponent(TOKEN)}`);
  events.onmessage = (e) => render(JSON.parse(e.data));
  events.onerror = () => say("lost the connection to the panel; retrying…", false);
}

if (typeof Chart === "undefined") {
  document.addEventListener("DOMContentLoaded", () => say("Chart.js did not load: run `make setup` (libjs-chart.js)", false));
} else {
  document.addEventListener("DOMContentLoaded", wire);
}
