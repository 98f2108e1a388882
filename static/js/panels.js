/* The Current Job panel(s), straight from the socket's ProgressState messages (no request): one host's panel,
 * or one per running job of several hosts with the Preview following the one the viewer touched; the
 * page title's percentage. */
import { $, S, multi, TITLE, TERMINAL, eachPanel, panelFor, progressOf } from "./state.js";
import { fmtDuration, tickElapsed } from "./format.js";
import { refreshJobs, refreshSoon } from "./fragments.js";
import { clearPreview, renderStrip, sendPreviewState } from "./preview.js";
import { refreshOverlay, refreshOverlayThrottled } from "./overlay.js";

export function onProgress(p) {
  if (multi) return progressMulti(p);
  const id = p.prompt_id || null;
  if (!id || p.status === "idle") {
    S.latest = null;
    setTitle(null);
    if (S.currentId) { S.currentId = null; refreshJobs(); }
    return;
  }
  if (p.status === "running") {
    if (id !== S.currentId) {
      // A new job started: the panel's structure changes (fetch it); the old preview goes.
      S.currentId = id;
      if (S.previewFor && S.previewFor !== id) clearPreview();
      S.latest = p;
      refreshJobs();
    } else {
      S.latest = p;
      updateCurrent(p);
    }
    setTitle(p);
    renderStrip(p.outputs);
    overlayProgress(p);
    if (!document.getElementById("job-" + id)) refreshSoon("cards", 300);
    return;
  }
  if (TERMINAL[p.status]) {
    if (id === S.currentId) {
      if (p.status === "completed") {
        updateCurrent(Object.assign({}, S.latest || {}, p, { percent: 100, indeterminate: false, eta_s: null }));
      }
      S.latest = null;
      setTitle(null);
      refreshJobs();
    }
    if (S.overlayId === id) refreshOverlay();
    return;
  }
  // queued (or any other) state of another job: make sure its card is there
  if (!document.getElementById("job-" + id)) refreshSoon("cards", 300);
}

/* The hello's job list: the running job(s) as the server sees them now. */
export function onHelloJobs(jobs) {
  if (multi) return helloMulti(jobs);
  const running = jobs.find((j) => j && j.status === "running") || null;
  if (running) onProgress(running);
  else if (S.currentId) onProgress({ prompt_id: null, status: "idle" });
  else setTitle(null);
}

// ---------------------------------------------------------------------------------------------- several hosts
function helloMulti(jobs) {
  const fresh = {};
  jobs.forEach((j) => { if (j && j.prompt_id && j.status === "running") fresh[j.prompt_id] = j; });
  S.runs = fresh;
  let stale = false;
  eachPanel((el) => { if (!S.runs[el.dataset.jobId]) stale = true; });
  Object.keys(S.runs).forEach((id) => { if (!panelFor(id)) stale = true; });
  if (stale) refreshJobs();
  eachPanel((el) => { const st = S.runs[el.dataset.jobId]; if (st) updatePanel(el, st); });
  follow();
}

function progressMulti(p) {
  const id = p.prompt_id || null;
  if (!id || p.status === "idle") {
    const had = Object.keys(S.runs).length > 0 || !!document.querySelector("#current .current[data-job-id]");
    S.runs = {};
    follow();
    if (had) refreshJobs();
    return;
  }
  const panel = panelFor(id);
  if (p.status === "running") {
    const isNew = !S.runs[id];
    S.runs[id] = p;
    if (panel) updatePanel(panel, p); else refreshJobs();   // a job started: its panel comes from the server
    if (isNew) follow();
    if (id === S.shown) { setTitle(p); renderStrip(p.outputs); }
    overlayProgress(p);
    if (!document.getElementById("job-" + id)) refreshSoon("cards", 300);
    return;
  }
  if (TERMINAL[p.status]) {
    if (S.runs[id] || panel) {
      if (panel && p.status === "completed") {
        updatePanel(panel, Object.assign({}, S.runs[id] || {}, p, { percent: 100, indeterminate: false, eta_s: null }));
      }
      delete S.runs[id];
      follow();
      refreshJobs();
    }
    if (S.overlayId === id) refreshOverlay();
    return;
  }
  if (!document.getElementById("job-" + id)) refreshSoon("cards", 300);
}

