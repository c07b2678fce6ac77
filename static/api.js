// Every request the dashboard makes goes through this module: same-origin, cookies
// included, no key in a URL or in storage. When client auth arrives, a 401 here is where
// a login form gets shown (onUnauthorized), and the feed reconnects once it is done.

const unauthorized = new Set();

export function onUnauthorized(listener) {
  unauthorized.add(listener);
}

export class ApiError extends Error {
  constructor(path, status) {
    super(`${path}: HTTP ${status}`);
    this.status = status;
  }
}

export async function api(path, options = {}) {
  const response = await fetch(path, {
    credentials: "same-origin",
    headers: { accept: "application/json" },
    ...options,
  });
  if (response.status === 401) {
    for (const listener of unauthorized) listener();
  }
  if (!response.ok) throw new ApiError(path, response.status);
  return response.json();
}

// The live feed: named events carrying JSON. EventSource reconnects by itself (the
// server sends `retry`); onState tells the page whether it is live.
export function openFeed(path, handlers, onState) {
  let source = null;
  const connect = () => {
    source = new EventSource(path);
    source.addEventListener("open", () => onState("live"));
    source.addEventListener("error", () => {
      onState("reconnecting");
      // An EventSource cannot see a status code: ask once, so a 401 reaches the hook.
      api("router/status").catch(() => {});
    });
    for (const [name, handle] of Object.entries(handlers)) {
      source.addEventListener(name, (event) => handle(JSON.parse(event.data)));
    }
  };
  connect();
  return {
    reconnect() {
      source.close();
      connect();
    },
    close() {
      source.close();
    },
  };
}
