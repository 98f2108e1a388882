/* Formatting helpers: durations, the viewer's local times, ticking elapsed counters, the toast. */
import { $ } from "./state.js";

export function fmtDuration(s) {
  if (s == null || !isFinite(s) || s < 0) return "";
  s = Math.round(s);
  if (s < 60) return s + "s";
  let m = Math.floor(s / 60);
  s = s % 60;
  if (m < 60) return m + "m " + (s < 10 ? "0" : "") + s + "s";
  const h = Math.floor(m / 60);
  m = m % 60;
  return h + "h " + (m < 10 ? "0" : "") + m + "m";
}

function fmtLocal(iso) {
  const d = new Date(iso);
  if (isNaN(d.getTime())) return null;
  const now = new Date();
  if (d.toDateString() === now.toDateString()) {
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }
  return d.toLocaleString([], { year: d.getFullYear() === now.getFullYear() ? undefined : "numeric",
    month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

/* <time data-local datetime="UTC ISO"> → the viewer's local time (the server renders UTC as a fallback). */
export function localizeTimes(root) {
  for (const el of (root || document).querySelectorAll("time[data-local]")) {
    const iso = el.getAttribute("datetime");
    if (el.dataset.localized === iso) continue;
    const text = fmtLocal(iso);
    if (text) {
      el.textContent = text;
      el.title = new Date(iso).toLocaleString([], { dateStyle: "full", timeStyle: "long" });
    }
    el.dataset.localized = iso;
  }
}

export function tickElapsed() {
  const now = Date.now();
  for (const el of document.querySelectorAll("[data-since]")) {
    const t = Date.parse(el.dataset.since);
    if (isNaN(t)) continue;
    const text = fmtDuration(Math.max(0, (now - t) / 1000));
    if (el.textContent !== text) el.textContent = text;
  }
}

let toastTimer = null;
export function toast(text) {
  const el = $("toast");
  if (!el) return;
  el.textContent = text;
  el.classList.add("show");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => el.classList.remove("show"), 2200);
}
