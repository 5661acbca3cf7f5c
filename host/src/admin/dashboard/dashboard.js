// Sluice's dashboard: reads the admin API's JSON endpoints every second and draws them. Nothing
// here is built or fetched from elsewhere; every value is written with textContent, never as
// markup, so names and errors from the configuration cannot inject anything into the page.
"use strict";

const POLL_MS = 1000;
const ROUTES_PER_PAGE = 50;
const CHART_POINTS = 300;
const TOKEN_KEY = "sluice-admin-read-token";

const state = {
  status: null,
  live: null,
  routes: null,
  routesGeneration: null,
  upstreams: null,
  plugins: null,
  tenants: null,
  shadows: null,
  cache: null,
  history: [],
  routeSearch: "",
  routePage: 0,
};

// ---- small helpers -------------------------------------------------------------------------

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function byId(id) {
  return document.getElementById(id);
}

function setText(id, text) {
  const node = byId(id);
  if (node) node.textContent = text;
}

function number(value, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(value)) return "-";
  return Number(value).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

function percent(value) {
  if (value === null || value === undefined) return "-";
  return `${(value * 100).toFixed(value < 0.01 && value > 0 ? 2 : 1)}%`;
}

function bytes(value) {
  if (value === null || value === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let amount = value;
  let unit = 0;
  while (amount >= 1024 && unit < units.length - 1) {
    amount /= 1024;
    unit += 1;
  }
  return `${amount.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

function when(unixSeconds) {
  if (!unixSeconds) return "";
  return new Date(unixSeconds * 1000).toLocaleString();
}

function shortDigest(digest) {
  return digest ? digest.replace(/^sha256:/, "").slice(0, 12) : "-";
}

function numberCell(field, text) {
  return el("td", { class: "number", dataset: { field } }, text);
}

function replaceRows(tbody, rows) {
  tbody.replaceChildren(...rows);
}

// ---- the admin API --------------------------------------------------------------------------

class Refused extends Error {}

function readToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  const token = options.token !== undefined ? options.token : readToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, { method: options.method || "GET", headers, body: options.body, cache: "no-store" });
  if (response.status === 401 && options.token === undefined) {
    byId("read-token").hidden = false;
    throw new Refused("the read token is needed");
  }
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch (_) {
    body = { error: text };
  }
  return { status: response.status, body };
}

async function read(path) {
  const { status, body } = await api(path);
  if (status !== 200) throw new Error(`${path}: ${status} ${body && body.error ? body.error : ""}`);
  return body;
}

// ---- views ----------------------------------------------------------------------------------

function currentView() {
  const hash = decodeURIComponent(location.hash.replace(/^#\/?/, ""));
  if (hash.startsWith("routes/")) return { view: "route", route: hash.slice("routes/".length) };
  const view = hash.split("/")[0] || "overview";
  return { view: ["overview", "routes", "upstreams", "plugins", "tenants", "cache"].includes(view) ? view : "overview" };
}

function showView() {
  const { view } = currentView();
  for (const section of document.querySelectorAll(".view")) {
    section.hidden = section.id !== `view-${view}`;
  }
  for (const link of document.querySelectorAll("nav a")) {
    const linked = link.dataset.view;
    link.classList.toggle("current", linked === view || (view === "route" && linked === "routes"));
  }
  render();
}

function liveRoute(name) {
  if (!state.live) return null;
  return state.live.routes.find((route) => route.name === name) || null;
}

function renderOverview() {
  const status = state.status;
  if (status) {
    setText("overview-generation", number(status.generation));
    setText("overview-loaded", `loaded ${when(status.loaded_at)}`);
    setText("overview-source", status.source ? `Configuration: ${status.source} (Sluice ${status.version})` : "");
    const failure = status.last_error;
    byId("reload-error").hidden = !failure;
    setText("reload-error-text", failure ? failure.error : "");
    setText("reload-error-at", failure ? `at ${when(failure.at)}` : "");
  }
  const live = state.live;
  if (live) {
    const totals = live.totals;
    setText("overview-rps", number(totals.requests_per_second, 1));
    setText("overview-requests", `${number(totals.requests)} since start`);
    setText("overview-errors", percent(totals.error_rate));
    setText("overview-error-count", `${number(totals.server_errors)} 5xx, ${number(totals.client_errors)} 4xx since start`);
    setText("overview-latency", `${number(totals.p50_ms, 1)} / ${number(totals.p99_ms, 1)} ms`);
    const busiest = [...live.routes]
      .sort((a, b) => (b.requests_per_second || 0) - (a.requests_per_second || 0) || b.requests - a.requests)
      .slice(0, 10);
    replaceRows(byId("overview-routes"), busiest.map((route) =>
      el("tr", { dataset: { route: route.name } },
        el("td", {}, el("a", { href: `#/routes/${encodeURIComponent(route.name)}` }, route.name)),
        numberCell("requests", number(route.requests)),
        numberCell("rps", number(route.requests_per_second, 1)),
        numberCell("errors", percent(route.error_rate)),
        numberCell("p50", number(route.p50_ms, 2)),
        numberCell("p99", number(route.p99_ms, 2)))));
  }
  if (state.upstreams) {
    const servers = Object.values(state.upstreams).flatMap((upstream) => upstream.servers);
    const down = servers.filter((server) => server.state !== "available");
    setText("overview-servers", `${servers.length - down.length} / ${servers.length}`);
    setText("overview-servers-down", down.length ? `${down.length} not taking requests` : "all available");
  }
  if (state.cache) {
    setText("overview-cache", percent(state.cache.hit_ratio));
    setText("overview-cache-bytes", `${bytes(state.cache.stored_bytes)} stored`);
  }
  drawChart();
}

