/* Job Queue page: one WebSocket (/api/run/ws) for live progress, previews and events; htmx + idiomorph for
 * the server-rendered fragments (cards, current job, gauges, detail overlay), swapped in place with morph.
 * No framework, no build step. Everything from the server goes into the DOM as text (textContent, attributes
 * through the DOM API), never as HTML. */
(function () {
  "use strict";

  var main = document.getElementById("main");
  if (!main) return;

  var cfg = {
    wsPath: main.dataset.wsPath || "/api/run/ws",
    pollS: Number(main.dataset.pollS) || 10,
    gaugesPollS: Number(main.dataset.gaugesPollS) || 3,
    lingerS: Number(main.dataset.lingerS) || 6,
    overlayUrl: main.dataset.overlayUrl || "/admin/jobs/__ID__/overlay",
    cancelUrl: main.dataset.cancelUrl || "/api/admin/jobs/__ID__/cancel",
  };
  var BACKOFF_MIN_MS = 500;
  var BACKOFF_MAX_MS = 15000;
  var TITLE = "Job Queue";
  var PREVIEW_KEY = "jobqueue.previews";
  var TERMINAL = { completed: 1, failed: 1, interrupted: 1, cancelled: 1, stalled: 1 };

  var $ = function (id) { return document.getElementById(id); };

  // ---------------------------------------------------------------------------------------------- state
  var ws = null;
  var wsOpen = false;
  var everOpened = false;
  var attempt = 0;
  var reconnectTimer = null;
  var comfyConnected = main.dataset.comfyConnected !== "false";
  var lastSeq = null;
  var pendingPreview = null;    // the "preview" text frame announcing the next binary frame
  var previewUrl = null;        // blob URL shown now (revoked when replaced)
  var previewFor = null;        // prompt id of the shown preview
  var currentId = ($("current") && $("current").dataset.jobId) || null;
  var latest = null;            // latest ProgressState of the running job
  var stripKey = null;
  var overlayId = null;
  var lastFocus = null;
  var lingering = {};           // job id → timeout id
  // Several hosts (data-multi-host): one panel per running job, keyed by prompt id (unique across hosts);
  // progress messages of all hosts arrive interleaved on this one socket.
  var multi = main.dataset.multiHost === "true";
  var runs = {};                // prompt id → latest ProgressState of each running job
  var picked = null;            // the panel the viewer last clicked or focused (its prompt id)
  var shown = null;             // the job the Preview and strip follow now
  var hostsDown = [];           // names of configured hosts that are not connected

  // ---------------------------------------------------------------------------------------------- formatting
  function fmtDuration(s) {
    if (s == null || !isFinite(s) || s < 0) return "";
    s = Math.round(s);
    if (s < 60) return s + "s";
    var m = Math.floor(s / 60);
    s = s % 60;
    if (m < 60) return m + "m " + (s < 10 ? "0" : "") + s + "s";
    var h = Math.floor(m / 60);
    m = m % 60;
    return h + "h " + (m < 10 ? "0" : "") + m + "m";
  }

  function fmtLocal(iso) {
    var d = new Date(iso);
    if (isNaN(d.getTime())) return null;
    var now = new Date();
    if (d.toDateString() === now.toDateString()) {
      return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    }
    return d.toLocaleString([], { year: d.getFullYear() === now.getFullYear() ? undefined : "numeric",
      month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  }

  /* <time data-local datetime="UTC ISO"> → the viewer's local time (the server renders UTC as a fallback). */
  function localizeTimes(root) {
    var els = (root || document).querySelectorAll("time[data-local]");
    for (var i = 0; i < els.length; i++) {
      var el = els[i];
      var iso = el.getAttribute("datetime");
      if (el.dataset.localized === iso) continue;
      var text = fmtLocal(iso);
      if (text) {
        el.textContent = text;
        el.title = new Date(iso).toLocaleString([], { dateStyle: "full", timeStyle: "long" });
      }
      el.dataset.localized = iso;
    }
  }

  function tickElapsed() {
    var els = document.querySelectorAll("[data-since]");
    var now = Date.now();
    for (var i = 0; i < els.length; i++) {
      var t = Date.parse(els[i].dataset.since);
      if (isNaN(t)) continue;
      var text = fmtDuration(Math.max(0, (now - t) / 1000));
      if (els[i].textContent !== text) els[i].textContent = text;
    }
  }

  var toastTimer = null;
  function toast(text) {
    var el = $("toast");
    if (!el) return;
    el.textContent = text;
    el.classList.add("show");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () { el.classList.remove("show"); }, 2200);
  }

  // ---------------------------------------------------------------------------------------------- morph rules
  /* Fragments are swapped with idiomorph. Two things the page owns on the client survive a swap:
   * localised <time> texts and ticking elapsed counters (when the server value did not change), and a
   * finished job's card while it lingers with its final badge. */
  if (window.Idiomorph && Idiomorph.defaults && Idiomorph.defaults.callbacks) {
    Idiomorph.defaults.callbacks.beforeNodeMorphed = function (oldNode, newNode) {
      if (oldNode.nodeType !== 1 || !newNode || newNode.nodeType !== 1) return;
      if (oldNode.classList.contains("is-lingering")) return false;
      // While the socket streams a job's progress, its live fields are fresher than any fragment.
      if (wsOpen && oldNode.hasAttribute("data-f")) {
        var panel = oldNode.closest(".current[data-job-id]");
        var id = panel && panel.dataset.jobId;
        if (id && (multi ? runs[id] : latest && id === latest.prompt_id)) return false;
      }
      if (oldNode.tagName === "TIME" && oldNode.hasAttribute("data-local") &&
          oldNode.getAttribute("datetime") === newNode.getAttribute("datetime")) return false;
      if (oldNode.hasAttribute("data-since") &&
          oldNode.getAttribute("data-since") === newNode.getAttribute("data-since")) return false;
    };
    Idiomorph.defaults.callbacks.beforeNodeRemoved = function (node) {
      if (node.nodeType === 1 && node.classList.contains("is-lingering")) return false;
    };
  }

  // ---------------------------------------------------------------------------------------------- fragments
  var refreshTimers = {};
  function refresh(id) {
    var el = $(id);
    if (el && window.htmx) htmx.trigger(el, "refresh");
  }
  function refreshSoon(id, ms) {
    if (refreshTimers[id]) return;
    refreshTimers[id] = setTimeout(function () { refreshTimers[id] = null; refresh(id); }, ms == null ? 80 : ms);
  }
  function refreshJobs() {
    refreshSoon("cards");
    refreshSoon("current");
  }
  /* After a job event, refresh now and once more a little later: queue positions come from the server's
   * next reconcile of ComfyUI's queue, which trails the event by up to a few seconds. */
  var settleTimer = null;
  function refreshJobsAndSettle() {
    refreshJobs();
    clearTimeout(settleTimer);
    settleTimer = setTimeout(function () { settleTimer = null; refresh("cards"); }, 2500);
  }

  document.body.addEventListener("htmx:beforeSwap", function (evt) {
    // The overlay shows its "not found" fragment (404) instead of keeping stale content.
    var t = evt.detail.target;
    if (evt.detail.xhr && evt.detail.xhr.status === 404 && t && t.closest && t.closest("#overlay")) {
      evt.detail.shouldSwap = true;
      evt.detail.isError = false;
    }
  });
  document.body.addEventListener("htmx:responseError", function (evt) {
    // Signed out or the session expired: reloading shows the sign-in page (token mode) or the browser's
    // password prompt (password mode).
    if (evt.detail.xhr && evt.detail.xhr.status === 401) location.reload();
  });
  document.body.addEventListener("htmx:afterSwap", function () {
    localizeTimes(document);
    var panel = $("current");
    if (multi) {
      eachPanel(function (el) { var st = runs[el.dataset.jobId]; if (st) updatePanel(el, st); });
      follow();
    } else if (panel) {
      currentId = panel.dataset.jobId || null;
      if (latest && latest.prompt_id === currentId) updateCurrent(latest);
    }
    tickElapsed();
  });

  // ---------------------------------------------------------------------------------------------- LIVE indicator
  var LIVE_TEXT = { connecting: "CONNECTING", live: "LIVE", reconnecting: "RECONNECTING", offline: "OFFLINE",
    degraded: "LIVE" };
  /* Several hosts: "degraded" (amber) while some are down, named in the text: "LIVE · gpu2 down". */
  function downText() {
    if (hostsDown.length > 2) return hostsDown.length + " hosts down";
    return hostsDown.join(", ") + " down";
  }
  function setLive() {
    var state = wsOpen ? (comfyConnected ? "live" : "offline") : (everOpened ? "reconnecting" : "connecting");
    if (state === "live" && multi && hostsDown.length) state = "degraded";
    var el = $("live");
    if (!el) return;
    var text = LIVE_TEXT[state] + (state === "degraded" ? " · " + downText() : "");
    if (el.dataset.state === state && $("live-text").textContent === text) return;
    el.dataset.state = state;
    el.className = "live is-" + state;
    $("live-text").textContent = text;
    var why = {
      connecting: "Connecting to the live feed…",
      live: "Live: updates stream in. Click to refresh now.",
      reconnecting: "Connection lost; reconnecting. Click to retry now.",
      offline: (multi ? "No ComfyUI host is reachable." : "ComfyUI is unreachable.") + " Click to refresh now.",
      degraded: "Live, but not every host: " + hostsDown.join(", ") + " not connected. Click to refresh now.",
    };
    el.title = why[state];
  }

  // ---------------------------------------------------------------------------------------------- WebSocket
  function wsUrl() {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + cfg.wsPath;
  }

  function connect() {
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
    if (ws && (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING)) return;
    var sock;
    try {
      sock = new WebSocket(wsUrl());
    } catch (e) {
      scheduleReconnect();
      return;
    }
    ws = sock;
    sock.binaryType = "arraybuffer";
    sock.onopen = function () {
      if (ws !== sock) return;
      wsOpen = true;
      var reconnect = everOpened;
      everOpened = true;
      setLive();
      sendPreviewState();
      if (reconnect && lastSeq != null) send({ type: "resume", last_seq: lastSeq });
      if (reconnect) { refreshJobs(); refreshSoon("gauges"); refreshOverlay(); }
      restartPoll();
    };
    sock.onmessage = function (ev) {
      if (ws !== sock) return;
      if (typeof ev.data === "string") {
        var msg;
        try { msg = JSON.parse(ev.data); } catch (e) { return; }
        if (msg && typeof msg === "object") handleMessage(msg);
      } else {
        handleBinary(ev.data);
      }
    };
    sock.onclose = function () {
      if (ws !== sock) return;
      ws = null;
      wsOpen = false;
      pendingPreview = null;
      setLive();
      scheduleReconnect();
      restartPoll();
    };
    sock.onerror = function () { /* onclose follows */ };
  }

  function scheduleReconnect() {
    if (reconnectTimer) return;
    // Capped exponential backoff with jitter (50-100% of the step), so many tabs don't reconnect in lockstep.
    var step = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * Math.pow(2, attempt));
    var delay = step * (0.5 + Math.random() * 0.5);
    attempt = Math.min(attempt + 1, 16);
    reconnectTimer = setTimeout(function () { reconnectTimer = null; connect(); }, delay);
  }

  function reconnectNow() {
    attempt = 0;
    if (!wsOpen) connect();
  }

  function send(obj) {
    if (ws && ws.readyState === WebSocket.OPEN) {
      try { ws.send(JSON.stringify(obj)); } catch (e) { /* closing */ }
    }
  }

  // ---------------------------------------------------------------------------------------------- messages
  function handleMessage(msg) {
    // Other scripts (eta.js) follow the stream through DOM events.
    if (msg.type === "progress" || msg.type === "event") {
      document.dispatchEvent(new CustomEvent("monitor:" + msg.type, { detail: msg }));
    }
    switch (msg.type) {
      case "hello": return onHello(msg);
      case "progress": return onProgress(msg);
      case "event": return onEvent(msg);
      case "preview": pendingPreview = msg; return;
      case "comfy":
        if (multi) setHosts(msg);
        setComfy(msg.connected !== false);
        return;
    }
  }

  /* Several hosts: the comfy state lists each host ({name, connected, ...}). */
  function setHosts(comfy) {
    if (!comfy || !Array.isArray(comfy.hosts)) return;
    var down = comfy.hosts.filter(function (h) { return h && h.connected === false; })
      .map(function (h) { return String(h.name); });
    var changed = down.join("\n") !== hostsDown.join("\n");
    hostsDown = down;
    setLive();
    if (changed) { refreshSoon("gauges"); refreshJobs(); }
  }

  function setComfy(connected) {
    var changed = connected !== comfyConnected;
    comfyConnected = connected;
    setLive();
    if (changed) { refreshJobs(); refreshSoon("gauges"); }
  }

  function onHello(msg) {
    attempt = 0;  // a full handshake: the next drop starts the backoff from the bottom again
    if (multi && msg.comfy && typeof msg.comfy === "object") setHosts(msg.comfy);
    if (msg.comfy && typeof msg.comfy === "object") setComfy(msg.comfy.connected !== false);
    if (typeof msg.last_seq === "number" && (lastSeq == null || msg.last_seq > lastSeq)) lastSeq = msg.last_seq;
    var jobs = Array.isArray(msg.jobs) ? msg.jobs : [];
    if (multi) return helloMulti(jobs);
    var running = null;
    for (var i = 0; i < jobs.length; i++) {
      if (jobs[i] && jobs[i].status === "running") { running = jobs[i]; break; }
    }
    if (running) onProgress(running);
    else if (currentId) onProgress({ prompt_id: null, status: "idle" });
    else setTitle(null);
  }

  function onProgress(p) {
    if (multi) return progressMulti(p);
    var id = p.prompt_id || null;
    if (!id || p.status === "idle") {
      latest = null;
      setTitle(null);
      if (currentId) { currentId = null; refreshJobs(); }
      return;
    }
    if (p.status === "running") {
      if (id !== currentId) {
        // A new job started: the panel's structure changes (fetch it); the old preview goes.
        currentId = id;
        if (previewFor && previewFor !== id) clearPreview();
        latest = p;
        refreshJobs();
      } else {
        latest = p;
        updateCurrent(p);
      }
      setTitle(p);
      renderStrip(p.outputs);
      if (overlayId === id) refreshOverlayThrottled();
      if (!document.getElementById("job-" + id)) refreshSoon("cards", 300);
      return;
    }
    if (TERMINAL[p.status]) {
      if (id === currentId) {
        if (p.status === "completed") {
          updateCurrent(Object.assign({}, latest || {}, p, { percent: 100, indeterminate: false, eta_s: null }));
        }
        latest = null;
        setTitle(null);
        refreshJobs();
      }
      if (overlayId === id) refreshOverlay();
      return;
    }
    // queued (or any other) state of another job: make sure its card is there
    if (!document.getElementById("job-" + id)) refreshSoon("cards", 300);
  }

  // ---------------------------------------------------------------------------------------------- several hosts
  function eachPanel(fn) {
    var els = document.querySelectorAll("#current .current[data-job-id]");
    for (var i = 0; i < els.length; i++) fn(els[i]);
  }
  function panelFor(id) {
    var found = null;
    eachPanel(function (el) { if (el.dataset.jobId === id) found = el; });
    return found;
  }

  function helloMulti(jobs) {
    var fresh = {};
    jobs.forEach(function (j) { if (j && j.prompt_id && j.status === "running") fresh[j.prompt_id] = j; });
    runs = fresh;
    var stale = false;
    eachPanel(function (el) { if (!runs[el.dataset.jobId]) stale = true; });
    Object.keys(runs).forEach(function (id) { if (!panelFor(id)) stale = true; });
    if (stale) refreshJobs();
    eachPanel(function (el) { var st = runs[el.dataset.jobId]; if (st) updatePanel(el, st); });
    follow();
  }

  function progressMulti(p) {
    var id = p.prompt_id || null;
    if (!id || p.status === "idle") {
      var had = Object.keys(runs).length > 0 || !!document.querySelector("#current .current[data-job-id]");
      runs = {};
      follow();
      if (had) refreshJobs();
      return;
    }
    var panel = panelFor(id);
    if (p.status === "running") {
      var isNew = !runs[id];
      runs[id] = p;
      if (panel) updatePanel(panel, p); else refreshJobs();   // a job started: its panel comes from the server
      if (isNew) follow();
      if (id === shown) { setTitle(p); renderStrip(p.outputs); }
      if (overlayId === id) refreshOverlayThrottled();
      if (!document.getElementById("job-" + id)) refreshSoon("cards", 300);
      return;
    }
    if (TERMINAL[p.status]) {
      if (runs[id] || panel) {
        if (panel && p.status === "completed") {
          updatePanel(panel, Object.assign({}, runs[id] || {}, p, { percent: 100, indeterminate: false, eta_s: null }));
        }
        delete runs[id];
        follow();
        refreshJobs();
      }
      if (overlayId === id) refreshOverlay();
      return;
    }
    if (!document.getElementById("job-" + id)) refreshSoon("cards", 300);
  }

  /* The Preview follows the panel the viewer last touched while that job runs, else the job that started
   * last. Marks that panel, names it above the Preview, and swaps the preview and strip when it changes. */
  function follow() {
    var want = picked && runs[picked] ? picked : null;
    if (!want) {
      var best = null;
      Object.keys(runs).forEach(function (id) {
        var t = Date.parse(runs[id].started_at || "") || 0;
        if (best === null || t >= best.t) best = { id: id, t: t };
      });
      want = best ? best.id : null;
    }
    var changed = want !== shown;
    shown = want;
    var label = "";
    eachPanel(function (el) {
      var on = el.dataset.jobId === want;
      el.classList.toggle("is-shown", on);
      if (on) {
        el.setAttribute("aria-current", "true");
        var wf = el.querySelector(".wf-name");
        label = (el.dataset.host || "") + " · " + (wf ? wf.textContent : "");
      } else {
        el.removeAttribute("aria-current");
      }
    });
    var pf = $("preview-for");
    if (pf && pf.textContent !== label) pf.textContent = label;
    if (!changed) return;
    if (previewFor !== want) clearPreview();
    var st = want ? runs[want] : null;
    renderStrip(st && Array.isArray(st.outputs) ? st.outputs : []);
    setTitle(st);
  }

  function pick(e) {
    if (!multi || !(e.target instanceof Element)) return;
    var panel = e.target.closest("#current .current[data-job-id]");
    if (!panel || picked === panel.dataset.jobId) return;
    picked = panel.dataset.jobId;
    follow();
  }
  document.addEventListener("click", pick, true);
  document.addEventListener("focusin", pick);

  function setTitle(p) {
    var t = TITLE;
    if (p && p.status === "running" && p.percent != null && !p.indeterminate && isFinite(p.percent)) {
      t = "(" + Math.round(Math.max(0, Math.min(100, p.percent))) + "%) " + TITLE;
    }
    if (document.title !== t) document.title = t;
  }

  function field(panel, name) { return panel.querySelector('[data-f="' + name + '"]'); }
  function setText(el, text) {
    if (!el) return;
    if (el.textContent !== text) el.textContent = text;
    el.hidden = !text;
  }

  /* Live fields of the Current Job panel, straight from a ProgressState (no request). */
  function updateCurrent(p) {
    var panel = $("current");
    if (!panel || panel.dataset.jobId !== p.prompt_id) return;
    updatePanel(panel, p);
  }

  /* One job's panel (the single Current Job panel, or one of several hosts' run panels). */
  function updatePanel(panel, p) {
    var node = field(panel, "node");
    if (node) {
      var name = p.node_title || p.node_type ||
        (panel.dataset.source === "external" ? "No live detail" : "Starting…");
      if (node.textContent !== name) node.textContent = name;
    }
    if (p.node_id || p.step) setText(field(panel, "external-hint"), "");
    setText(field(panel, "nodes"), p.nodes_total != null ? (p.nodes_done || 0) + "/" + p.nodes_total + " nodes" : "");
    var indet = !!p.indeterminate || p.percent == null;
    var pct = indet ? 0 : Math.max(0, Math.min(100, Number(p.percent) || 0));
    var bar = field(panel, "bar");
    if (bar) {
      bar.classList.toggle("indeterminate", indet);
      var fill = bar.querySelector(".bar-fill");
      if (fill) fill.style.width = (indet ? 100 : pct) + "%";
      if (indet) {
        bar.removeAttribute("aria-valuenow");
        bar.setAttribute("aria-valuetext", "Working, progress not known yet");
      } else {
        bar.setAttribute("aria-valuenow", String(Math.round(pct)));
        bar.setAttribute("aria-valuetext", Math.round(pct) + "%");
      }
    }
    var pctEl = field(panel, "percent");
    if (pctEl) pctEl.textContent = indet ? "…" : Math.round(pct) + "%";
    setText(field(panel, "step"), p.step && p.step.max != null ? "Step " + p.step.value + "/" + p.step.max : "");
    setText(field(panel, "eta"), p.eta_s != null && isFinite(p.eta_s) ? "~" + fmtDuration(p.eta_s) : "");
    setText(field(panel, "rate"), p.it_per_s != null && isFinite(p.it_per_s) ? Number(p.it_per_s).toFixed(1) + " it/s" : "");
    var el = field(panel, "elapsed");
    if (el && p.started_at && el.dataset.since !== p.started_at) {
      el.dataset.since = p.started_at;
      tickElapsed();
    }
  }

  function jobIdOf(ev) {
    var d = ev.data || {};
    return d.job_id || d.prompt_id || d.id || (d.job && d.job.id) || null;
  }

  function onEvent(ev) {
    if (typeof ev.seq === "number" && (lastSeq == null || ev.seq > lastSeq)) lastSeq = ev.seq;
    var kind = String(ev.kind || "");
    if (multi && kind.indexOf("comfy.") === 0) return refreshSoon("gauges");  // the "comfy" message says the rest
    if (kind === "comfy.connected") return setComfy(true);
    if (kind === "comfy.disconnected") return setComfy(false);
    if (kind.indexOf("job.") !== 0) return;
    var id = jobIdOf(ev);
    var status = kind.slice(4);
    if (TERMINAL[status]) {
      if (id) lingerCard(id, status);
      if (status === "completed" || status === "failed") notify(ev, status);
      if (multi && id && runs[id]) { delete runs[id]; follow(); }
      if (id && id === currentId) { currentId = null; latest = null; setTitle(null); }
    }
    if (!multi && status === "started" && id && previewFor && previewFor !== id) clearPreview();
    refreshJobsAndSettle();
    if (id && overlayId === id) refreshOverlay();
  }

  // ---------------------------------------------------------------------------------------------- lingering cards
  var BADGE_TEXT = { completed: "completed", failed: "failed", interrupted: "interrupted", cancelled: "cancelled", stalled: "stalled" };
  function lingerCard(id, status) {
    var card = document.getElementById("job-" + id);
    if (!card) return;
    card.classList.remove("is-running", "is-queued");
    card.classList.add("is-lingering", "is-" + status);
    card.dataset.status = status;
    var slot = card.querySelector(".status");
    if (slot) {
      var badge = document.createElement("span");
      badge.className = "badge badge-" + status;
      badge.textContent = BADGE_TEXT[status] || status;
      slot.replaceChildren(badge);
    }
    clearTimeout(lingering[id]);
    lingering[id] = setTimeout(function () {
      delete lingering[id];
      card.classList.add("is-leaving");
      setTimeout(function () {
        card.classList.remove("is-lingering");
        if (card.isConnected) card.remove();
        refreshSoon("cards");
      }, 400);
    }, cfg.lingerS * 1000);
  }

  // ---------------------------------------------------------------------------------------------- notifications
  function notify(ev, status) {
    if (!("Notification" in window) || Notification.permission !== "granted") return;
    try {
      var n = new Notification(status === "completed" ? "Job completed" : "Job failed", {
        body: String(ev.message || ""),
        tag: "job-" + (jobIdOf(ev) || ev.seq),
      });
      n.onclick = function () { window.focus(); n.close(); };
    } catch (e) { /* some platforms only allow notifications from a service worker */ }
  }
  function initNotifyButton() {
    var btn = $("notify-btn");
    if (!btn || !("Notification" in window)) return;
    btn.hidden = Notification.permission !== "default";
    btn.addEventListener("click", function () {
      Notification.requestPermission().then(function (p) {
        btn.hidden = p !== "default";
        if (p === "granted") toast("Notifications on for finished jobs");
      });
    });
  }

  // ---------------------------------------------------------------------------------------------- previews
  function previewsOpen() {
    var t = $("preview-toggle");
    return !!t && t.getAttribute("aria-expanded") === "true";
  }
  function sendPreviewState() {
    send({ type: "previews", enabled: previewsOpen() && !document.hidden });
  }

  function sniffMime(bytes) {
    if (bytes.length >= 2 && bytes[0] === 0xff && bytes[1] === 0xd8) return "image/jpeg";
    if (bytes.length >= 4 && bytes[0] === 0x89 && bytes[1] === 0x50 && bytes[2] === 0x4e && bytes[3] === 0x47) return "image/png";
    return null;
  }

  function handleBinary(buf) {
    var meta = pendingPreview;
    pendingPreview = null;
    if (!(buf instanceof ArrayBuffer) || !previewsOpen()) return;
    var mime = sniffMime(new Uint8Array(buf, 0, Math.min(4, buf.byteLength)));
    if (!mime) return;
    var pid = meta && meta.prompt_id;
    if (multi) {
      if (!pid || pid !== shown) return;   // another host's job, or one nobody can attribute
    } else if (pid && currentId && pid !== currentId) return;  // a late frame of a job that already ended
    showPreview(new Blob([buf], { type: mime }), pid || currentId);
  }

  function showPreview(blob, pid) {
    var img = $("preview-img");
    if (!img) return;
    var old = previewUrl;
    previewUrl = URL.createObjectURL(blob);
    previewFor = pid || null;
    img.src = previewUrl;
    img.hidden = false;
    $("preview-empty").hidden = true;
    if (old) {
      // revoke the previous URL once the new image is decoded (no blank frame in between)
      var done = function () { URL.revokeObjectURL(old); };
      if (img.decode) img.decode().then(done, done); else setTimeout(done, 1000);
    }
  }

  function clearPreview() {
    var img = $("preview-img");
    if (img) { img.removeAttribute("src"); img.hidden = true; }
    var empty = $("preview-empty");
    if (empty) empty.hidden = false;
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = null;
    previewFor = null;
  }

  function initPreviewToggle() {
    var btn = $("preview-toggle");
    var body = $("preview-body");
    if (!btn || !body) return;
    var stored = null;
    try { stored = localStorage.getItem(PREVIEW_KEY); } catch (e) { /* storage disabled */ }
    var apply = function (open) {
      btn.setAttribute("aria-expanded", open ? "true" : "false");
      body.hidden = !open;
    };
    apply(stored !== "0");
    btn.addEventListener("click", function () {
      var open = !previewsOpen();
      apply(open);
      try { localStorage.setItem(PREVIEW_KEY, open ? "1" : "0"); } catch (e) { /* ignore */ }
      sendPreviewState();
    });
  }

  // ---------------------------------------------------------------------------------------------- node output strip
  function viewUrl(img, thumb, host) {
    var q = new URLSearchParams({ filename: String(img.filename || ""), subfolder: String(img.subfolder || ""),
      type: String(img.type || "output") });
    if (thumb) q.set("preview", "webp;75");  // ComfyUI's lighter re-encoding, as the server renders it
    if (host) q.set("host", host);           // several hosts: the files are on the job's own
    return "/api/view?" + q.toString();
  }
  function stripHost() {
    if (!multi || !shown) return null;
    var panel = panelFor(shown);
    return panel ? panel.dataset.host || null : null;
  }

  /* Rebuild the strip only when its image list changed; existing items (and their loaded images) are reused. */
  function renderStrip(outputs) {
    var ul = $("node-strip");
    if (!ul || !Array.isArray(outputs)) return;
    var items = [];
    var host = stripHost();
    outputs.forEach(function (out) {
      if (!out || !Array.isArray(out.images)) return;
      out.images.forEach(function (img) {
        if (!img || !img.filename) return;
        var key = (host ? host + "|" : "") +
          String(img.type || "output") + "/" + String(img.subfolder || "") + "/" + String(img.filename);
        items.push({ key: key, img: img, label: String(out.title || ("Node " + out.node_id)) });
      });
    });
    var key = items.map(function (i) { return i.key; }).join("\n");
    if (stripKey === null) {
      // first call: adopt the server-rendered strip
      stripKey = Array.prototype.map.call(ul.children, function (li) { return li.dataset.key; }).join("\n");
    }
    if (key === stripKey) return;
    stripKey = key;
    var existing = {};
    Array.prototype.forEach.call(ul.children, function (li) { existing[li.dataset.key] = li; });
    var nodes = items.map(function (it) {
      if (existing[it.key]) return existing[it.key];
      var li = document.createElement("li");
      li.className = "strip-item";
      li.dataset.key = it.key;
      var a = document.createElement("a");
      a.href = viewUrl(it.img, false, host);
      a.target = "_blank";
      a.rel = "noopener";
      var im = document.createElement("img");
      im.src = viewUrl(it.img, true, host);
      im.alt = it.label + " output";
      im.loading = "lazy";
      im.decoding = "async";
      var span = document.createElement("span");
      span.className = "strip-label";
      span.textContent = it.label;
      a.append(im, span);
      li.append(a);
      return li;
    });
    ul.replaceChildren.apply(ul, nodes);
    var empty = $("strip-empty");
    if (empty) empty.hidden = nodes.length > 0;
    if (nodes.length) ul.lastElementChild.scrollIntoView({ block: "nearest", inline: "end" });
  }

  // ---------------------------------------------------------------------------------------------- overlay
  var dialog = $("overlay");

  function openOverlay(id) {
    if (!dialog || !id || !window.htmx) return;
    lastFocus = document.activeElement;
    overlayId = id;
    var url = cfg.overlayUrl.replace("__ID__", encodeURIComponent(id));
    htmx.ajax("GET", url, { target: "#overlay-body", swap: "innerHTML" }).then(function () {
      if (overlayId !== id) return;
      localizeTimes(dialog);
      tickElapsed();
      if (!dialog.open) dialog.showModal();
      var close = dialog.querySelector("[data-close]");
      if (close) close.focus();
    });
  }

  window.monitorOpenOverlay = openOverlay;   // eta.js: the Recent section's rows open the same overlay

  var overlayThrottle = null;
  function refreshOverlay() {
    if (overlayId && dialog && dialog.open) refresh("overlay-job");
  }
  function refreshOverlayThrottled() {
    if (overlayThrottle) return;
    overlayThrottle = setTimeout(function () { overlayThrottle = null; refreshOverlay(); }, 1000);
  }

  if (dialog) {
    dialog.addEventListener("close", function () {
      overlayId = null;
      $("overlay-body").replaceChildren();
      var back = lastFocus && lastFocus.isConnected ? lastFocus : null;
      lastFocus = null;
      if (back && back.focus) back.focus();
    });
    dialog.addEventListener("click", function (e) {
      // a click on the backdrop lands on the <dialog> itself (its content fills the box)
      if (e.target === dialog) dialog.close();
      else if (e.target.closest("[data-close]")) dialog.close();
    });
  }

  // ---------------------------------------------------------------------------------------------- actions
  function copyText(text) {
    var fallback = function () {
      var ta = document.createElement("textarea");
      ta.value = text;
      ta.setAttribute("readonly", "");
      ta.style.position = "fixed";
      ta.style.opacity = "0";
      (dialog && dialog.open ? dialog : document.body).appendChild(ta);
      ta.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      ta.remove();
      return ok;
    };
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).then(function () { return true; }, function () { return fallback(); });
    }
    return Promise.resolve(fallback());
  }

  function cancelJob(btn) {
    var id = btn.dataset.cancel;
    if (!id) return;
    var label = btn.dataset.label || "this job";
    if (!window.confirm("Cancel " + label + "?\n\nJob id: " + id)) return;
    btn.disabled = true;
    fetch(cfg.cancelUrl.replace("__ID__", encodeURIComponent(id)), {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-Requested-With": "fetch", "Accept": "application/json" },
    }).then(function (r) {
      if (!r.ok) {
        return r.json().catch(function () { return {}; }).then(function (body) {
          throw new Error((body && (body.error || body.message)) || ("HTTP " + r.status));
        });
      }
      toast("Cancel requested");
      refreshJobs();
      refreshOverlay();
    }).catch(function (err) {
      toast("Cancel failed: " + (err && err.message ? err.message : "network error"));
    }).then(function () { btn.disabled = false; });
  }

  document.addEventListener("click", function (e) {
    var t = e.target;
    if (!(t instanceof Element)) return;
    var copy = t.closest("[data-copy]");
    if (copy) {
      e.preventDefault();
      copyText(copy.dataset.copy).then(function (ok) { toast(ok ? "Job id copied" : "Copy failed"); });
      return;
    }
    var cancel = t.closest("[data-cancel]");
    if (cancel) { e.preventDefault(); cancelJob(cancel); return; }
    var card = t.closest(".card");
    if (card && !t.closest("a, button") && main.contains(card)) openOverlay(card.dataset.jobId);
  });

  document.addEventListener("keydown", function (e) {
    var t = e.target;
    if (!(t instanceof Element) || !t.classList.contains("card")) return;
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      openOverlay(t.dataset.jobId);
    }
  });

  // ---------------------------------------------------------------------------------------------- polling
  /* Fallback poll of the job list (and current panel): the countdown bar in the LIVE indicator shows it.
   * While the socket is open the poll is only a safety net; while it is down it is the source of truth.
   * Everything pauses while the tab is hidden. */
  var pollTimer = null;
  var gaugesTimer = null;

  function pollPeriodMs() { return (wsOpen ? cfg.pollS : Math.max(3, cfg.pollS / 2)) * 1000; }

  function startCountdown(ms) {
    var fill = $("live-bar-fill");
    if (!fill) return;
    fill.style.transition = "none";
    fill.style.transform = "scaleX(1)";
    void fill.offsetWidth;  // restart the transition from full
    fill.style.transition = "transform " + ms + "ms linear";
    fill.style.transform = "scaleX(0)";
  }
  function stopCountdown() {
    var fill = $("live-bar-fill");
    if (!fill) return;
    var cur = getComputedStyle(fill).transform;
    fill.style.transition = "none";
    fill.style.transform = cur === "none" ? "scaleX(1)" : cur;
  }

  function restartPoll() {
    clearTimeout(pollTimer);
    pollTimer = null;
    if (document.hidden) { stopCountdown(); return; }
    var ms = pollPeriodMs();
    startCountdown(ms);
    pollTimer = setTimeout(function () {
      refresh("cards");
      refresh("current");
      restartPoll();
    }, ms);
  }

  function startGauges() {
    clearInterval(gaugesTimer);
    gaugesTimer = null;
    if (document.hidden) return;
    gaugesTimer = setInterval(function () { refresh("gauges"); }, cfg.gaugesPollS * 1000);
  }

  function refreshNow() {
    refresh("cards");
    refresh("current");
    refresh("gauges");
    refreshOverlay();
    restartPoll();
  }

  document.addEventListener("visibilitychange", function () {
    if (document.hidden) {
      clearTimeout(pollTimer);
      pollTimer = null;
      clearInterval(gaugesTimer);
      gaugesTimer = null;
      stopCountdown();
    } else {
      refreshNow();
      startGauges();
      if (!wsOpen) reconnectNow();
    }
    sendPreviewState();
  });

  // ---------------------------------------------------------------------------------------------- start
  var liveBtn = $("live");
  if (liveBtn) {
    liveBtn.addEventListener("click", function () {
      reconnectNow();
      refreshNow();
      toast("Refreshed");
    });
  }

  localizeTimes(document);
  tickElapsed();
  setInterval(function () { if (!document.hidden) tickElapsed(); }, 1000);
  initPreviewToggle();
  initNotifyButton();
  setLive();
  connect();
  restartPoll();
  startGauges();
})();
