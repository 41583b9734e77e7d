// The dashboard page's script: follows /api/events (server-sent events; the browser reconnects by itself) and
// draws each snapshot: KPIs (exact value in data-value, rounded text for people), four ECharts charts (their rows,
// exact, in data-values), the pipeline's health, which database and how fresh the numbers are, and a clear
// banner when Kafka, PostgreSQL or the dashboard server itself cannot be reached. No page reload, ever.
//
// Filters (region, segment, an order-date range) live in the page's address, so a filtered view can be shared:
// the controls are set from it at load, and a change rewrites it (history.replaceState) and follows the
// stream of the new slice (/api/events?region=...). The server checks the parameters; its 400 is shown as is.

/* global echarts */
"use strict";

const money = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD", maximumFractionDigits: 0 });
const whole = new Intl.NumberFormat("en-US");
const percent = new Intl.NumberFormat("en-US", { style: "percent", minimumFractionDigits: 1, maximumFractionDigits: 1 });

const KPI_TEXT = {
  orders: (v) => whole.format(Number(v)),
  lines: (v) => whole.format(Number(v)),
  sales: (v) => money.format(Number(v)),
  profit: (v) => money.format(Number(v)),
  margin: (v) => (v === null ? "–" : percent.format(Number(v))),
  aov: (v) => (v === null ? "–" : money.format(Number(v))),
};

const charts = {};
function chart(name) {
  charts[name] ??= echarts.init(document.querySelector(`[data-chart="${name}"]`), null, { renderer: "canvas" });
  return charts[name];
}
window.addEventListener("resize", () => Object.values(charts).forEach((c) => c.resize()));

const num = (v) => Number(v);

/** The chart's rows, exact as the server sent them, for tests and scripts (the chart itself draws numbers). */
function setValues(name, rows) {
  document.querySelector(`[data-chart="${name}"]`).dataset.values = rows === null ? "" : JSON.stringify(rows);
}

function drawCharts(business) {
  for (const name of ["monthly", "products", "segments", "regions"]) setValues(name, business[name]);
  chart("monthly").setOption({
    tooltip: { trigger: "axis" },
    legend: { top: 0, data: ["Sales", "Profit"] },
    grid: { left: 60, right: 20, top: 36, bottom: 30 },
    xAxis: { type: "category", data: business.monthly.map((m) => m.month) },
    yAxis: { type: "value" },
    series: [
      { name: "Sales", type: "line", showSymbol: false, data: business.monthly.map((m) => num(m.sales)) },
      { name: "Profit", type: "line", showSymbol: false, data: business.monthly.map((m) => num(m.profit)) },
    ],
  });
  const products = [...business.products].reverse();
  chart("products").setOption({
    tooltip: { trigger: "axis", axisPointer: { type: "shadow" } },
    grid: { left: 220, right: 20, top: 10, bottom: 30 },
    xAxis: { type: "value" },
    yAxis: { type: "category", data: products.map((p) => (p.product.length > 34 ? `${p.product.slice(0, 33)}…` : p.product)) },
    series: [{ name: "Sales", type: "bar", data: products.map((p) => num(p.sales)) }],
  });
  chart("segments").setOption({
    tooltip: { trigger: "item" },
    legend: { top: 0 },
    series: [
      {
        name: "Sales",
        type: "pie",
        top: 30,
        radius: ["35%", "70%"],
        label: { position: "inside", formatter: "{d}%", color: "#fff" },
        data: business.segments.map((s) => ({ name: s.segment ?? "(none)", value: num(s.sales) })),
      },
    ],
  });
  chart("regions").setOption({
    tooltip: { trigger: "axis", axisPointer: { type: "shadow" } },
    legend: { top: 0, data: ["Sales", "Profit"] },
    grid: { left: 60, right: 10, top: 36, bottom: 30 },
    xAxis: { type: "category", data: business.regions.map((r) => r.region ?? "(none)") },
    yAxis: { type: "value" },
    series: [
      { name: "Sales", type: "bar", data: business.regions.map((r) => num(r.sales)) },
      { name: "Profit", type: "bar", data: business.regions.map((r) => num(r.profit)) },
    ],
  });
}

function setKpis(kpis) {
  for (const [name, format] of Object.entries(KPI_TEXT)) {
    const element = document.querySelector(`[data-kpi="${name}"]`);
    const value = kpis[name];
    element.dataset.value = value === null ? "" : value;
    element.textContent = format(value);
  }
}

