/* Where focus goes when the job overlay closes: back to what opened it (queue.js), and when that card has gone
 * meanwhile (the job finished), to the Queue heading (a Recent row may be re-sorted away), never <body>. */
(function () {
  "use strict";
  const dialog = document.getElementById("overlay");
  if (!dialog) return;
  let jobId = null;

  function settle() {
    if (dialog.open) return;
    const now = document.activeElement;
    if (now && now !== document.body && now.isConnected && !dialog.contains(now)) return;
    const sel = jobId && window.CSS ? CSS.escape(jobId) : null;
    const target = (sel && document.querySelector("#job-" + sel)) || document.getElementById("cards-h");
    if (target) target.focus();
  }
  // Capture phase on the document: runs before the dialog's own listeners, which empty the overlay.
  document.addEventListener("close", e => {
    if (e.target !== dialog) return;
    const ov = dialog.querySelector("#overlay-job");
    jobId = ov ? ov.dataset.jobId : null;
    // Now and once more after a late overlay refresh has landed (it can refill the closed dialog).
    setTimeout(settle, 0);
    setTimeout(settle, 250);
  }, true);
})();