function drawChart() {
  const chart = byId("overview-chart");
  const points = state.history;
  const most = Math.max(1, ...points);
  const step = 600 / Math.max(1, CHART_POINTS - 1);
  const offset = CHART_POINTS - points.length;
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points.map((value, index) => `${((offset + index) * step).toFixed(1)},${(115 - (value / most) * 105).toFixed(1)}`).join(" "));
  chart.replaceChildren(line);
  setText("overview-chart-peak", points.length ? `peak ${number(most, 1)}/s over the last ${points.length} s` : "");
}

function matchText(route) {
  const parts = [];
  if (route.hosts.length) parts.push(route.hosts.join(", "));
  const path = route.path;
  if (path.exact) parts.push(`= ${path.exact}`);
  else if (path.prefix) parts.push(`${path.prefix}*`);
  else if (path.regex) parts.push(`~ ${path.regex}`);
  if (route.methods.length) parts.push(route.methods.join(","));
  if (route.headers.length) parts.push(`${route.headers.length} header condition(s)`);
  return parts.join(" ") || "any";
}

function actionText(route) {
  if (route.action.forward) {
    return "-> " + route.action.forward.upstreams.map((choice) => choice.upstream + (route.action.forward.upstreams.length > 1 ? ` (${choice.weight})` : "")).join(", ");
  }
  const redirect = route.action.redirect;
  return `redirect ${redirect.status}`;
}

function filteredRoutes() {
  if (!state.routes) return [];
  const search = state.routeSearch.trim().toLowerCase();
  return search ? state.routes.filter((route) => route.name.toLowerCase().includes(search)) : state.routes;
}

function renderRoutes() {
  const routes = filteredRoutes();
  const pages = Math.max(1, Math.ceil(routes.length / ROUTES_PER_PAGE));
  state.routePage = Math.min(state.routePage, pages - 1);
  const shown = routes.slice(state.routePage * ROUTES_PER_PAGE, (state.routePage + 1) * ROUTES_PER_PAGE);
  setText("route-count", `${number(routes.length)} of ${number(state.routes ? state.routes.length : 0)} routes`);
  setText("route-page", `page ${state.routePage + 1} of ${pages}`);
  byId("route-prev").disabled = state.routePage === 0;
  byId("route-next").disabled = state.routePage >= pages - 1;
  replaceRows(byId("routes-body"), shown.map((route) => {
    const live = liveRoute(route.name) || {};
    return el("tr", { dataset: { route: route.name } },
      el("td", {}, el("a", { href: `#/routes/${encodeURIComponent(route.name)}` }, route.name)),
      el("td", {}, route.tenant),
      el("td", {}, matchText(route)),
      el("td", {}, actionText(route)),
      numberCell("filters", route.filters.length),
      numberCell("requests", number(live.requests)),
      numberCell("rps", number(live.requests_per_second, 1)),
      numberCell("errors", percent(live.error_rate)),
      numberCell("p50", number(live.p50_ms, 2)),
      numberCell("p99", number(live.p99_ms, 2)));
  }));
}

