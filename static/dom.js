// Building DOM from data without ever parsing data as HTML: every string a box or a
// client sent (model names, errors, URLs) becomes a text node or an attribute value.

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function fill(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

export function rate(n) {
  if (n === null || n === undefined) return "–";
  return n < 10 ? n.toFixed(1) : Math.round(n).toLocaleString("en");
}

export function count(n) {
  if (n === null || n === undefined) return "–";
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)}G`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e4) return `${(n / 1e3).toFixed(1)}k`;
  return Math.round(n).toLocaleString("en");
}

export function seconds(s) {
  if (s === null || s === undefined) return "–";
  if (s === 0) return "0 ms";
  // Each unit is chosen by the value as it will be shown, so rounding never gives
  // "1000 ms", "60.0 s" or "4m 60s".
  const ms = s * 1000;
  if (ms < 9.95) return `${ms < 0.995 ? ms.toFixed(2) : ms.toFixed(1)} ms`;
  if (Math.round(ms) < 1000) return `${Math.round(ms)} ms`;
  if (s < 59.95) return `${s.toFixed(1)} s`;
  const whole = Math.round(s);
  if (whole < 3600) return `${Math.floor(whole / 60)}m ${whole % 60}s`;
  const minutes = Math.round(s / 60);
  return `${Math.floor(minutes / 60)}h ${minutes % 60}m`;
}

export function bytes(n) {
  if (!n) return null;
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)} GB`;
  return `${Math.round(n / 1e6)} MB`;
}

// "unloads in 4m" from Ollama's expires_at; far-future dates mean "kept loaded".
export function expiry(iso, now = Date.now()) {
  if (!iso) return null;
  const at = Date.parse(iso);
  if (Number.isNaN(at)) return null;
  const left = (at - now) / 1000;
  if (left > 86400 * 365) return "kept loaded";
  return left <= 0 ? "unloading" : `unloads in ${seconds(left)}`;
}

export function clock(epochSeconds) {
  const d = new Date(epochSeconds * 1000);
  return d.toLocaleTimeString("en-GB", { hour12: false });
}
