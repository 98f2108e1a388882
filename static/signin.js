/* Sign-in page. A visit that arrives from a link on another site carries no SameSite=Strict cookie, so the
 * server could not see the session; this same-site request does: if the browser is signed in, go on. */
(function () {
  "use strict";
  var form = document.querySelector("form[data-next]");
  if (!form || !window.fetch) return;
  fetch("/api/session", { credentials: "same-origin", headers: { "Accept": "application/json" } })
    .then(function (r) { return r.ok ? r.json() : null; })
    .then(function (s) { if (s && s.signed_in) location.replace(form.dataset.next); })
    .catch(function () { /* stay on the form */ });
})();
