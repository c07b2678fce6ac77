// The waiting room, the recent requests table and the tuning figures.

import { clock, count, el, rate, seconds } from "./dom.js";

export function renderQueue(queue) {
  if (!queue) return [];
  const items = [
    el("div", { class: "stat" }, el("span", { class: "big", text: queue.waiting ?? 0 }), " waiting"),
  ];
  if (queue.oldest_wait !== undefined && queue.waiting > 0) {
    const tone = queue.oldest_wait > 10 ? "bad" : queue.oldest_wait > 1 ? "warn" : "";
    items.push(
      el(
        "div",
        { class: "stat" },
        el("span", { class: `big ${tone}`, text: seconds(queue.oldest_wait) }),
        " oldest wait",
      ),
    );
  }
  if (queue.max_waiting !== undefined) items.push(el("div", { class: "stat muted", text: `room for ${queue.max_waiting}` }));
  if (queue.enabled === false) items.push(el("div", { class: "stat warn", text: "waiting room off" }));
  const byModel = Object.entries(queue.by_model || {}).filter(([, n]) => n > 0);
  if (byModel.length) {
    items.push(el("ul", { class: "by-model" }, byModel.map(([model, n]) => el("li", {}, el("b", { text: n }), " ", model))));
  }
  const users = queue.users || [];
  if (users.length) {
    // Fair share: the next waiting request goes to the user served least lately.
    const head = el("tr", {}, ["User", "Waiting", "Served lately"].map((c) => el("th", { scope: "col", text: c })));
    const rows = users.map((u) =>
      el(
        "tr",
        {},
        el("td", { class: "name", text: u.user }),
        el("td", { class: "num", text: u.waiting }),
        el("td", { class: "num", title: "weighted tokens in the fairness window", text: count(u.service) }),
      ),
    );
    items.push(el("table", { class: "users" }, el("thead", {}, head), el("tbody", {}, rows)));
  }
  return items;
}

const COLUMNS = ["Time", "Model", "Box", "Route", "Status", "Waited", "First token", "Duration", "Tokens in → out", "tok/s", "Why this box"];

export function recentTable(rows) {
  const head = el("thead", {}, el("tr", {}, COLUMNS.map((c) => el("th", { scope: "col", text: c }))));
  const body = el(
    "tbody",
    {},
    rows.map((r) => {
      const failed = r.failed || r.status >= 400;
      const status = r.status || (r.error === "client left" ? "left" : "–");
      const cells = [
        el("td", { text: clock(r.at) }),
        el("td", { class: "model", text: r.model }),
        el("td", { class: "box-name", text: r.box || "–" }),
        el("td", { text: r.route }),
        el("td", { class: failed ? "bad" : r.status ? "ok" : "muted", title: r.error || null, text: status }),
        el("td", { class: "num", text: r.waited >= 0.001 ? seconds(r.waited) : "–" }),
        el("td", { class: "num", text: seconds(r.ttft) }),
        el("td", { class: "num", text: seconds(r.duration) }),
        el("td", { class: "num", text: `${count(r.prompt_tokens)} → ${count(r.output_tokens)}` }),
        el("td", { class: "num", text: rate(r.decode_tps) }),
        el("td", { class: "why", text: r.why || "–" }),
      ];
      // On a phone each row is a card and each cell says which column it is (CSS).
      cells.forEach((td, i) => td.setAttribute("data-label", COLUMNS[i]));
      return el("tr", { class: failed ? "failed" : null }, cells);
    }),
  );
  if (!rows.length) {
    body.append(el("tr", {}, el("td", { colspan: COLUMNS.length, class: "muted", text: "No requests yet." })));
  }
  return el("table", { class: "recent" }, head, body);
}

export function renderTuning(rows) {
  if (!rows.length) return [el("p", { class: "muted", text: "Figures appear as requests finish." })];
  return rows.map(tuningCard);
}

const LEVEL_COLUMNS = [
  ["In flight", "requests in flight on this box and model"],
  ["Seen", "requests measured at this level"],
  ["tok/s each", "decode tokens/s of one request, as the box measured it"],
  ["tok/s total", "output tokens/s of all requests together"],
];

function tuningCard(row) {
  const differs = row.suggested !== null && row.max !== null && row.suggested !== row.max;
  return el(
    "article",
    { class: "tune", dataset: { box: row.box, model: row.model } },
    el("h3", {}, el("span", { class: "box-name", text: row.box }), " · ", el("span", { class: "name", text: row.model })),
    el(
      "p",
      {},
      "max_concurrent ",
      el("b", { text: row.max ?? "–" }),
      " · suggested ",
      el("b", { class: differs ? "accent" : null, text: row.suggested ?? "–" }),
    ),
    differs &&
      el(
        "p",
        { class: "muted key" },
        "to change it: ",
        el("code", { text: "max_concurrent" }),
        ` on endpoint ${row.box} in the config`,
      ),
    el("p", { class: "muted", text: row.reason }),
    el("div", { class: "scroll" }, levelsTable(row)),
  );
}

function levelsTable(row) {
  const best = Math.max(1, ...row.levels.map((l) => l.total_tps || 0));
  const head = el("tr", {}, LEVEL_COLUMNS.map(([text, title]) => el("th", { scope: "col", title, text })));
  const body = row.levels.map((l) => {
    const bar = el("span", { class: "bar" });
    bar.style.width = `${Math.round((100 * (l.total_tps || 0)) / best)}%`;
    return el(
      "tr",
      { class: l.concurrency === row.suggested ? "picked" : null },
      el("td", { class: "num", text: l.concurrency }),
      el("td", { class: "num", text: l.samples }),
      el("td", { class: "num", text: rate(l.decode_tps) }),
      el("td", { class: "num total" }, el("span", { text: rate(l.total_tps) }), bar),
    );
  });
  return el("table", { class: "levels" }, el("thead", {}, head), el("tbody", {}, body));
}
