// One card per box: health, version, rates, and one slot bar per model in play.

import { bytes, count, el, expiry, rate } from "./dom.js";

const MAX_SEGMENTS = 16; // above this a slot bar is drawn as one gauge

export function renderBoxes(snapshot, stats) {
  const waiting = snapshot.queue?.by_model || {};
  return snapshot.endpoints.map((ep) => boxCard(ep, stats?.boxes?.[ep.name], waiting));
}

function boxCard(ep, figures, waiting) {
  const inUse = ep.models.reduce((n, m) => n + m.in_use, 0);
  const active = ep.models.filter((m) => m.loaded || m.in_use > 0 || waiting[m.name] > 0);
  const idle = ep.models.filter((m) => !active.includes(m));
  const breaker = ep.breaker && ep.breaker !== "closed" ? ep.breaker : null;
  return el(
    "article",
    { class: "box", dataset: { box: ep.name, health: ep.health } },
    el(
      "header",
      {},
      el("h3", { text: ep.name }),
      el("span", { class: `badge health ${ep.health}`, text: ep.health }),
      breaker && el("span", { class: `badge breaker ${breaker}`, text: `breaker ${breaker}` }),
    ),
    el("p", { class: "meta" }, [ep.kind, ep.version].filter(Boolean).join(" "), " · ", ep.url),
    el(
      "dl",
      { class: "figures" },
      figure("req/s", rate(figures?.rps ?? 0)),
      figure("tok/s", rate(figures?.tps ?? 0)),
      figure("in flight", inUse),
      figure("errors", count(figures?.errors ?? 0), figures?.errors ? "bad" : null),
    ),
    ep.error && el("p", { class: "box-error", text: ep.error }),
    active.length
      ? el("ul", { class: "models" }, active.map((m) => modelRow(m, waiting[m.name] || 0)))
      : el("p", { class: "muted", text: "No model loaded." }),
    idle.length > 0 &&
      el("p", { class: "idle-models" }, `Also here (${idle.length}): `, idle.map((m) => m.name).join(", ")),
  );
}

function figure(label, value, tone) {
  return el("div", {}, el("dt", { text: label }), el("dd", { class: tone, text: value }));
}

function modelRow(m, waiting) {
  const loading = m.in_use > 0 && !m.loaded;
  const state = loading ? "loading" : m.loaded ? "loaded" : "not loaded";
  const details = [state, bytes(m.size_vram || m.size), m.loaded ? expiry(m.expires_at) : null];
  const text = `${m.in_use} / ${m.max} in use` + (waiting ? ` · ${waiting} waiting` : "");
  return el(
    "li",
    { class: "model", dataset: { model: m.name, state } },
    el(
      "div",
      { class: "model-head" },
      el("span", { class: "model-name", text: m.name }),
      el("span", { class: `tag ${state.replace(" ", "-")}`, text: details.filter(Boolean).join(" · ") }),
    ),
    el("div", { class: "slot-line" }, slotBar(m, waiting), el("span", { class: "slot-text", text })),
  );
}

function slotBar(m, waiting) {
  const full = m.in_use >= m.max;
  const bar = el("div", {
    class: `slots${full ? " full" : ""}${waiting ? " queued" : ""}`,
    role: "meter",
    "aria-label": `${m.name} slots in use`,
    "aria-valuemin": 0,
    "aria-valuemax": m.max,
    "aria-valuenow": m.in_use,
    dataset: { inUse: m.in_use, max: m.max },
  });
  if (m.max <= MAX_SEGMENTS) {
    for (let i = 0; i < m.max; i++) {
      bar.append(el("span", { class: i < m.in_use ? "slot used" : "slot" }));
    }
    if (m.in_use > m.max) bar.append(el("span", { class: "slot over", text: `+${m.in_use - m.max}` }));
  } else {
    const used = el("span", { class: "gauge" });
    used.style.width = `${Math.min(100, (100 * m.in_use) / m.max)}%`;
    bar.append(used);
  }
  return bar;
}