function setHealth(name, text, value) {
  const element = document.querySelector(`[data-health="${name}"]`);
  element.textContent = text;
  if (value !== undefined) element.dataset.value = value === null ? "" : String(value);
  return element;
}

/** The health line's word for each failure the server explained (lib/db.ts, DatabaseProblem). */
const POSTGRES_PROBLEMS = { "server-down": "unreachable", "no-database": "no such database", "login-refused": "login refused" };

function drawHealth(health) {
  const kafka = health.kafka;
  setHealth("kafka", kafka ? (kafka.ok ? `up (${kafka.topic})` : "unreachable") : "–").dataset.state = kafka ? (kafka.ok ? "up" : "down") : "";
  setHealth("messages", kafka?.ok ? whole.format(kafka.messages) : "–", kafka?.ok ? kafka.messages : null);
  setHealth("lag", kafka?.ok ? whole.format(kafka.lag) : "–", kafka?.ok ? kafka.lag : null);
  const pg = health.postgres;
  setHealth("postgres", pg.ok ? `up (${pg.where})` : (POSTGRES_PROBLEMS[pg.problem] ?? "unreachable")).dataset.state = pg.ok ? "up" : "down";
  setHealth("rows", pg.ok ? whole.format(pg.rowsLoaded) : "–", pg.ok ? pg.rowsLoaded : null);
  setHealth("loaded", pg.ok ? whole.format(pg.filesLoaded) : "–", pg.ok ? pg.filesLoaded : null);
  setHealth("rejected", pg.ok ? whole.format(pg.rejectedOpen) : "–", pg.ok ? pg.rejectedOpen : null);
  // Rows loaded although another source has the same Row ID and values: every total counts them twice.
  setHealth("cross-source", pg.ok ? whole.format(pg.rowsCrossSource) : "–", pg.ok ? pg.rowsCrossSource : null).dataset.state =
    pg.ok && pg.rowsCrossSource > 0 ? "down" : "";
  setHealth("last-load", pg.ok && pg.lastLoadAt ? new Date(pg.lastLoadAt).toLocaleTimeString() : "never", pg.ok ? pg.lastLoadAt : null);
  const files = health.files;
  setHealth("pending", files ? whole.format(files.pending) : "–", files ? files.pending : null);
  setHealth("failed", files ? whole.format(files.failed) : "–", files ? files.failed : null);
}

let connected = false;
function drawBanners(snapshot) {
  const banners = [];
  if (!connected) banners.push(["error", "server", "The dashboard server does not answer; the page reconnects by itself."]);
  const pg = snapshot?.health.postgres;
  if (pg && !pg.ok) {
    // A failure the server explained (down, no such database, login refused) says where and what to do itself.
    const why = pg.problem ? `${pg.error}.` : `PostgreSQL at ${pg.where} is unreachable (${pg.error}).`;
    banners.push(["error", "postgres", `${why} ${snapshot.business ? "The numbers below are the last ones read." : "No numbers yet."}`]);
  }
  if (snapshot?.health.kafka && !snapshot.health.kafka.ok) banners.push(["warn", "kafka", `${snapshot.health.kafka.error}.`]);
  if (filterProblem) banners.push(["error", "filter", `The filter in the address is refused: ${filterProblem}.`]);
  const box = document.getElementById("banners");
  box.replaceChildren(
    ...banners.map(([level, state, text]) => {
      const div = document.createElement("div");
      div.className = "banner";
      div.dataset.level = level;
      div.dataset.state = state;
      div.setAttribute("role", "alert");
      div.textContent = text;
      return div;
    }),
  );
}

let latest = null;
function drawFreshness() {
  const element = document.getElementById("freshness");
  if (!latest?.at) return;
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(latest.at)) / 1000));
  element.dataset.at = latest.at;
  element.dataset.gathered = String(latest.gathered);
  element.textContent = `numbers as of ${new Date(latest.at).toLocaleTimeString()} (${seconds} s ago)`;
}
setInterval(drawFreshness, 1000);

/** The numbers of a database the page no longer shows: gone until the new one's arrive. */
function clearNumbers() {
  for (const name of Object.keys(KPI_TEXT)) {
    const element = document.querySelector(`[data-kpi="${name}"]`);
    element.dataset.value = "";
    element.textContent = "–";
  }
  for (const c of Object.values(charts)) c.clear();
  for (const name of ["monthly", "products", "segments", "regions"]) setValues(name, null);
}

