/* The job detail overlay: a modal <dialog> whose body htmx loads (and refreshes while its job runs). */
import { $, S, cfg } from "./state.js";
import { refresh } from "./fragments.js";
import { localizeTimes, tickElapsed } from "./format.js";

const dialog = $("overlay");
let lastFocus = null;
let throttle = null;

export function overlayDialog() { return dialog; }

export function openOverlay(id) {
  if (!dialog || !id || !window.htmx) return;
  lastFocus = document.activeElement;
  S.overlayId = id;
  const url = cfg.overlayUrl.replace("__ID__", encodeURIComponent(id));
  htmx.ajax("GET", url, { target: "#overlay-body", swap: "innerHTML" }).then(() => {
    if (S.overlayId !== id) return;
    localizeTimes(dialog);
    tickElapsed();
    if (!dialog.open) dialog.showModal();
    const close = dialog.querySelector("[data-close]");
    if (close) close.focus();
  });
}

export function refreshOverlay() {
  if (S.overlayId && dialog && dialog.open) refresh("overlay-job");
}
export function refreshOverlayThrottled() {
  if (throttle) return;
  throttle = setTimeout(() => { throttle = null; refreshOverlay(); }, 1000);
}

export function initOverlay() {
  if (!dialog) return;
  dialog.addEventListener("close", () => {
    S.overlayId = null;
    $("overlay-body").replaceChildren();
    const back = lastFocus && lastFocus.isConnected ? lastFocus : null;
    lastFocus = null;
    if (back && back.focus) back.focus();
  });
  dialog.addEventListener("click", (e) => {
    // a click on the backdrop lands on the <dialog> itself (its content fills the box)
    if (e.target === dialog) dialog.close();
    else if (e.target.closest("[data-close]")) dialog.close();
  });
}
