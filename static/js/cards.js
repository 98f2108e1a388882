/* The queue's cards: a finished job's card lingers with its final badge, desktop notifications for finished
 * jobs, and the card actions (open the overlay, copy the id, cancel). */
import { $, cfg, main, multi } from "./state.js";
import { toast } from "./format.js";
import { refreshJobs, refreshSoon } from "./fragments.js";
import { openOverlay, overlayDialog, refreshOverlay } from "./overlay.js";

export function jobIdOf(ev) {
  const d = ev.data || {};
  return d.job_id || d.prompt_id || d.id || (d.job && d.job.id) || null;
}

/* A job ended: its card leaves the active list at once (it is in the Recent section now), and the count
 * drops with it, so the list never shows a finished or a second "running" card. */
export function dropCard(id) {
  const card = document.getElementById("job-" + id);
  if (!card || !card.isConnected) return;
  card.remove();
  const count = document.querySelector("#cards-h .count");
  const n = count ? Number(count.textContent) : NaN;
  if (isFinite(n) && n > 0) {
    count.textContent = String(n - 1);
    count.setAttribute("aria-label", (n - 1) + " jobs");
  }
  refreshSoon("cards");
}

// ---------------------------------------------------------------------------------------------- notifications
const OUTCOME_WORDS = { completed: "completed", failed: "failed", interrupted: "was interrupted", cancelled: "was cancelled" };

/* A finished job's desktop notification: its workflow name and outcome, its output image as icon; a click
 * focuses the tab and opens the job. None while the page is visible (the panel shows the outcome). */
export function notify(ev, status) {
  if (!("Notification" in window) || Notification.permission !== "granted") return;
  if (document.visibilityState === "visible") return;
  const id = jobIdOf(ev);
  if (!id) return;
  fetch(cfg.jobUrl.replace("__ID__", encodeURIComponent(id)), { credentials: "same-origin", headers: { Accept: "application/json" } })
    .then((r) => (r.ok ? r.json() : {}))
    .catch(() => ({}))
    .then((job) => {
      const name = (job && job.workflow_name) || "Untitled workflow";
      const opts = { body: name + " " + (OUTCOME_WORDS[status] || status), tag: "job-" + id };
      const reason = job && job.error && job.error.message;
      if (status === "failed" && reason) opts.body += ": " + String(reason).split("\n")[0].slice(0, 160);
      const icon = outputImage(job, status);
      if (icon) opts.icon = icon;
      try {
        const n = new Notification(name + " — " + (OUTCOME_WORDS[status] || status), opts);
        n.onclick = () => { window.focus(); n.close(); openOverlay(id); };
      } catch (e) { /* some platforms only allow notifications from a service worker */ }
    });
}

function outputImage(job, status) {
  if (status !== "completed" || !job || !Array.isArray(job.outputs)) return null;
  for (let i = job.outputs.length - 1; i >= 0; i--) {
    const imgs = (job.outputs[i] && job.outputs[i].images) || [];
    for (let j = imgs.length - 1; j >= 0; j--) {
      const img = imgs[j];
      if (img && img.filename && img.kind !== "videos") {
        const q = new URLSearchParams({ filename: img.filename, subfolder: img.subfolder || "", type: img.type || "output", preview: "webp;75" });
        if (job.host && multi) q.set("host", job.host);
        return "/api/view?" + q.toString();
      }
    }
  }
  return null;
}

function notifyLabel(btn) {
  const p = Notification.permission;
  btn.hidden = p === "granted";
  btn.disabled = p === "denied";
  btn.textContent = p === "denied" ? "Notifications blocked in browser settings" : "Enable notifications";
  btn.title = p === "denied" ? "This site may not show notifications: allow them in the browser's site settings" : "";
}
function initNotifyButton() {
  const btn = $("notify-btn");
  if (!btn || !("Notification" in window)) return;
  notifyLabel(btn);
  btn.addEventListener("click", () => {
    Notification.requestPermission().then((p) => {
      notifyLabel(btn);
      if (p === "granted") toast("Notifications on for finished jobs (while this tab is in the background)");
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
  confirmStop(label, id, btn).then((stop) => { if (stop) sendCancel(btn, id); });
}

/* The in-page confirmation: a modal <dialog> (focus stays inside it; Escape or "Keep running" keeps the job). */
function confirmStop(label, id, opener) {
  const dlg = $("confirm-stop");
  if (!dlg || !dlg.showModal) return Promise.resolve(false);
  $("confirm-stop-title").textContent = "Stop " + label + "?";
  $("confirm-stop-id").textContent = id;
  return new Promise((resolve) => {
    const done = (stop) => {
      dlg.removeEventListener("close", onClose);
      dlg.removeEventListener("click", onClick);
      resolve(stop);
    };
    const onClose = () => {
      done(dlg.returnValue === "stop");
      if (opener && opener.isConnected) opener.focus();
    };
    const onClick = (e) => {
      const b = e.target.closest && e.target.closest("button[value]");
      if (b) { e.preventDefault(); dlg.close(b.value); }
    };
    dlg.returnValue = "";
    if (!dlg.dataset.trap) {   // Tab cycles between the two buttons instead of leaving for the browser's UI
      dlg.dataset.trap = "1";
      dlg.addEventListener("keydown", (e) => {
        if (e.key !== "Tab") return;
        const buttons = [...dlg.querySelectorAll("button")];
        const at = buttons.indexOf(document.activeElement);
        e.preventDefault();
        buttons[(at + (e.shiftKey ? buttons.length - 1 : 1)) % buttons.length].focus();
      });
    }
    dlg.addEventListener("close", onClose);
    dlg.addEventListener("click", onClick);
    dlg.showModal();
    const keep = dlg.querySelector('button[value="keep"]');
    if (keep) keep.focus();
  });
}

function sendCancel(btn, id) {
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
