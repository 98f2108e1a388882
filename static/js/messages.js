/* What the socket's text messages mean for the page: hello (state on connect), progress, events, the
 * announcement of a preview frame, ComfyUI's connection state, pushed fragments (gauges, cards, current). */
import { S, multi, TERMINAL } from "./state.js";
import { applyFragment, refreshJobs, refreshJobsAndSettle, refreshSoon } from "./fragments.js";
import { setLive } from "./live.js";
import { resetBackoff } from "./socket.js";
import { clearPreview } from "./preview.js";
import { refreshOverlay } from "./overlay.js";
import { dropCard, jobIdOf, notify } from "./cards.js";
import { onProgress, onHelloJobs, jobEnded } from "./panels.js";

export function handleMessage(msg) {
  // Other modules (eta.js) follow the stream through DOM events.
  if (msg.type === "progress" || msg.type === "event") {
    document.dispatchEvent(new CustomEvent("monitor:" + msg.type, { detail: msg }));
  }
  switch (msg.type) {
    case "hello": return onHello(msg);
    case "progress": return onProgress(msg);
    case "event": return onEvent(msg);
    case "preview": S.pendingPreview = msg; return;
    case "fragment": return applyFragment(msg);
    case "comfy":
      if (multi) setHosts(msg);
      setComfy(msg.connected !== false);
      return;
  }
}

/* Several hosts: the comfy state lists each host ({name, connected, ...}). */
function setHosts(comfy) {
  if (!comfy || !Array.isArray(comfy.hosts)) return;
  const down = comfy.hosts.filter((h) => h && h.connected === false).map((h) => String(h.name));
  const changed = down.join("\n") !== S.hostsDown.join("\n");
  S.hostsDown = down;
  setLive();
  if (changed) { refreshSoon("gauges"); refreshJobs(); }
}

function setComfy(connected) {
  const changed = connected !== S.comfyConnected;
  S.comfyConnected = connected;
  setLive();
  if (changed) { refreshJobs(); refreshSoon("gauges"); }
}

function onHello(msg) {
  resetBackoff();
  if (multi && msg.comfy && typeof msg.comfy === "object") setHosts(msg.comfy);
  if (msg.comfy && typeof msg.comfy === "object") setComfy(msg.comfy.connected !== false);
  if (typeof msg.last_seq === "number" && (S.lastSeq == null || msg.last_seq > S.lastSeq)) S.lastSeq = msg.last_seq;
  onHelloJobs(Array.isArray(msg.jobs) ? msg.jobs : []);
}

function onEvent(ev) {
  if (typeof ev.seq === "number" && (S.lastSeq == null || ev.seq > S.lastSeq)) S.lastSeq = ev.seq;
  const kind = String(ev.kind || "");
  if (multi && kind.indexOf("comfy.") === 0) return refreshSoon("gauges");  // the "comfy" message says the rest
  if (kind === "comfy.connected") return setComfy(true);
  if (kind === "comfy.disconnected") return setComfy(false);
  if (kind.indexOf("job.") !== 0) return;
  const id = jobIdOf(ev);
  const status = kind.slice(4);
  if (TERMINAL[status]) {
    if (id) dropCard(id);
    if (status !== "stalled") notify(ev, status);
    jobEnded(id);
  }
  if (!multi && status === "started" && id && S.previewFor && S.previewFor !== id) clearPreview();
  refreshJobsAndSettle();
  if (id && S.overlayId === id) refreshOverlay();
}
