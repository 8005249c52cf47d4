// Basalt's web console: a SQL editor (results as a table and a chart), the table list with
// schemas and ingestion status, and a live page refreshed every second. Talks to the same
// HTTP API as every client (POST /query/sql, GET /tables, GET /tables/{name}); charts with
// uPlot, bundled into the binary.
"use strict";

const $ = (id) => document.getElementById(id);
const NUMERIC = new Set(["INT", "LONG", "FLOAT", "DOUBLE", "BIG_DECIMAL"]);

$("token").value = localStorage.getItem("basalt-token") || "";
$("token").addEventListener("change", () => localStorage.setItem("basalt-token", $("token").value));

async function api(path, body) {
  const headers = {};
  const token = $("token").value.trim();
  if (token) headers["Authorization"] = "Bearer " + token;
  const opts = { headers };
  if (body !== undefined) {
    opts.method = "POST";
    headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const v = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(v.error || `${r.status} ${r.statusText}`);
  return v;
}

// Runs SQL; returns {columns, types, rows, ms, docs} or throws with the server's message.
async function sql(text) {
  const v = await api("/query/sql", { sql: text });
  if (v.exceptions && v.exceptions.length) throw new Error(v.exceptions.map((e) => e.message).join("\n"));
  const t = v.resultTable || { dataSchema: { columnNames: [], columnDataTypes: [] }, rows: [] };
  return { columns: t.dataSchema.columnNames, types: t.dataSchema.columnDataTypes, rows: t.rows,
           ms: v.timeUsedMs, docs: v.numDocsScanned };
}

const tsSeconds = (s) => Date.parse(String(s).replace(" ", "T") + "Z") / 1000;

function renderTable(el, res) {
  const table = document.createElement("table");
  const head = table.createTHead().insertRow();
  res.columns.forEach((c, i) => {
    const th = document.createElement("th");
    th.textContent = c;
    th.title = res.types[i];
    head.appendChild(th);
  });
  const body = table.createTBody();
  for (const row of res.rows) {
    const tr = body.insertRow();
    row.forEach((cell, i) => {
      const td = tr.insertCell();
      td.textContent = cell === null ? "null" : typeof cell === "object" ? JSON.stringify(cell) : cell;
      if (NUMERIC.has(res.types[i])) td.className = "num";
    });
  }
  el.replaceChildren(table);
}

const palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
const charts = new Map();

// A chart of `res` in `el`: a time series when the first column is a timestamp (one line per
// numeric column), else bars of the first numeric column by the first column. Returns the
// chart kind, or null when the result has nothing to plot.
function renderChart(el, res, height = 300) {
  if (charts.has(el)) { charts.get(el).destroy(); charts.delete(el); }
  el.replaceChildren();
  el.dataset.kind = "";
  const numeric = res.types.map((t, i) => (NUMERIC.has(t) ? i : -1)).filter((i) => i > 0);
  if (!res.rows.length || !numeric.length) return null;
  const width = Math.max(400, el.clientWidth || document.body.clientWidth - 40);
  const timeSeries = res.types[0] === "TIMESTAMP";
  let xs, opts;
  if (timeSeries) {
    const rows = res.rows.slice().sort((a, b) => tsSeconds(a[0]) - tsSeconds(b[0]));
    xs = rows.map((r) => tsSeconds(r[0]));
    const data = [xs, ...numeric.map((i) => rows.map((r) => r[i]))];
    opts = { width, height, series: [{}, ...numeric.map((i, k) => ({ label: res.columns[i], stroke: palette[k % 8], width: 2 }))] };
    charts.set(el, new uPlot(opts, data, el));
  } else {
    const i = numeric[0];
    const labels = res.rows.map((r) => String(r[0]));
    xs = labels.map((_, k) => k);
    const data = [xs, res.rows.map((r) => r[i])];
    opts = {
      width, height, scales: { x: { time: false } },
      axes: [{ values: (u, ticks) => ticks.map((t) => labels[t] ?? "") }, {}],
      series: [{}, { label: res.columns[i], fill: palette[0] + "aa", stroke: palette[0], paths: uPlot.paths.bars({ size: [0.6, 80] }) }],
    };
    charts.set(el, new uPlot(opts, data, el));
  }
  el.dataset.kind = timeSeries ? "timeseries" : "bars";
  return el.dataset.kind;
}

// --- Query page ---------------------------------------------------------------------------
async function runQuery() {
  $("error").hidden = true;
  $("status").textContent = "running…";
  try {
    const res = await sql($("sql").value);
    renderTable($("result"), res);
    const kind = renderChart($("chart"), res);
    $("status").textContent = `${res.rows.length} rows · ${res.ms} ms · ${res.docs} docs scanned` + (kind ? ` · ${kind} chart` : "");
  } catch (e) {
    $("status").textContent = "";
    $("error").textContent = e.message;
    $("error").hidden = false;
  }
}
$("run").addEventListener("click", runQuery);
$("sql").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) runQuery(); });

