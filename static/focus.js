/* Where focus goes when the job overlay closes: back to what opened it (queue.js), and when that card has gone
 * meanwhile (the job finished), to the job's Recent row if it has one, else to the Queue heading, never <body>. */
(function () {
  "use strict";
  const dialog = document.getElementById("overlay");
  if (!dialog) return;
  let jobId = null;
  // Capture phase on the document: runs before the dialog's own listeners, which empty the overlay.
  document.addEventListener("close", e => {
    if (e.target !== dialog) return;
    const ov = dialog.querySelector("#overlay-job");
    jobId = ov ? ov.dataset.jobId : null;
    setTimeout(() => {
      const now = document.activeElement;
      if (now && now !== document.body && now.isConnected) return;
      const sel = jobId && window.CSS ? CSS.escape(jobId) : null;
      const target = (sel && (document.querySelector("#job-" + sel) ||
                              document.querySelector('#recent-list [data-job-id="' + sel + '"]'))) ||
                     document.getElementById("cards-h");
      if (target) target.focus();
    }, 0);
  }, true);
})();
