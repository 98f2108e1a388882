/* The page's one WebSocket (/api/run/ws): connect, capped exponential back-off with jitter, send. What the
 * messages mean is the caller's (main.js wires the hooks). */
import { cfg, S } from "./state.js";

const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 15000;

let ws = null;
let attempt = 0;
let reconnectTimer = null;
let hooks = { open() {}, text() {}, binary() {}, close() {} };

function wsUrl() {
  return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + cfg.wsPath;
}

export function initSocket(h) {
  hooks = Object.assign(hooks, h);
  connect();
}

function connect() {
  clearTimeout(reconnectTimer);
  reconnectTimer = null;
  if (ws && (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING)) return;
  let sock;
  try {
    sock = new WebSocket(wsUrl());
  } catch (e) {
    scheduleReconnect();
    return;
  }
  ws = sock;
  sock.binaryType = "arraybuffer";
  sock.onopen = () => {
    if (ws !== sock) return;
    S.wsOpen = true;
    const reconnect = S.everOpened;
    S.everOpened = true;
    hooks.open(reconnect);
  };
  sock.onmessage = (ev) => {
    if (ws !== sock) return;
    if (typeof ev.data === "string") {
      let msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      if (msg && typeof msg === "object") hooks.text(msg);
    } else {
      hooks.binary(ev.data);
    }
  };
  sock.onclose = () => {
    if (ws !== sock) return;
    ws = null;
    S.wsOpen = false;
    hooks.close();
    scheduleReconnect();
  };
  sock.onerror = () => { /* onclose follows */ };
}

function scheduleReconnect() {
  if (reconnectTimer) return;
  // Capped exponential backoff with jitter (50-100% of the step), so many tabs don't reconnect in lockstep.
  const step = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * Math.pow(2, attempt));
  const delay = step * (0.5 + Math.random() * 0.5);
  attempt = Math.min(attempt + 1, 16);
  reconnectTimer = setTimeout(() => { reconnectTimer = null; connect(); }, delay);
}

/* A full handshake: the next drop starts the back-off from the bottom again. */
export function resetBackoff() { attempt = 0; }

export function reconnectNow() {
  attempt = 0;
  if (!S.wsOpen) connect();
}

export function send(obj) {
  if (ws && ws.readyState === WebSocket.OPEN) {
    try { ws.send(JSON.stringify(obj)); } catch (e) { /* closing */ }
  }
}