/* The Preview follows the panel the viewer last touched while that job runs, else the job that started
 * last. Marks that panel, names it above the Preview, and swaps the preview and strip when it changes. */
export function follow() {
  let want = S.picked && S.runs[S.picked] ? S.picked : null;
  if (!want) {
    let best = null;
    Object.keys(S.runs).forEach((id) => {
      const t = Date.parse(S.runs[id].started_at || "") || 0;
      if (best === null || t >= best.t) best = { id, t };
    });
    want = best ? best.id : null;
  }
  const changed = want !== S.shown;
  S.shown = want;
  if (changed) sendPreviewState();   // the server sends this job's previews only
  let label = "";
  eachPanel((el) => {
    const on = el.dataset.jobId === want;
    el.classList.toggle("is-shown", on);
    if (on) {
      el.setAttribute("aria-current", "true");
      const wf = el.querySelector(".wf-name");
      label = (el.dataset.host || "") + " · " + (wf ? wf.textContent : "");
    } else {
      el.removeAttribute("aria-current");
    }
  });
  const pf = $("preview-for");
  if (pf && pf.textContent !== label) pf.textContent = label;
  if (!changed) return;
  if (S.previewFor !== want) clearPreview();
  const st = want ? S.runs[want] : null;
  renderStrip(st && Array.isArray(st.outputs) ? st.outputs : []);
  setTitle(st);
}

function pick(e) {
  if (!multi || !(e.target instanceof Element)) return;
  const panel = e.target.closest("#current .current[data-job-id]");
  if (!panel || S.picked === panel.dataset.jobId) return;
  S.picked = panel.dataset.jobId;
  follow();
}

export function initPanels() {
  document.addEventListener("click", pick, true);
  document.addEventListener("focusin", pick);
}

/* A job ended (its event): it no longer runs here. */
export function jobEnded(id) {
  if (multi && id && S.runs[id]) { delete S.runs[id]; follow(); }
  if (id && id === S.currentId) { S.currentId = null; S.latest = null; setTitle(null); }
}

export function setTitle(p) {
  let t = TITLE;
  if (p && !S.stale && p.status === "running" && p.percent != null && !p.indeterminate && isFinite(p.percent)) {
    t = "(" + Math.round(Math.max(0, Math.min(100, p.percent))) + "%) " + TITLE;
  }
  if (document.title !== t) document.title = t;
}

/* The title for the job followed now (after staleness ends, say). */
export function retitle() { setTitle(multi ? (S.shown ? S.runs[S.shown] : null) : S.latest); }

/* The overlay's bar and percent take the same progress message as the panel behind it (its other fields
 * follow with the throttled refresh). */
function overlayProgress(p) {
  if (S.overlayId !== p.prompt_id) return;
  updateOverlay(p);
  refreshOverlayThrottled();
}
function updateOverlay(p) {
  const body = $("overlay-body");
  if (body && body.querySelector('[data-f="bar"]')) updatePanel(body, p);
}

/* A freshly loaded overlay body is rendered from the server's state, which can be a message ahead of (or
 * behind) the panel behind it: give it the panel's progress, so both read the same until the next message. */
function syncOverlay() {
  const p = progressOf(S.overlayId);
  if (p) updateOverlay(p);
}

/* After a fragment swap: a panel that shows a new job starts with an empty bar, without sliding back from
 * the last job's width (no transition for that one change). */
function resetBars() {
  for (const panel of document.querySelectorAll("#current .current[data-job-id], #current[data-job-id]")) {
    const id = panel.dataset.jobId || "";
    if (panel.dataset.barFor === id) continue;
    panel.dataset.barFor = id;
    const fill = panel.querySelector('[data-f="bar"] .bar-fill');
    if (!fill) continue;
    fill.style.transition = "none";
    fill.style.width = "";
    void fill.offsetWidth;   // apply the width without animating, then let later updates animate
    requestAnimationFrame(() => { fill.style.transition = ""; });
  }
}

