/* How fresh the page is. Every socket message and every successful request to the server counts as an
 * update. While the socket is down and a poll has failed, everything live is marked stale (dimmed, "last
 * update 12 s ago"), counters stop and the title drops its percentage; while the socket is down but polls
 * work, the page is POLLING. A successful poll after a failure (the server is back) reconnects at once. */
import { $, S, main } from "./state.js";
import { setLive } from "./live.js";
import { reconnectNow } from "./socket.js";

let onChange = () => {};
let noteTimer = null;

export function sawUpdate() { S.lastUpdate = Date.now(); }

/* The socket dropped: until a poll answers, the page does not know whether polls work. (A failed attempt
 * to reconnect changes nothing.) */
export function socketClosed(wasOpen) {
  if (wasOpen) S.pollState = null;
  update();
}
export function socketOpened() { sawUpdate(); update(); }

function pollAnswered(ok) {
  const before = S.pollState;
  S.pollState = ok ? "ok" : "failed";
  if (ok) sawUpdate();
  // The server answers again (or for the first time since the drop): don't wait out the back-off.
  if (ok && !S.wsOpen && before !== "ok") reconnectNow();
  update();
}

function agoText() {
  const s = Math.max(0, Math.round((Date.now() - S.lastUpdate) / 1000));
  return "last update " + (s < 60 ? s + " s" : Math.floor(s / 60) + " min " + (s % 60) + " s") + " ago";
}

function renderNote() {
  const note = $("stale-note");
  if (!note) return;
  const text = S.stale ? agoText() : "";
  if (note.textContent !== text) note.textContent = text;
  note.hidden = !S.stale;
}

function update() {
  const stale = !S.wsOpen && S.pollState === "failed";
  if (stale !== S.stale) {
    S.stale = stale;
    main.classList.toggle("is-stale", stale);
    clearInterval(noteTimer);
    noteTimer = stale ? setInterval(renderNote, 1000) : null;
    onChange(stale);
  }
  renderNote();
  setLive();
}

export function initHealth(changed) {
  onChange = changed;
  sawUpdate();
  document.body.addEventListener("htmx:afterRequest", (evt) => {
    if (evt.detail.successful === true) pollAnswered(true);
    else if (evt.detail.failed === true && evt.detail.xhr && evt.detail.xhr.status >= 500) pollAnswered(false);
  });
  document.body.addEventListener("htmx:sendError", () => pollAnswered(false));
  document.body.addEventListener("htmx:timeout", () => pollAnswered(false));
}
