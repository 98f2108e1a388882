/* Shared configuration and mutable state of the queue page's modules (one object, so every module sees
 * the same values). */
export const $ = (id) => document.getElementById(id);

export const main = $("main");
const ds = (main && main.dataset) || {};

export const cfg = {
  wsPath: ds.wsPath || "/api/run/ws",
  pollS: Number(ds.pollS) || 10,
  gaugesPollS: Number(ds.gaugesPollS) || 3,
  overlayUrl: ds.overlayUrl || "/admin/jobs/__ID__/overlay",
  cancelUrl: ds.cancelUrl || "/api/admin/jobs/__ID__/cancel",
  jobUrl: ds.jobUrl || "/api/admin/jobs/__ID__",
};
export const TITLE = "Job Queue";
export const TERMINAL = { completed: 1, failed: 1, interrupted: 1, cancelled: 1, stalled: 1 };

// Several hosts (data-multi-host): one panel per running job, keyed by prompt id (unique across hosts);
// progress messages of all hosts arrive interleaved on this one socket.
export const multi = ds.multiHost === "true";

export const S = {
  wsOpen: false,
  everOpened: false,
  comfyConnected: ds.comfyConnected !== "false",
  hostsDown: [],          // names of configured hosts that are not connected
  lastSeq: null,
  pendingPreview: null,   // the "preview" text frame announcing the next binary frame
  previewFor: null,       // prompt id of the shown preview
  currentId: ($("current") && $("current").dataset.jobId) || null,
  latest: null,           // latest ProgressState of the running job (one host)
  runs: {},               // prompt id → latest ProgressState of each running job (several hosts)
  picked: null,           // the panel the viewer last clicked or focused (its prompt id)
  shown: null,            // the job the Preview and strip follow now (several hosts)
  overlayId: null,
  lastUpdate: 0,          // ms epoch of the last socket message or successful request
  pollState: null,        // since the socket went down: null (no poll yet), "ok" or "failed"
  stale: false,           // the socket is down and a poll failed: what the page shows may be old
};

/* The latest progress message of a running job, as the socket delivered it (null when none). */
export function progressOf(id) {
  if (!id) return null;
  if (multi) return S.runs[id] || null;
  return S.latest && S.latest.prompt_id === id ? S.latest : null;
}

/* The Current Job panel(s): one host's #current, or one panel per running job of several hosts. */
export function eachPanel(fn) {
  for (const el of document.querySelectorAll("#current .current[data-job-id]")) fn(el);
}
export function panelFor(id) {
  let found = null;
  eachPanel((el) => { if (el.dataset.jobId === id) found = el; });
  return found;
}
