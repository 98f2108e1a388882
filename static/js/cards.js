/* The queue's cards: a finished job's card lingers with its final badge, desktop notifications for finished
 * jobs, and the card actions (open the overlay, copy the id, cancel). */
import { $, cfg, main } from "./state.js";
import { toast } from "./format.js";
import { refreshJobs, refreshSoon } from "./fragments.js";
import { openOverlay, overlayDialog, refreshOverlay } from "./overlay.js";

const BADGE_TEXT = { completed: "completed", failed: "failed", interrupted: "interrupted", cancelled: "cancelled", stalled: "stalled" };
const lingering = {};   // job id → timeout id

export function jobIdOf(ev) {
  const d = ev.data || {};
  return d.job_id || d.prompt_id || d.id || (d.job && d.job.id) || null;
}

export function lingerCard(id, status) {
  const card = document.getElementById("job-" + id);
  if (!card) return;
  card.classList.remove("is-running", "is-queued");
  card.classList.add("is-lingering", "is-" + status);
  card.dataset.status = status;
  const slot = card.querySelector(".status");
  if (slot) {
    const badge = document.createElement("span");
    badge.className = "badge badge-" + status;
    badge.textContent = BADGE_TEXT[status] || status;
    slot.replaceChildren(badge);
  }
  clearTimeout(lingering[id]);
  lingering[id] = setTimeout(() => {
    delete lingering[id];
    card.classList.add("is-leaving");
    setTimeout(() => {
      card.classList.remove("is-lingering");
      if (card.isConnected) card.remove();
      refreshSoon("cards");
    }, 400);
  }, cfg.lingerS * 1000);
}

// ---------------------------------------------------------------------------------------------- notifications
export function notify(ev, status) {
  if (!("Notification" in window) || Notification.permission !== "granted") return;
  try {
    const n = new Notification(status === "completed" ? "Job completed" : "Job failed", {
      body: String(ev.message || ""),
      tag: "job-" + (jobIdOf(ev) || ev.seq),
    });
    n.onclick = () => { window.focus(); n.close(); };
  } catch (e) { /* some platforms only allow notifications from a service worker */ }
}
function initNotifyButton() {
  const btn = $("notify-btn");
  if (!btn || !("Notification" in window)) return;
  btn.hidden = Notification.permission !== "default";
  btn.addEventListener("click", () => {
    Notification.requestPermission().then((p) => {
      btn.hidden = p !== "default";
      if (p === "granted") toast("Notifications on for finished jobs");
    });
  });
}

// ---------------------------------------------------------------------------------------------- actions
function copyText(text) {
  const dialog = overlayDialog();
  const fallback = () => {
    const ta = document.createElement("textarea");
    ta.value = text;
    ta.setAttribute("readonly", "");
    ta.style.position = "fixed";
    ta.style.opacity = "0";
    (dialog && dialog.open ? dialog : document.body).appendChild(ta);
    ta.select();
    let ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    ta.remove();
    return ok;
  };
  if (navigator.clipboard && window.isSecureContext) {
    return navigator.clipboard.writeText(text).then(() => true, () => fallback());
  }
  return Promise.resolve(fallback());
}

function cancelJob(btn) {
  const id = btn.dataset.cancel;
  if (!id) return;
  const label = btn.dataset.label || "this job";
  if (!window.confirm("Cancel " + label + "?\n\nJob id: " + id)) return;
  btn.disabled = true;
  fetch(cfg.cancelUrl.replace("__ID__", encodeURIComponent(id)), {
    method: "POST",
    credentials: "same-origin",
    headers: { "X-Requested-With": "fetch", "Accept": "application/json" },
  }).then((r) => {
    if (!r.ok) {
      return r.json().catch(() => ({})).then((body) => {
        throw new Error((body && (body.error || body.message)) || ("HTTP " + r.status));
      });
    }
    toast("Cancel requested");
    refreshJobs();
    refreshOverlay();
  }).catch((err) => {
    toast("Cancel failed: " + (err && err.message ? err.message : "network error"));
  }).then(() => { btn.disabled = false; });
}

export function initCards() {
  initNotifyButton();
  document.addEventListener("click", (e) => {
    const t = e.target;
    if (!(t instanceof Element)) return;
    const copy = t.closest("[data-copy]");
    if (copy) {
      e.preventDefault();
      copyText(copy.dataset.copy).then((ok) => toast(ok ? "Job id copied" : "Copy failed"));
      return;
    }
    const cancel = t.closest("[data-cancel]");
    if (cancel) { e.preventDefault(); cancelJob(cancel); return; }
    const card = t.closest(".card");
    if (card && !t.closest("a, button") && main.contains(card)) openOverlay(card.dataset.jobId);
  });
  document.addEventListener("keydown", (e) => {
    const t = e.target;
    if (!(t instanceof Element) || !t.classList.contains("card")) return;
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      openOverlay(t.dataset.jobId);
    }
  });
}
