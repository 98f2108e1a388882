/* Server-rendered fragments (htmx + idiomorph): refresh triggers, fragments pushed over the socket, the
 * morph rules that keep what the client owns, and htmx's swap/error hooks. */
import { $, S, progressOf } from "./state.js";

const refreshTimers = {};
export function refresh(id) {
  const el = $(id);
  if (el && window.htmx) htmx.trigger(el, "refresh");
}
export function refreshSoon(id, ms) {
  if (refreshTimers[id]) return;
  refreshTimers[id] = setTimeout(() => { refreshTimers[id] = null; refresh(id); }, ms == null ? 80 : ms);
}
export function refreshJobs() {
  refreshSoon("cards");
  refreshSoon("current");
}
/* After a job event, refresh now and once more a little later: queue positions come from the server's
 * next reconcile of ComfyUI's queue, which trails the event by up to a few seconds. */
let settleTimer = null;
export function refreshJobsAndSettle() {
  refreshJobs();
  clearTimeout(settleTimer);
  settleTimer = setTimeout(() => { settleTimer = null; refresh("cards"); }, 2500);
}

/* Fragments are swapped with idiomorph. Two things the page owns on the client survive a swap:
 * localised <time> texts and ticking elapsed counters (when the server value did not change). */
export function initMorphRules() {
  if (!(window.Idiomorph && Idiomorph.defaults && Idiomorph.defaults.callbacks)) return;
  Idiomorph.defaults.callbacks.beforeNodeMorphed = (oldNode, newNode) => {
    if (oldNode.nodeType !== 1 || !newNode || newNode.nodeType !== 1) return;
    // While the socket streams a job's progress, its live fields are fresher than any fragment.
    if (S.wsOpen && oldNode.hasAttribute("data-f")) {
      const panel = oldNode.closest(".current[data-job-id], #overlay-job[data-job-id]");
      if (panel && progressOf(panel.dataset.jobId)) return false;
    }
    if (oldNode.tagName === "TIME" && oldNode.hasAttribute("data-local") &&
        oldNode.getAttribute("datetime") === newNode.getAttribute("datetime")) return false;
    if (oldNode.hasAttribute("data-since") &&
        oldNode.getAttribute("data-since") === newNode.getAttribute("data-since")) return false;
  };
}

/* A fragment pushed over the socket (server: web/push.py): the same HTML a refresh would fetch, morphed in
 * the same way. Only the page's own fragment ids; the element keeps its hx-* attributes (its URLs). */
const PUSHED = { gauges: 1, cards: 1, current: 1 };
let swapped = () => {};
export function applyFragment(msg) {
  const el = PUSHED[msg.id] === 1 && typeof msg.html === "string" ? $(msg.id) : null;
  if (!el || !window.Idiomorph) return;
  const tpl = document.createElement("template");
  tpl.innerHTML = msg.html;
  const next = tpl.content.getElementById(msg.id);
  if (!next) return;
  for (const a of Array.from(el.attributes)) {
    if (a.name.indexOf("hx-") === 0) next.setAttribute(a.name, a.value);
  }
  Idiomorph.morph(el, next, { morphStyle: "outerHTML" });
  swapped({ detail: { target: el, pushed: true } });
}

export function initHtmxHooks(afterSwap) {
  swapped = afterSwap;
  document.body.addEventListener("htmx:beforeSwap", (evt) => {
    // The overlay shows its "not found" fragment (404) instead of keeping stale content.
    const t = evt.detail.target;
    if (evt.detail.xhr && evt.detail.xhr.status === 404 && t && t.closest && t.closest("#overlay")) {
      evt.detail.shouldSwap = true;
      evt.detail.isError = false;
    }
  });
  document.body.addEventListener("htmx:responseError", (evt) => {
    // Signed out or the session expired: reloading shows the sign-in page (token mode) or the browser's
    // password prompt (password mode).
    if (evt.detail.xhr && evt.detail.xhr.status === 401) location.reload();
  });
  document.body.addEventListener("htmx:afterSwap", afterSwap);
}