function settingsRows(list, entries) {
  const rows = [];
  for (const [name, value] of entries) {
    if (value === null || value === undefined) continue;
    rows.push(el("dt", {}, name), el("dd", {}, typeof value === "string" ? value : JSON.stringify(value, null, 2)));
  }
  list.replaceChildren(...rows);
}

function renderRoute(name) {
  const route = state.routes ? state.routes.find((candidate) => candidate.name === name) : null;
  setText("route-title", route ? `Route ${name}` : `No route named ${name}`);
  const live = liveRoute(name) || { filters: [] };
  setText("route-requests", number(live.requests));
  setText("route-rps", number(live.requests_per_second, 1));
  setText("route-errors", percent(live.error_rate));
  setText("route-latency", `${number(live.p50_ms, 2)} / ${number(live.p99_ms, 2)} ms`);
  if (!route) {
    replaceRows(byId("route-filters"), []);
    byId("route-settings").replaceChildren();
    return;
  }
  const versions = route.filters.flatMap((filter) => (filter.canary ? [filter, filter.canary] : [filter]));
  replaceRows(byId("route-filters"), versions.map((filter) => {
    const figures = live.filters.find((candidate) => candidate.place === filter.place) || {};
    const instances = filter.instances ? `${filter.instances.warm} / ${filter.instances.busy}` : "-";
    return el("tr", { dataset: { place: filter.place } },
      el("td", {}, filter.place + (filter.percent ? ` (${filter.percent}%)` : "")),
      el("td", {}, filter.plugin),
      el("td", { class: "digest", title: filter.digest }, shortDigest(filter.digest)),
      el("td", {}, filter.on_error),
      numberCell("instances", instances),
      numberCell("calls", number(figures.calls)),
      numberCell("calls-per-second", number(figures.calls_per_second, 1)),
      numberCell("p50", number(figures.p50_us, 0)),
      numberCell("p99", number(figures.p99_us, 0)),
      el("td", { class: "number" + (figures.failures ? " state failed" : ""), dataset: { field: "failures" } }, number(figures.failures)));
  }));
  renderShadows(name);
  settingsRows(byId("route-settings"), [
    ["tenant", route.tenant],
    ["match", matchText(route)],
    ["action", route.action],
    ["max body", bytes(route.max_body_bytes)],
    ["cache", route.cache],
    ["compression", route.compression],
    ["access rules", route.access_rules ? "yes" : "none"],
  ]);
}

function renderShadows(route) {
  const shadows = state.shadows ? state.shadows.shadows.filter((shadow) => shadow.route === route) : [];
  byId("route-shadows-section").hidden = shadows.length === 0;
  replaceRows(byId("route-shadows"), shadows.map((shadow) => {
    const disagreed = shadow.disagreed;
    const total = disagreed.decision + disagreed.status + disagreed.headers + disagreed.body;
    return el("tr", { dataset: { place: shadow.place } },
      el("td", {}, shadow.place),
      el("td", {}, shadow.plugin),
      numberCell("agreed", number(shadow.agreed)),
      el("td", { class: "number" + (total ? " state failed" : ""), dataset: { field: "disagreed" } },
        `${number(total)} (${number(disagreed.decision)} / ${number(disagreed.status)} / ${number(disagreed.headers)} / ${number(disagreed.body)})`),
      numberCell("skipped", number(shadow.skipped)),
      numberCell("failed", number(shadow.failed)));
  }));
  const recent = shadows.flatMap((shadow) => shadow.recent_disagreements).slice(0, 10);
  replaceRows(byId("route-disagreements"), recent.map((kept) =>
    el("tr", {},
      el("td", {}, new Date(kept.at).toLocaleTimeString()),
      el("td", { class: "digest" }, kept.request_id),
      el("td", {}, kept.phase),
      el("td", {}, kept.disagreement),
      el("td", {}, kept.real),
      el("td", {}, kept.shadow))));
}

