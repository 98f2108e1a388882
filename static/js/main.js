/* Job Queue page: one WebSocket (/api/run/ws) for live progress, previews and events; htmx + idiomorph for
 * the server-rendered fragments (cards, current job, gauges, detail overlay), swapped in place with morph.
 * ES modules, no framework, no build step. Everything from the server goes into the DOM as text
 * (textContent, attributes through the DOM API), never as HTML. This module wires the others together. */
import { $, S, main } from "./state.js";
import { localizeTimes, tickElapsed, toast } from "./format.js";
import { initHtmxHooks, initMorphRules, refreshJobs, refreshSoon } from "./fragments.js";
import { initSocket, reconnectNow, send } from "./socket.js";
import { setLive } from "./live.js";
import { handleMessage } from "./messages.js";
import { afterSwap, initPanels, retitle } from "./panels.js";
import { initHealth, sawUpdate, socketClosed, socketOpened } from "./health.js";
import { handleBinary, initPreviewToggle, sendPreviewState } from "./preview.js";
import { initOverlay, refreshOverlay } from "./overlay.js";
import { initCards } from "./cards.js";
import { refreshNow, restartPoll, startGauges, stopPolling } from "./countdown.js";
import { initEta } from "./eta.js";

function start() {
  initMorphRules();
  initHtmxHooks(() => {
    localizeTimes(document);
    afterSwap();
    tickElapsed();
  });
  initOverlay();
  initCards();
  initPanels();
  initEta();
  initHealth(() => { retitle(); tickElapsed(); });

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      stopPolling();
    } else {
      refreshNow();
      startGauges();
      if (!S.wsOpen) reconnectNow();
    }
    sendPreviewState();
  });

  const liveBtn = $("live");
  if (liveBtn) {
    liveBtn.addEventListener("click", () => {
      reconnectNow();
      refreshNow();
      toast("Refreshed");
    });
  }

  localizeTimes(document);
  tickElapsed();
  setInterval(() => { if (!document.hidden) tickElapsed(); }, 1000);
  initPreviewToggle();
  setLive();
  initSocket({
    open(reconnect) {
      socketOpened();
      sendPreviewState();
      if (reconnect && S.lastSeq != null) send({ type: "resume", last_seq: S.lastSeq });
      if (reconnect) { refreshJobs(); refreshSoon("gauges"); refreshOverlay(); }
      restartPoll();
      startGauges();
    },
    text(msg) { sawUpdate(); handleMessage(msg); },
    binary: handleBinary,
    close(wasOpen) {
      S.pendingPreview = null;
      socketClosed(wasOpen);
      // Only a drop starts the fallback polls: a failed reconnect attempt leaves them running (restarting
      // them at every attempt of the back-off would keep the 5 s poll from ever firing).
      if (wasOpen) { restartPoll(); startGauges(); }
    },
  });
  restartPoll();
  startGauges();
}

if (main) start();