/**
 * Which database the numbers come from: make stream's live one (<name>_live) or the demo's. The server behind
 * an open page can change (make dashboard stopped, make stream started on the same port): the other database's
 * numbers are cleared, never shown under this one's name.
 */
function drawDatabase(database) {
  const element = document.getElementById("database");
  if (element.dataset.database === database) return;
  if (element.dataset.database) clearNumbers();
  element.dataset.database = database;
  element.textContent = `database ${database}`;
  document.title = `Superstore sales, live: ${database}`;
}

function draw(snapshot) {
  latest = snapshot;
  drawDatabase(snapshot.database);
  if (snapshot.business) {
    setKpis(snapshot.business.kpis);
    drawCharts(snapshot.business);
    drawChoices(snapshot.business.choices);
  }
  drawHealth(snapshot.health);
  drawBanners(snapshot);
  drawFreshness();
  document.body.dataset.gathered = String(snapshot.gathered);
  document.body.dataset.query = snapshot.query;
}

// --- Filters: the controls, the address, and the stream of the slice they name.

const FILTERS = ["region", "segment", "from", "to"];
const control = (name) => document.querySelector(`[data-filter="${name}"]`);

/** A select's options: All, the values present in the data, and the one chosen even when it matches nothing. */
function setOptions(select, values) {
  const chosen = select.value;
  const wanted = ["", ...values, ...(chosen && !values.includes(chosen) ? [chosen] : [])];
  if (wanted.join("\n") === [...select.options].map((o) => o.value).join("\n")) return;
  select.replaceChildren(...wanted.map((v) => new Option(v === "" ? "All" : v, v)));
  select.value = chosen;
}

function drawChoices(choices) {
  setOptions(control("region"), choices.regions);
  setOptions(control("segment"), choices.segments);
}

/** The controls as the address shows them: `params`' values, an option added for a value not listed yet. */
function setControls(params) {
  for (const name of FILTERS) {
    const element = control(name);
    const value = params.get(name) ?? "";
    if (element.tagName === "SELECT") setOptions(element, value ? [value] : []);
    element.value = value;
  }
}

/** The controls' filter as a query string: the values set, in a fixed order ("" for all rows). */
function controlsQuery() {
  const params = new URLSearchParams();
  for (const name of FILTERS) if (control(name).value) params.set(name, control(name).value);
  return params.toString();
}

/** Why the server refused the stream: a 400 is the filter's fault and is shown; anything else is tried again. */
async function explainRefusal(source, query) {
  const response = await fetch(`/api/snapshot${query ? `?${query}` : ""}`).catch(() => undefined);
  if (source !== events) return; // the filter changed meanwhile
  connected = response !== undefined;
  if (response?.status === 400) {
    filterProblem = (await response.text()).trim();
    drawBanners(latest);
  } else setTimeout(() => source === events && follow(query), 10_000); // busy (503): as its retry-after says
}

let events = null;
let filterProblem = null;
/** Follows the slice `query` names, leaving the one followed before: its messages are not drawn any more. */
function follow(query) {
  events?.close();
  const source = new EventSource(`/api/events${query ? `?${query}` : ""}`);
  events = source;
  source.onopen = () => {
    connected = true;
    drawBanners(latest);
  };
  source.onerror = () => {
    // CLOSED: the server answered with an error (a refused filter, too many pages); otherwise the browser retries.
    if (source.readyState === EventSource.CLOSED) void explainRefusal(source, query);
    else connected = false;
    drawBanners(latest);
  };
  source.onmessage = (event) => {
    connected = true;
    if (source === events) draw(JSON.parse(event.data));
  };
}

/** A control changed: the address says so (shareable), the old slice's numbers go, the new slice's come. */
function filterChanged() {
  const query = controlsQuery();
  history.replaceState(null, "", query ? `?${query}` : location.pathname);
  filterProblem = null;
  latest = null;
  clearNumbers();
  const freshness = document.getElementById("freshness");
  freshness.dataset.at = "";
  freshness.textContent = "waiting for the numbers of this filter…";
  follow(query);
}

for (const name of FILTERS) control(name).addEventListener("change", filterChanged);
document.getElementById("filters").addEventListener("submit", (event) => event.preventDefault());

// The address as it is, unknown parameters included, so the server can say what is wrong with it.
const shared = new URLSearchParams(location.search);
setControls(shared);
follow(shared.toString());