function renderUpstreams() {
  if (!state.upstreams) return;
  const blocks = Object.entries(state.upstreams).map(([name, upstream]) => {
    const check = upstream.health_check;
    const about = [
      `balancer ${upstream.balancer}`,
      check ? `health check every ${check.interval_ms} ms (fall ${check.fall}, rise ${check.rise})` : "no active health check",
      upstream.outlier_detection ? "outlier detection on" : "outlier detection off",
    ].join(" · ");
    return el("div", { class: "upstream", dataset: { upstream: name } },
      el("h2", {}, name),
      el("p", { class: "note" }, about),
      el("table", { class: "grid" },
        el("thead", {}, el("tr", {}, ...["Server", "State", "Weight", "In flight", "Latency (EWMA)", "Ejections"].map((title) => el("th", {}, title)))),
        el("tbody", {}, ...upstream.servers.map((server) =>
          el("tr", { dataset: { server: server.address } },
            el("td", {}, server.address),
            el("td", { class: `state ${server.state}`, dataset: { field: "state" } }, server.state),
            numberCell("weight", server.weight),
            numberCell("in-flight", server.in_flight),
            numberCell("latency", server.latency_ewma_us ? `${number(server.latency_ewma_us / 1000, 2)} ms` : "-"),
            numberCell("ejections", server.ejections))))));
  });
  byId("upstreams-body").replaceChildren(...blocks);
}

function renderPlugins() {
  if (!state.plugins) return;
  replaceRows(byId("plugins-body"), state.plugins.plugins.map((plugin) =>
    el("tr", { dataset: { plugin: plugin.name } },
      el("td", {}, plugin.name),
      el("td", {}, plugin.source || "-"),
      el("td", { class: "digest", title: plugin.digest }, shortDigest(plugin.digest)),
      el("td", {}, plugin.world),
      el("td", {}, plugin.capabilities.join(", ") || "none"),
      numberCell("instances", `${plugin.instances.warm} / ${plugin.instances.busy}`),
      el("td", {}, plugin.used_by.map((use) => `${use.route} ${use.place}`).join(", ") || "unused"),
      el("td", {}, plugin.config_schema
        ? el("details", {}, el("summary", {}, "schema"), el("pre", {}, JSON.stringify(plugin.config_schema, null, 2)))
        : "none"))));
}

function renderTenants() {
  if (!state.tenants) return;
  replaceRows(byId("tenants-body"), state.tenants.tenants.map((tenant) => {
    const grants = tenant.grants;
    const now = tenant.now;
    const used = tenant.since_start;
    return el("tr", { dataset: { tenant: tenant.name } },
      el("td", {}, tenant.name),
      numberCell("routes", tenant.routes),
      numberCell("instances", `${now.instances.warm + now.instances.busy} (${now.instances.busy} busy) / ${grants.max_instances}`),
      numberCell("memory", bytes(now.memory_bytes)),
      numberCell("memory-peak", `${bytes(used.memory_peak_bytes)} / ${bytes(grants.memory_bytes)}`),
      numberCell("cpu", `${number(used.guest_cpu_seconds, 3)} s` + (grants.cpu_ms_per_second ? ` (grant ${grants.cpu_ms_per_second} ms/s)` : "")),
      numberCell("calls", number(used.calls)),
      numberCell("kv", `${now.kv_keys === null ? "remote" : number(now.kv_keys)} / ${number(grants.kv.max_keys)}`),
      numberCell("callouts", number(used.callouts)),
      numberCell("requests", number(used.requests)));
  }));
}

function renderCache() {
  const cache = state.cache;
  if (!cache) return;
  setText("cache-hit-ratio", percent(cache.hit_ratio));
  setText("cache-bytes", bytes(cache.stored_bytes));
  setText("cache-max", `of ${bytes(cache.max_bytes)}`);
  setText("cache-entries", number(cache.entries));
  replaceRows(byId("cache-routes"), cache.routes.map((route) =>
    el("tr", { dataset: { route: route.route } }, el("td", {}, route.route), numberCell("hit-ratio", percent(route.hit_ratio)))));
}

