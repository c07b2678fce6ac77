// The dashboard: the live feed (router/events) in, the page out. Two events: `snapshot`
// (the fleet and its slots, DESIGN.md's status contract) and `stats` (rates, charts,
// recent requests, tuning figures).

import { onUnauthorized, openFeed } from "./api.js";
import { renderBoxes } from "./boxes.js";
import { renderReplicas } from "./replicas.js";
import { LineChart } from "./charts.js";
import { count, el, fill, rate, seconds } from "./dom.js";
import { recentTable, renderQueue, renderTuning } from "./tables.js";
import { renderCosts } from "./costs.js";

const $ = (id) => document.getElementById(id);
const state = { snapshot: null, stats: null };

const charts = [
  new LineChart("Throughput", [{ key: "tps", label: "tokens/s", colour: "--c1" }], rate),
  new LineChart(
    "Requests",
    [
      { key: "rps", label: "requests/s", colour: "--c3" },
      { key: "errors", label: "errors", colour: "--c2" },
    ],
    rate,
  ),
  new LineChart(
    "Latency",
    [
      { key: "ttft", label: "first token", colour: "--c1" },
      { key: "duration", label: "duration", colour: "--c4" },
    ],
    seconds,
  ),
  new LineChart(
    "Queue",
    [
      { key: "waiting", label: "waiting", colour: "--c2" },
      { key: "in_flight", label: "in flight", colour: "--c3" },
    ],
    (v) => rate(v),
  ),
];
fill($("charts"), charts.map((c) => c.node));

function renderTotals() {
  const snap = state.snapshot;
  const totals = state.stats?.totals;
  const items = [
    ["requests", count(totals?.requests ?? snap?.totals?.requests ?? 0)],
    ["errors", count(totals?.errors ?? snap?.totals?.errors ?? 0)],
    ["in flight", snap?.totals?.in_flight ?? 0],
    ["waiting", snap?.queue?.waiting ?? 0],
    ["tokens out", count(totals?.output_tokens ?? 0)],
  ];
  fill($("totals"), items.map(([k, v]) => el("div", {}, el("dt", { text: k }), el("dd", { text: v }))));
}

function renderFleet() {
  if (!state.snapshot) return;
  fill($("boxes"), renderBoxes(state.snapshot, state.stats));
  fill($("queue"), renderQueue(state.snapshot.queue));
  const replicas = renderReplicas(state.snapshot);
  $("replicas-s").hidden = !replicas;
  if (replicas) fill($("replicas"), replicas);
  renderTotals();
}

function renderStats() {
  const stats = state.stats;
  charts.forEach((c) => c.update(stats));
  fill($("recent"), recentTable(stats.recent.slice(0, 25)));
  fill($("tuning"), renderTuning(stats.tuning));
  fill($("costs"), renderCosts(stats.learned, stats.recent));
}

function setConnection(value) {
  const node = $("conn");
  node.dataset.state = value;
  node.textContent = value;
}

// With client auth on, a session that ran out makes requests answer 401: reloading the
// page lets the server send the browser to its login form.
onUnauthorized(() => window.location.reload());

openFeed(
  "router/events",
  {
    snapshot(data) {
      state.snapshot = data;
      renderFleet();
    },
    stats(data) {
      state.stats = data;
      renderStats();
      renderFleet();
    },
  },
  setConnection,
);

window.addEventListener("resize", () => charts.forEach((c) => c.draw()));
window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => charts.forEach((c) => c.draw()));
