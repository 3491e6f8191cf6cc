// The status page: polls /status every two seconds and draws it. Plain DOM
// calls and textContent only, so nothing from /status is ever parsed as HTML.
"use strict";

const svgNS = "http://www.w3.org/2000/svg";
const every = 2000;
// An admin token travels in the fragment (…/#token=T), which browsers never
// send to the server, and goes out only as an Authorization header.
const token = new URLSearchParams(location.hash.slice(1)).get("token");

function el(tag, attrs, ...children) {
  const e = tag.startsWith("svg:") ? document.createElementNS(svgNS, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

// Equirectangular, as the map is drawn.
const x = lon => lon + 180;
const y = lat => 90 - lat;

function ago(when) {
  const s = Math.max(0, Math.round((Date.now() - Date.parse(when)) / 1000));
  return s < 90 ? s + "s ago" : Math.round(s / 60) + "m ago";
}

function banner(msg) {
  const b = document.getElementById("banner");
  b.hidden = !msg;
  b.textContent = msg || "";
}

// Where each region's deployment was drawn, for the flows to end there.
const dots = new Map();

function renderRegions(regions) {
  const g = document.getElementById("regions");
  const tbody = document.querySelector("#regions-table tbody");
  g.replaceChildren();
  tbody.replaceChildren();
  dots.clear();
  const labelled = new Set();
  const products = new Map(); // a region's product deployments drawn so far
  for (const r of regions) {
    // A region's product deployments sit beside its main one, each a dot
    // of its own (its own state and load); the region is labelled once.
    const region = r.region || r.name, k = products.get(region) || 0;
    products.set(region, k + 1);
    const cx = x(r.location.lon) + 5 * k, cy = y(r.location.lat);
    dots.set(r.name, { cx, cy });
    const label = labelled.has(region) ? [] : [el("svg:text", { x: cx + 3.5, y: cy - 2.5, text: region })];
    labelled.add(region);
    const load = r.capacity > 0 ? r.in_flight / r.capacity : 0;
    const tip = `${r.name}: ${r.state}, ${r.in_flight}` + (r.capacity > 0 ? ` of ${r.capacity}` : "") + " in flight";
    g.append(el("svg:g", { "data-region": r.name, "data-state": r.state, class: "state-" + r.state },
      el("svg:title", { text: tip }),
      el("svg:circle", { class: "halo", cx, cy, r: 4 + 6 * Math.min(load, 1) }),
      el("svg:circle", { class: "core", cx, cy, r: 2.4 }),
      ...label));

    const meter = el("span", { class: "meter" + (load >= 1 ? " over" : load >= 0.8 ? " busy" : "") }, el("span"));
    meter.firstChild.style.width = Math.min(100, load * 100).toFixed(1) + "%";
    const loadText = r.capacity > 0 ? `${r.in_flight} / ${r.capacity}` : `${r.in_flight} / unlimited`;
    const capNote = r.capacity !== r.configured_capacity ? ` (configured ${r.configured_capacity}; ${r.capacity_reason})` : "";
    let probe = "not yet";
    if (r.last_probe) {
      probe = (r.last_probe.ok ? r.health : (r.last_probe.error || r.health)) + ", " + ago(r.last_probe.at);
    }
    const breaker = r.breaker + (r.cooling_ms > 0 ? `, cooling ${(r.cooling_ms / 1000).toFixed(1)}s` : "");
    const outcomes = Object.entries(r.outcomes).filter(([, n]) => n > 0).map(([k, n]) => `${k} ${n}`).join(", ") || "none yet";
    tbody.append(el("tr", { "data-region": r.name, "data-state": r.state },
      el("td", { text: r.name }),
      el("td", {}, el("span", { class: "state state-" + r.state, text: r.state })),
      el("td", {}, meter, el("span", { class: "load-text", text: loadText + capNote })),
      el("td", { class: "num", text: r.latency_ms.toFixed(1) + " ms" + (r.slowdown_ms >= 1 ? ` (+${r.slowdown_ms.toFixed(0)} ms over usual)` : "") }),
      el("td", { class: r.last_probe && !r.last_probe.ok ? "error" : "", text: probe }),
      el("td", { text: breaker }),
      el("td", { text: outcomes })));
  }
}

function renderFlows(flows, regions, windowSeconds) {
  const where = new Map(regions.map(r => [r.name, r.location]));
  const g = document.getElementById("flows");
  g.replaceChildren();
  const busiest = Math.max(1, ...flows.map(f => f.requests + f.streams));
  for (const f of flows) {
    const to = where.get(f.region);
    if (!f.located || !to) continue;
    // From where the clients were (to the degree) when the router knew,
    // else from their country's middle.
    const dot = dots.get(f.region) || { cx: x(to.lon), cy: y(to.lat) };
    const x1 = x(f.lon), y1 = y(f.lat), y2 = dot.cy;
    // The short way: across the antimeridian the arc leaves one edge of the
    // map and comes back in at the other, drawn once on each side.
    let x2 = dot.cx;
    if (x2 - x1 > 180) x2 -= 360;
    else if (x1 - x2 > 180) x2 += 360;
    // A curve bowed away from the equator, so flows are told apart from coasts.
    const mx = (x1 + x2) / 2, my = (y1 + y2) / 2 - Math.hypot(x2 - x1, y2 - y1) * 0.2;
    const n = f.requests + f.streams;
    const width = (0.5 + 2.5 * Math.sqrt(n / busiest)).toFixed(2);
    const arc = shift => el("svg:path", { d: `M${x1 + shift},${y1} Q${mx + shift},${my} ${x2 + shift},${y2}`, "stroke-width": width });
    const arcs = [arc(0)];
    if (x2 < 0) arcs.push(arc(360));
    if (x2 > 360) arcs.push(arc(-360));
    const from = f.precise ? `${f.country} (${f.lat}, ${f.lon})` : f.country;
    const tip = `${from} → ${f.region}: ${f.requests} requests, ${f.streams} streams`;
    g.append(el("svg:g", { "data-from": f.country, "data-to": f.region },
      el("svg:title", { text: tip }), ...arcs,
      el("svg:circle", { cx: x1, cy: y1, r: 1.2 })));
  }
  document.getElementById("window").textContent = `last ${windowSeconds}s`;
  const tbody = document.querySelector("#flows-table tbody");
  tbody.replaceChildren();
  if (flows.length === 0) {
    tbody.append(el("tr", {}, el("td", { colspan: 4, text: "no traffic in the window" })));
  }
  for (const f of flows.slice(0, 25)) {
    tbody.append(el("tr", {},
      el("td", { text: f.country === "??" ? "unknown" : f.country }),
      el("td", { text: f.region }),
      el("td", { class: "num", text: f.requests }),
      el("td", { class: "num", text: f.streams })));
  }
}

function renderList(id, pairs) {
  const dl = document.getElementById(id);
  dl.replaceChildren();
  for (const [k, v, cls] of pairs) {
    dl.append(el("dt", { text: k }), el("dd", { text: v, class: cls || "" }));
  }
}

function render(st) {
  const ready = document.getElementById("ready");
  ready.dataset.ready = String(st.ready);
  ready.textContent = st.ready ? "ready" : "not ready: " + st.ready_error;
  document.getElementById("summary").textContent =
    `${st.streams_open} streams open · ${st.regions.filter(r => r.in_rotation).length} of ${st.regions.length} regions in rotation`;
  const all = st.regions.concat(st.draining);
  renderRegions(all);
  renderFlows(st.flows, all, st.window_seconds);
  const fo = st.failover;
  renderList("failover", [
    ["retries", fo.retries], ["failovers", fo.failovers],
    ...Object.entries(fo.failovers_by_cause || {}).map(([c, n]) => ["· after " + c, n]),
    ["spillovers", fo.spillovers], ["hedged handshakes", fo.hedges], ["retries over budget", fo.budget_denied]]);
  const cfg = [["file", st.config.path], ["loaded", new Date(st.config.loaded_at).toLocaleString()], ["reloads", st.config.reloads]];
  if (st.config.last_error) cfg.push(["last reload failed", st.config.last_error, "error"]);
  renderList("config", cfg);
}

async function refresh() {
  try {
    let resp;
    try {
      resp = await fetch("status", { cache: "no-store", headers: token ? { Authorization: "Bearer " + token } : {} });
    } catch (e) {
      throw new Error("The router cannot be reached; retrying.");
    }
    if (resp.status === 401) {
      throw new Error("The admin endpoints need a token: open this page as …/#token=<admin_token>.");
    }
    if (!resp.ok) throw new Error(`/status answered ${resp.status}.`);
    render(await resp.json());
    banner(null);
  } catch (e) {
    banner(e.message);
  } finally {
    setTimeout(refresh, every);
  }
}

refresh();
