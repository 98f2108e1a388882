/* Fallback polling of the server-rendered fragments, and the countdown bar in the LIVE indicator that shows
 * it. Only while the socket is down: while it is open the server pushes the gauges, cards and current job
 * over it (web/push.py) and nothing polls. Everything pauses while the tab is hidden. */
import { $, S, cfg } from "./state.js";
import { refresh } from "./fragments.js";
import { refreshOverlay } from "./overlay.js";
import { downPollS } from "./live.js";

let pollTimer = null;
let gaugesTimer = null;

function pollPeriodMs() { return downPollS() * 1000; }

function startCountdown(ms) {
  const fill = $("live-bar-fill");
  if (!fill) return;
  fill.style.transition = "none";
  fill.style.transform = "scaleX(1)";
  void fill.offsetWidth;  // restart the transition from full
  fill.style.transition = "transform " + ms + "ms linear";
  fill.style.transform = "scaleX(0)";
}
function fullBar() {   // nothing counts down while updates are pushed
  const fill = $("live-bar-fill");
  if (!fill) return;
  fill.style.transition = "none";
  fill.style.transform = "scaleX(1)";
}
function stopCountdown() {
  const fill = $("live-bar-fill");
  if (!fill) return;
  const cur = getComputedStyle(fill).transform;
  fill.style.transition = "none";
  fill.style.transform = cur === "none" ? "scaleX(1)" : cur;
}

export function restartPoll() {
  clearTimeout(pollTimer);
  pollTimer = null;
  if (document.hidden) { stopCountdown(); return; }
  if (S.wsOpen) { fullBar(); return; }
  const ms = pollPeriodMs();
  startCountdown(ms);
  pollTimer = setTimeout(() => {
    refresh("cards");
    refresh("current");
    restartPoll();
  }, ms);
}

export function startGauges() {
  clearInterval(gaugesTimer);
  gaugesTimer = null;
  if (document.hidden || S.wsOpen) return;
  gaugesTimer = setInterval(() => refresh("gauges"), cfg.gaugesPollS * 1000);
}

export function stopPolling() {
  clearTimeout(pollTimer);
  pollTimer = null;
  clearInterval(gaugesTimer);
  gaugesTimer = null;
  stopCountdown();
}

export function refreshNow() {
  refresh("cards");
  refresh("current");
  refresh("gauges");
  refreshOverlay();
  restartPoll();
}