function render() {
  const { view, route } = currentView();
  if (view === "overview") renderOverview();
  else if (view === "routes") renderRoutes();
  else if (view === "route") renderRoute(route);
  else if (view === "upstreams") renderUpstreams();
  else if (view === "plugins") renderPlugins();
  else if (view === "tenants") renderTenants();
  else if (view === "cache") renderCache();
}

// ---- polling --------------------------------------------------------------------------------

let polling = false;

async function poll() {
  if (polling) return;
  polling = true;
  const connection = byId("connection");
  try {
    const { view } = currentView();
    // `/cache` takes a reading of every route's counters as `/live` does: asked only by the
    // views that show it.
    const wantsCache = view === "overview" || view === "cache";
    const [status, live, upstreams, cache] = await Promise.all([
      read("/status"), read("/live"), read("/upstreams"), wantsCache ? read("/cache") : Promise.resolve(state.cache),
    ]);
    state.status = status;
    state.live = live;
    state.upstreams = upstreams;
    state.cache = cache;
    if (live.totals.requests_per_second !== null) {
      state.history.push(live.totals.requests_per_second);
      if (state.history.length > CHART_POINTS) state.history.shift();
    }
    if (state.routesGeneration !== status.generation || !state.routes) {
      state.routes = (await read("/routes")).routes;
      state.routesGeneration = status.generation;
    }
    if (view === "route") state.shadows = await read("/shadows");
    if (view === "plugins") state.plugins = await read("/plugins");
    if (view === "tenants") state.tenants = await read("/tenants");
    byId("read-token").hidden = true;
    connection.textContent = `live · generation ${status.generation}`;
    connection.classList.remove("down");
    render();
  } catch (error) {
    connection.textContent = error instanceof Refused ? "token needed" : "not answering";
    connection.classList.add("down");
  } finally {
    polling = false;
  }
}

// ---- forms ----------------------------------------------------------------------------------

function showResult(id, ok, text) {
  const node = byId(id);
  node.textContent = text;
  node.className = `result ${ok ? "ok" : "refused"}`;
}

async function purge(event) {
  event.preventDefault();
  const form = event.target;
  const wanted = { [form.kind.value]: form.value.value };
  if (form.route.value.trim()) wanted.route = form.route.value.trim();
  showResult("purge-result", true, "purging...");
  try {
    const { status, body } = await api("/cache/purge", {
      method: "POST",
      token: form.token.value || null,
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(wanted),
    });
    if (status === 200) showResult("purge-result", true, `purged ${body.purged} entr${body.purged === 1 ? "y" : "ies"}`);
    else showResult("purge-result", false, `refused (${status}): ${body && body.error ? body.error : ""}`);
  } catch (error) {
    showResult("purge-result", false, `failed: ${error.message}`);
  }
  poll();
}

async function reload(event) {
  event.preventDefault();
  const form = event.target;
  showResult("reload-result", true, "reloading...");
  try {
    const { status, body } = await api("/reload?wait=true", { method: "POST", token: form.token.value || null });
    if (status === 200) showResult("reload-result", true, `generation ${body.generation} serving`);
    else showResult("reload-result", false, `refused (${status}): ${body && body.error ? body.error : ""}`);
  } catch (error) {
    showResult("reload-result", false, `failed: ${error.message}`);
  }
  poll();
}

function start() {
  byId("purge-form").addEventListener("submit", purge);
  byId("reload-form").addEventListener("submit", reload);
  byId("read-token").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, event.target.token.value);
    event.target.token.value = "";
    poll();
  });
  byId("route-search").addEventListener("input", (event) => {
    state.routeSearch = event.target.value;
    state.routePage = 0;
    renderRoutes();
  });
  byId("route-prev").addEventListener("click", () => {
    state.routePage = Math.max(0, state.routePage - 1);
    renderRoutes();
  });
  byId("route-next").addEventListener("click", () => {
    state.routePage += 1;
    renderRoutes();
  });
  window.addEventListener("hashchange", showView);
  showView();
  poll();
  setInterval(poll, POLL_MS);
}

start();