/* A job's outcome stays in its panel for the seconds the server says, then the panel is asked again and the
 * Preview is cleared (unless another job took it over meanwhile). */
let outcomeTimer = null;
function scheduleOutcome() {
  const el = document.querySelector("#current [data-outcome-left-s]");
  clearTimeout(outcomeTimer);
  outcomeTimer = null;
  if (!el) {
    // Nothing runs and no outcome is left to show: the last job's preview goes too.
    if (document.getElementById("current-idle") && S.previewFor) clearPreview();
    return;
  }
  const ms = Math.max(500, Number(el.dataset.outcomeLeftS) * 1000 || 0);
  outcomeTimer = setTimeout(() => {
    outcomeTimer = null;
    refreshSoon("current", 0);
    if (!multi ? !S.currentId : Object.keys(S.runs).length === 0) clearPreview();
  }, ms);
}

function field(panel, name) { return panel.querySelector('[data-f="' + name + '"]'); }
function setText(el, text) {
  if (!el) return;
  if (el.textContent !== text) el.textContent = text;
  el.hidden = !text;
}

/* Live fields of the single Current Job panel. */
function updateCurrent(p) {
  const panel = $("current");
  if (!panel || panel.dataset.jobId !== p.prompt_id) return;
  updatePanel(panel, p);
}

/* After a fragment swap: put the socket's fresher live fields back, and follow the (new) panels. */
export function afterSwap() {
  resetBars();
  scheduleOutcome();
  syncOverlay();
  if (multi) {
    eachPanel((el) => { const st = S.runs[el.dataset.jobId]; if (st) updatePanel(el, st); });
    follow();
    return;
  }
  const panel = $("current");
  if (panel) {
    S.currentId = panel.dataset.jobId || null;
    if (S.latest && S.latest.prompt_id === S.currentId) updateCurrent(S.latest);
  }
}

/* One job's panel (the single Current Job panel, or one of several hosts' run panels). */
function updatePanel(panel, p) {
  const node = field(panel, "node");
  if (node) {
    const name = p.node_title || p.node_type ||
      (panel.dataset.source === "external" ? "No live detail" : "Starting…");
    if (node.textContent !== name) node.textContent = name;
  }
  if (p.node_id || p.step) setText(field(panel, "external-hint"), "");
  setText(field(panel, "nodes"), p.nodes_total != null ? (p.nodes_done || 0) + "/" + p.nodes_total + " nodes" : "");
  const indet = !!p.indeterminate || p.percent == null;
  const pct = indet ? 0 : Math.max(0, Math.min(100, Number(p.percent) || 0));
  const bar = field(panel, "bar");
  if (bar) {
    bar.classList.toggle("indeterminate", indet);
    const fill = bar.querySelector(".bar-fill");
    if (fill) fill.style.width = (indet ? 100 : pct) + "%";
    if (indet) {
      bar.removeAttribute("aria-valuenow");
      bar.setAttribute("aria-valuetext", "Working, progress not known yet");
    } else {
      bar.setAttribute("aria-valuenow", String(Math.round(pct)));
      bar.setAttribute("aria-valuetext", Math.round(pct) + "%");
    }
  }
  const pctEl = field(panel, "percent");
  if (pctEl) pctEl.textContent = indet ? "…" : Math.round(pct) + "%";
  setText(field(panel, "step"), p.step && p.step.max != null ? "Step " + p.step.value + "/" + p.step.max : "");
  const eta = p.eta_s != null && isFinite(p.eta_s) ? "~" + fmtDuration(p.eta_s) : "";
  setText(field(panel, "eta"), eta);
  const etaWrap = field(panel, "eta-wrap");
  if (etaWrap) etaWrap.hidden = !eta;
  setText(field(panel, "rate"), p.it_per_s != null && isFinite(p.it_per_s) ? Number(p.it_per_s).toFixed(1) + " it/s" : "");
  const el = field(panel, "elapsed");
  if (el && p.started_at && el.dataset.since !== p.started_at) {
    el.dataset.since = p.started_at;
    tickElapsed();
  }
}
