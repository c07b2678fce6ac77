// Small line charts on <canvas>: no library. Colours come from the page's CSS variables,
// so the charts follow the light or dark theme.

import { el } from "./dom.js";

export class LineChart {
  // lines: [{key, label, colour: "--c1"}]; format: value -> label
  constructor(title, lines, format) {
    this.lines = lines;
    this.format = format;
    this.data = null;
    this.canvas = el("canvas", { height: 140, "aria-hidden": "true" });
    this.current = lines.map(() => el("span", { class: "now" }));
    const legend = el(
      "ul",
      { class: "legend" },
      lines.map((line, i) =>
        el("li", {}, el("span", { class: `swatch ${line.colour.slice(2)}` }), line.label, " ", this.current[i]),
      ),
    );
    this.node = el("figure", { class: "chart" }, el("figcaption", { text: title }), legend, this.canvas);
  }

  update(data) {
    this.data = data;
    this.lines.forEach((line, i) => {
      const values = data.series[line.key] || [];
      const last = lastValue(values);
      this.current[i].textContent = last === null ? "–" : this.format(last);
    });
    this.draw();
  }

  draw() {
    if (!this.data) return;
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const style = getComputedStyle(canvas);
    const colour = (name) => style.getPropertyValue(name).trim() || "#888";
    const series = this.lines.map((line) => this.data.series[line.key] || []);
    const points = Math.max(1, ...series.map((s) => s.length));
    const top = niceMax(Math.max(0, ...series.flat().filter((v) => v !== null)));
    ctx.font = `11px ${style.fontFamily}`;
    const labels = [0, 0.5, 1].map((f) => this.format(top * f));
    canvas.dataset.axis = labels.join(" / "); // what the axis reads, for tests and tools
    const widest = Math.max(...labels.map((text) => ctx.measureText(text).width));
    const pad = { left: Math.ceil(widest) + 10, right: 6, top: 6, bottom: 18 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const x = (i) => pad.left + (points === 1 ? plotW : (i / (points - 1)) * plotW);
    const y = (v) => pad.top + plotH - (v / top) * plotH;

    ctx.fillStyle = colour("--muted");
    ctx.strokeStyle = colour("--grid");
    ctx.lineWidth = 1;
    ctx.textBaseline = "middle";
    [0, 0.5, 1].forEach((f, i) => {
      const v = top * f;
      ctx.beginPath();
      ctx.moveTo(pad.left, Math.round(y(v)) + 0.5);
      ctx.lineTo(width - pad.right, Math.round(y(v)) + 0.5);
      ctx.stroke();
      ctx.textAlign = "right";
      ctx.fillText(labels[i], pad.left - 6, y(v));
    });
    ctx.textBaseline = "alphabetic";
    const span = ((points - 1) * this.data.step) / 60;
    ctx.textAlign = "left";
    ctx.fillText(`−${Math.round(span)} min`, pad.left, height - 4);
    ctx.textAlign = "right";
    ctx.fillText("now", width - pad.right, height - 4);

    ctx.lineWidth = 1.5;
    ctx.lineJoin = "round";
    this.lines.forEach((line, n) => {
      const values = series[n];
      const offset = points - values.length;
      ctx.strokeStyle = colour(line.colour);
      ctx.beginPath();
      let drawing = false;
      values.forEach((v, i) => {
        if (v === null) {
          drawing = false;
          return;
        }
        if (drawing) ctx.lineTo(x(i + offset), y(v));
        else ctx.moveTo(x(i + offset), y(v));
        drawing = true;
      });
      ctx.stroke();
    });
  }
}

function lastValue(values) {
  for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null) return values[i];
  return null;
}

function niceMax(v) {
  if (v <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * power) return m * power;
  return 10 * power;
}
