// What routing has learned per box and model (load time, prefill and decode rates, the
// time a request holds a slot), and how good its estimates are: for recent requests, the
// time to first token predicted when each arrived against the one it saw.

import { el, rate, seconds } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";
const COLUMNS = [
  ["Box", "the box"],
  ["Model", "the model"],
  ["Load", "seconds to load the model (load_duration)"],
  ["Prefill tok/s", "uncached prompt tokens per second (prompt_eval_count / prompt_eval_duration)"],
  ["Decode tok/s", "output tokens per second (eval_count / eval_duration)"],
  ["Slot time", "seconds a request holds a slot once the model is in memory"],
];

export function renderCosts(learned, recent) {
  const rows = learned || [];
  if (!rows.length) return [el("p", { class: "muted", text: "Figures appear as requests finish." })];
  const head = el("tr", {}, COLUMNS.map(([text, title]) => el("th", { scope: "col", title, text })));
  const body = rows.map((r) => {
    const cells = [
      el("td", { class: "box-name", text: r.box }),
      el("td", { class: "model", text: r.model }),
      el("td", { class: "num", text: seconds(r.load_s) }),
      el("td", { class: "num", text: rate(r.prefill_tokens_per_s) }),
      el("td", { class: "num", text: rate(r.decode_tokens_per_s), title: bySharing(r.decode_tokens_per_s_by_sharing) }),
      el("td", { class: "num", text: seconds(r.service_s) }),
    ];
    // On a phone each row is a card and each cell says which column it is (CSS).
    cells.forEach((td, i) => td.setAttribute("data-label", COLUMNS[i][0]));
    return el("tr", {}, cells);
  });
  const table = el("table", { class: "learned" }, el("thead", {}, head), el("tbody", {}, body));
  return [el("div", { class: "scroll" }, table), accuracy(recent || [])];
}

// "1 running: 100 tok/s; 2 running: 50 tok/s": the decode rate per number of the model's
// requests the box ran together (the cell's tooltip).
function bySharing(levels) {
  const entries = Object.entries(levels || {});
  return entries.map(([n, r]) => `${n} running: ${rate(r)}`).join("; ");
}

function accuracy(recent) {
  const points = recent.filter((r) => r.predicted_ttft !== null && r.predicted_ttft !== undefined && r.ttft !== null);
  if (!points.length) return el("p", { class: "muted", text: "Predicted against actual first token: no estimates yet." });
  const top = Math.max(0.1, ...points.map((p) => Math.max(p.ttft, p.predicted_ttft))) * 1.05;
  const size = 200;
  const pad = 28;
  const scale = (v) => (v / top) * (size - pad);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${size} ${size}`);
  svg.setAttribute("class", "accuracy");
  svg.setAttribute("role", "img");
  const errors = points.map((p) => Math.abs(p.predicted_ttft - p.ttft)).sort((a, b) => a - b);
  const median = errors[Math.floor(errors.length / 2)];
  svg.setAttribute("aria-label", `predicted against actual time to first token, ${points.length} requests`);
  const line = document.createElementNS(SVG, "line");
  Object.entries({ x1: pad, y1: size - pad, x2: size, y2: 0, class: "diagonal" }).forEach(([k, v]) => line.setAttribute(k, v));
  svg.append(line);
  for (const p of points) {
    const dot = document.createElementNS(SVG, "circle");
    dot.setAttribute("cx", pad + scale(p.predicted_ttft));
    dot.setAttribute("cy", size - pad - scale(p.ttft));
    dot.setAttribute("r", 2.5);
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${p.box} ${p.model}: predicted ${seconds(p.predicted_ttft)}, saw ${seconds(p.ttft)}`;
    dot.append(title);
    svg.append(dot);
  }
  for (const [x, y, text, anchor] of [
    [size / 2 + pad / 2, size - 6, "predicted", "middle"],
    [pad, size - pad + 12, "0", "middle"],
    [size - 2, size - pad + 12, seconds(top), "end"],
  ]) {
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("x", x);
    label.setAttribute("y", y);
    label.setAttribute("text-anchor", anchor);
    label.textContent = text;
    svg.append(label);
  }
  return el(
    "figure",
    { class: "accuracy" },
    svg,
    el("figcaption", {
      class: "muted",
      text: `Time to first token predicted on arrival (across) against the one seen (up), last ${points.length} requests; on the diagonal the estimate was right. Median error ${seconds(median)}.`,
    }),
  );
}