// --- Tables page --------------------------------------------------------------------------
async function loadTables() {
  const el = $("tables");
  try {
    const { tables } = await api("/tables");
    const cards = await Promise.all(tables.map(async (name) => {
      const t = await api(`/tables/${encodeURIComponent(name)}`);
      const card = document.createElement("div");
      card.className = "card";
      const st = t.stats || {};
      const ing = t.ingestion;
      const status = ing
        ? `real-time: ${ing.state}` + (ing.partitions || []).map((p) => ` · p${p.partition} offset ${p.consumed_offset} lag ${p.lag ?? "?"} (${(p.events_per_second || 0).toFixed(0)}/s)`).join("")
        : "batch";
      card.innerHTML = `<h3></h3><div class="muted"></div><div class="muted"></div>`;
      card.querySelector("h3").textContent = name;
      card.querySelectorAll(".muted")[0].textContent = `${st.rows ?? 0} rows · ${st.segments ?? 0} segments · ${st.bytes ?? 0} bytes`;
      card.querySelectorAll(".muted")[1].textContent = status;
      const cols = { columns: ["column", "type", "index"], types: ["STRING", "STRING", "STRING"],
        rows: t.spec.columns.map((c) => [c.name, c.type, (c.index || []).join(", ")]) };
      const div = document.createElement("div");
      renderTable(div, cols);
      card.appendChild(div);
      return card;
    }));
    el.replaceChildren(...cards);
    const sel = $("live-table");
    const cur = sel.value || (tables.includes("events") ? "events" : tables[0]);
    sel.replaceChildren(...tables.filter((n) => !n.includes("$")).map((n) => new Option(n, n, false, n === cur)));
  } catch (e) {
    el.textContent = e.message;
  }
}

// --- Live page ----------------------------------------------------------------------------
let liveTimer = null;
const quote = (name) => '"' + name.replace(/"/g, '""') + '"';

async function refreshLive() {
  const table = $("live-table").value;
  if (!table) return;
  const t = quote(table);
  try {
    // The window ends at the table's newest event (now, for a real-time table).
    const newest = (await sql(`SELECT max(ts) FROM ${t}`)).rows[0][0];
    if (newest === null) { $("live-status").textContent = "no events yet"; return; }
    const end = `TIMESTAMP '${newest}'`;
    const win = `ts > ${end} - INTERVAL '5 minutes' AND ts <= ${end}`;
    const [stats, rate, series, top] = await Promise.all([
      sql(`SELECT count(*), approx_distinct(user_id), approx_percentile_cont(latency_ms, 0.95) FROM ${t} WHERE ${win}`),
      sql(`SELECT count(*) / 10.0 FROM ${t} WHERE ts > ${end} - INTERVAL '10 seconds' AND ts <= ${end}`),
      sql(`SELECT DATE_TRUNC('second', ts) AS second, count(*) AS "events/s" FROM ${t} WHERE ${win} GROUP BY 1 ORDER BY 1`),
      sql(`SELECT event_type, count(*) AS events FROM ${t} WHERE ${win} GROUP BY 1 ORDER BY 2 DESC LIMIT 10`),
    ]);
    const [count, users, p95] = stats.rows[0];
    $("live-count").textContent = count.toLocaleString();
    $("live-users").textContent = Number(users).toLocaleString();
    $("live-p95").textContent = p95 === null ? "–" : Number(p95).toFixed(1);
    $("live-rate").textContent = Number(rate.rows[0][0]).toFixed(0);
    renderChart($("live-chart"), series, 260);
    renderTable($("live-top"), top);
    $("live-status").textContent = `newest event ${newest} UTC · refreshed ${new Date().toISOString().slice(11, 19)}`;
  } catch (e) {
    $("live-status").textContent = e.message;
  }
}

function show(page) {
  for (const p of ["query", "tables", "live"]) $("page-" + p).hidden = p !== page;
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === page));
  clearInterval(liveTimer);
  if (page === "tables") loadTables();
  if (page === "live") {
    loadTables().then(refreshLive);
    liveTimer = setInterval(refreshLive, 1000);
  }
}
$("live-table").addEventListener("change", refreshLive);
window.addEventListener("hashchange", () => show(location.hash.slice(1) || "query"));
loadTables();
show(location.hash.slice(1) || "query");
