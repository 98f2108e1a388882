/* Learned ETAs on the queue page: the Current Job's whole-job time left and the queued cards' "starts in" /
   "done in", ticking down between updates and corrected by each progress message (their "estimate"); the
   Recent section refreshed (morph) when a job finishes; "Run again" in the overlay. Follows the socket's
   stream through the monitor:progress / monitor:event DOM events (messages.js). */
import { TERMINAL } from "./state.js";
import { toast } from "./format.js";
import { openOverlay } from "./overlay.js";

var deadlines = new WeakMap();   // element → {seen: the server's value as rendered, until: ms epoch}

function fmt(s) {
  if (s == null || !isFinite(s)) return "";
  s = Math.max(0, Math.round(s));
  if (s < 60) return s + "s";
  var m = Math.floor(s / 60);
  if (m < 60) return m + "m " + (s % 60 < 10 ? "0" : "") + (s % 60) + "s";
  return Math.floor(m / 60) + "h " + (m % 60 < 10 ? "0" : "") + (m % 60) + "m";
}
function rough(s) {   // "~2m" for queued cards: minutes once past one
  if (s == null || !isFinite(s)) return "";
  s = Math.max(0, s);
  return s < 60 ? Math.round(s) + "s" : s < 3600 ? Math.round(s / 60) + "m" : fmt(s);
}

/* Seconds left for an element's data attribute, counted down from when that value arrived. */
function left(el, attr) {
  var raw = el.getAttribute(attr);
  var d = deadlines.get(el) || {};
  var key = attr + "=" + raw;
  if (d[attr] !== key) {
    d[attr] = key;
    d[attr + "@"] = raw === "" || raw == null ? null : Date.now() + Number(raw) * 1000;
    deadlines.set(el, d);
  }
  var until = d[attr + "@"];
  return until == null ? null : Math.max(0, (until - Date.now()) / 1000);
}

// Every running job's panel: the single host's #current, or a fleet's #run-<id> panels.
function renderCurrent() {
  var els = document.querySelectorAll('#current [data-f="job-eta"]');
  for (var i = 0; i < els.length; i++) {
    var el = els[i];
    var s = left(el, "data-eta-s");
    var text = s == null ? "—" : s < 1 ? "almost done" : "about " + fmt(s) + " left";
    if (el.textContent !== text) el.textContent = text;
  }
}

function renderCards() {
  var lines = document.querySelectorAll("#card-list .eta-line");
  for (var i = 0; i < lines.length; i++) {
    var line = lines[i];
    var starts = left(line, "data-starts-in-s");
    var done = left(line, "data-done-in-s");
    line.hidden = starts == null;
    if (starts == null) continue;
    var a = line.querySelector(".starts-in");
    var t = starts < 1 ? "starts any moment" : "starts in ~" + rough(starts);
    if (a && a.textContent !== t) a.textContent = t;
    var b = line.querySelector(".done-in");
    if (b && done != null) {
      t = "done in ~" + rough(done);
      if (b.textContent !== t) b.textContent = t;
    }
  }
}

function tick() { renderCurrent(); renderCards(); }

function setAttr(el, name, value) {
  var v = value == null ? "" : String(value);
  if (el.getAttribute(name) !== v) el.setAttribute(name, v);
}

function requeue(btn) {
  var id = btn.dataset.requeue;
  btn.disabled = true;
  fetch("/api/admin/jobs/" + encodeURIComponent(id) + "/requeue", {
    method: "POST",
    credentials: "same-origin",
    headers: { "X-Requested-With": "fetch", "Accept": "application/json", "Content-Type": "application/json" },
    body: JSON.stringify(btn.dataset.newSeed ? { new_seed: true } : {}),
  }).then(function (r) {
    return r.json().catch(function () { return {}; }).then(function (body) {
      if (!r.ok) throw new Error((body && body.error) || ("HTTP " + r.status));
      return body;
    });
  }).then(function (job) {
    toast("Queued again: " + String(job.id || "").slice(0, 8));
    var dialog = document.getElementById("overlay");
    if (dialog && dialog.open) dialog.close();
    var cards = document.getElementById("cards");
    if (cards && window.htmx) htmx.trigger(cards, "refresh");
  }).catch(function (err) {
    toast("Run again failed: " + (err && err.message ? err.message : "network error"));
  }).then(function () { btn.disabled = false; });
}

export function initEta() {
  document.addEventListener("monitor:progress", function (e) {
    var p = e.detail || {};
    var est = p.estimate;
    if (!p.prompt_id || !est) return;
    if (p.status === "running") {
      var cur = document.getElementById("run-" + p.prompt_id) || document.getElementById("current");
      var el = cur && cur.dataset.jobId === p.prompt_id ? cur.querySelector('[data-f="job-eta"]') : null;
      if (el) {
        setAttr(el, "data-eta-s", est.eta_s);
        el.title = "Whole job: " + (est.eta_basis || "no estimate");
      }
    } else if (p.status === "queued") {
      var card = document.getElementById("job-" + p.prompt_id);
      var line = card && card.querySelector(".eta-line");
      if (line) {
        setAttr(line, "data-starts-in-s", est.starts_in_s);
        setAttr(line, "data-done-in-s", est.done_in_s);
        line.title = est.eta_basis || "";
      }
    }
    tick();
  });

  var recentTimer = null;
  document.addEventListener("monitor:event", function (e) {
    var kind = String((e.detail || {}).kind || "");
    if (kind.indexOf("job.") !== 0 || !TERMINAL[kind.slice(4)]) return;
    if (recentTimer) return;
    recentTimer = setTimeout(function () {
      recentTimer = null;
      var el = document.getElementById("recent");
      if (el && window.htmx) htmx.trigger(el, "refresh");
    }, 250);
  });

  document.addEventListener("click", function (e) {
    var t = e.target;
    if (!(t instanceof Element)) return;
    var btn = t.closest("[data-requeue]");
    if (btn) { e.preventDefault(); requeue(btn); return; }
    var row = t.closest(".recent-item");
    if (row && !t.closest("a, button")) openOverlay(row.dataset.jobId);
  });
  document.addEventListener("keydown", function (e) {
    var t = e.target;
    if (!(t instanceof Element) || !t.classList.contains("recent-item")) return;
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      openOverlay(t.dataset.jobId);
    }
  });
  document.addEventListener("htmx:afterSwap", tick);
  setInterval(tick, 1000);
  tick();
}
