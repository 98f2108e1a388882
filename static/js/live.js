/* The LIVE indicator in the top bar: the socket's and ComfyUI's state in one word (and which hosts are down). */
import { $, S, multi } from "./state.js";

const LIVE_TEXT = { connecting: "CONNECTING", live: "LIVE", reconnecting: "RECONNECTING", offline: "OFFLINE",
  degraded: "LIVE" };

/* Several hosts: "degraded" (amber) while some are down, named in the text: "LIVE · gpu2 down". */
function downText() {
  if (S.hostsDown.length > 2) return S.hostsDown.length + " hosts down";
  return S.hostsDown.join(", ") + " down";
}

export function setLive() {
  let state = S.wsOpen ? (S.comfyConnected ? "live" : "offline") : (S.everOpened ? "reconnecting" : "connecting");
  if (state === "live" && multi && S.hostsDown.length) state = "degraded";
  const el = $("live");
  if (!el) return;
  const text = LIVE_TEXT[state] + (state === "degraded" ? " · " + downText() : "");
  if (el.dataset.state === state && $("live-text").textContent === text) return;
  el.dataset.state = state;
  el.className = "live is-" + state;
  $("live-text").textContent = text;
  const why = {
    connecting: "Connecting to the live feed…",
    live: "Live: updates stream in. Click to refresh now.",
    reconnecting: "Connection lost; reconnecting. Click to retry now.",
    offline: (multi ? "No ComfyUI host is reachable." : "ComfyUI is unreachable.") + " Click to refresh now.",
    degraded: "Live, but not every host: " + S.hostsDown.join(", ") + " not connected. Click to refresh now.",
  };
  el.title = why[state];
}
