/* The Preview panel: sampler preview frames (binary WebSocket frames shown as blob: URLs), its open/closed
 * toggle (remembered, and told to the server so it only sends frames someone sees), and the node-output strip. */
import { $, S, multi, panelFor } from "./state.js";
import { send } from "./socket.js";

const PREVIEW_KEY = "jobqueue.previews";
let previewUrl = null;   // blob URL shown now (revoked when replaced)
let stripKey = null;

export function previewsOpen() {
  const t = $("preview-toggle");
  return !!t && t.getAttribute("aria-expanded") === "true";
}
/* Whether previews are wanted, and whose: several hosts, only the job the Preview follows (S.shown; null:
 * none), so the server sends one host's frames instead of all of them; one host, all (one job runs). */
export function sendPreviewState() {
  send({ type: "previews", enabled: previewsOpen() && !document.hidden, job: multi ? S.shown || null : "all" });
}

function sniffMime(bytes) {
  if (bytes.length >= 2 && bytes[0] === 0xff && bytes[1] === 0xd8) return "image/jpeg";
  if (bytes.length >= 4 && bytes[0] === 0x89 && bytes[1] === 0x50 && bytes[2] === 0x4e && bytes[3] === 0x47) return "image/png";
  return null;
}

export function handleBinary(buf) {
  const meta = S.pendingPreview;
  S.pendingPreview = null;
  if (!(buf instanceof ArrayBuffer) || !previewsOpen()) return;
  const mime = sniffMime(new Uint8Array(buf, 0, Math.min(4, buf.byteLength)));
  if (!mime) return;
  const pid = meta && meta.prompt_id;
  if (multi) {
    if (!pid || pid !== S.shown) return;   // another host's job, or one nobody can attribute
  } else if (pid && S.currentId && pid !== S.currentId) return;  // a late frame of a job that already ended
  showPreview(new Blob([buf], { type: mime }), pid || S.currentId);
}

function showPreview(blob, pid) {
  const img = $("preview-img");
  if (!img) return;
  const old = previewUrl;
  previewUrl = URL.createObjectURL(blob);
  S.previewFor = pid || null;
  img.src = previewUrl;
  img.hidden = false;
  $("preview-empty").hidden = true;
  if (old) {
    // revoke the previous URL once the new image is decoded (no blank frame in between)
    const done = () => URL.revokeObjectURL(old);
    if (img.decode) img.decode().then(done, done); else setTimeout(done, 1000);
  }
}

export function clearPreview() {
  const img = $("preview-img");
  if (img) { img.removeAttribute("src"); img.hidden = true; }
  const empty = $("preview-empty");
  if (empty) empty.hidden = false;
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = null;
  S.previewFor = null;
}

export function initPreviewToggle() {
  const btn = $("preview-toggle");
  const body = $("preview-body");
  if (!btn || !body) return;
  let stored = null;
  try { stored = localStorage.getItem(PREVIEW_KEY); } catch (e) { /* storage disabled */ }
  const apply = (open) => {
    btn.setAttribute("aria-expanded", open ? "true" : "false");
    body.hidden = !open;
  };
  apply(stored !== "0");
  btn.addEventListener("click", () => {
    const open = !previewsOpen();
    apply(open);
    try { localStorage.setItem(PREVIEW_KEY, open ? "1" : "0"); } catch (e) { /* ignore */ }
    sendPreviewState();
  });
}

// ---------------------------------------------------------------------------------------------- node output strip
function viewUrl(img, thumb, host) {
  const q = new URLSearchParams({ filename: String(img.filename || ""), subfolder: String(img.subfolder || ""),
    type: String(img.type || "output") });
  if (thumb) q.set("preview", "webp;75");  // ComfyUI's lighter re-encoding, as the server renders it
  if (host) q.set("host", host);           // several hosts: the files are on the job's own
  return "/api/view?" + q.toString();
}
function stripHost() {
  if (!multi || !S.shown) return null;
  const panel = panelFor(S.shown);
  return panel ? panel.dataset.host || null : null;
}

/* Rebuild the strip only when its image list changed; existing items (and their loaded images) are reused. */
export function renderStrip(outputs) {
  const ul = $("node-strip");
  if (!ul || !Array.isArray(outputs)) return;
  const items = [];
  const host = stripHost();
  outputs.forEach((out) => {
    if (!out || !Array.isArray(out.images)) return;
    out.images.forEach((img) => {
      if (!img || !img.filename) return;
      const key = (host ? host + "|" : "") +
        String(img.type || "output") + "/" + String(img.subfolder || "") + "/" + String(img.filename);
      items.push({ key, img, label: String(out.title || ("Node " + out.node_id)) });
    });
  });
  const key = items.map((i) => i.key).join("\n");
  if (stripKey === null) {
    // first call: adopt the server-rendered strip
    stripKey = Array.prototype.map.call(ul.children, (li) => li.dataset.key).join("\n");
  }
  if (key === stripKey) return;
  stripKey = key;
  const existing = {};
  Array.prototype.forEach.call(ul.children, (li) => { existing[li.dataset.key] = li; });
  const nodes = items.map((it) => {
    if (existing[it.key]) return existing[it.key];
    const li = document.createElement("li");
    li.className = "strip-item";
    li.dataset.key = it.key;
    const a = document.createElement("a");
    a.href = viewUrl(it.img, false, host);
    a.target = "_blank";
    a.rel = "noopener";
    let im;
    if (it.img.kind === "videos") {   // a saved video: its first frame, full file on click
      im = document.createElement("video");
      im.src = viewUrl(it.img, false, host);
      im.muted = true;
      im.playsInline = true;
      im.preload = "metadata";
      im.setAttribute("aria-label", it.label + " output");
    } else {
      im = document.createElement("img");
      im.src = viewUrl(it.img, true, host);
      im.alt = it.label + " output";
      im.loading = "lazy";
      im.decoding = "async";
    }
    const span = document.createElement("span");
    span.className = "strip-label";
    span.textContent = it.label;
    a.append(im, span);
    li.append(a);
    return li;
  });
  ul.replaceChildren(...nodes);
  const empty = $("strip-empty");
  if (empty) empty.hidden = nodes.length > 0;
  if (nodes.length) ul.lastElementChild.scrollIntoView({ block: "nearest", inline: "end" });
}
