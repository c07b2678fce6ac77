// Replicas sharing one fleet through Redis (shared_state): who they are, what they hold,
// and whether this replica reaches Redis. Hidden for a single process.

import { el, seconds } from "./dom.js";

export function renderReplicas(snapshot) {
  const shared = snapshot.shared_state;
  if (!shared || shared.backend === "memory") return null;
  const state = shared.healthy
    ? el("div", { class: "stat" }, "shared state: ", el("b", { text: shared.backend }), " ok")
    : el("div", { class: "stat bad", text: `shared state: ${shared.backend} unreachable; this replica serves on its share of the slots` });
  const head = el("tr", {}, ["Replica", "Address", "Slots held", "Waiting", "Last seen"].map((c) => el("th", { scope: "col", text: c })));
  const rows = (snapshot.replicas || []).map((r) =>
    el(
      "tr",
      { class: r.name === shared.replica ? "me" : null },
      el("td", { class: "name", text: r.name === shared.replica ? `${r.name} (this one)` : r.name }),
      el("td", { text: r.address || "–" }),
      el("td", { class: "num", text: r.leases ?? 0 }),
      el("td", { class: "num", text: r.waiting ?? 0 }),
      el("td", { class: "num", text: r.last_seen === null || r.last_seen === undefined ? "–" : `${seconds(r.last_seen)} ago` }),
    ),
  );
  return [state, el("table", { class: "users replicas" }, el("thead", {}, head), el("tbody", {}, rows))];
}
