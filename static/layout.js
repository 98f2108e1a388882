/* Steady layout: when the page's content changes (a card arrives or leaves, a panel grows), the panels and
 * cards that moved glide from where they were to where they are now (a "FLIP" transform transition) rather
 * than jumping. Space for live content is reserved in queue.css; this handles what cannot be reserved: a
 * list whose items come and go. Skipped for people who prefer reduced motion. */
(function () {
  "use strict";
  const TRACKED = "#gauges, #current, #current > .current, #preview, #cards, #recent, .card, .recent-item";
  const main = document.getElementById("main");
  if (!main || !window.MutationObserver) return;
  const calm = window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)");
  let last = new WeakMap();            // element -> [x, y], its layout position (transforms ignored)

  function where(el) {
    let x = 0, y = 0;
    for (let e = el; e; e = e.offsetParent) { x += e.offsetLeft; y += e.offsetTop; }
    return [x, y];
  }

  function tracked() { return main.querySelectorAll(TRACKED); }

  function remember() {
    const next = new WeakMap();
    for (const el of tracked()) next.set(el, where(el));
    last = next;
  }

  function glide() {
    const now = new Map();
    for (const el of tracked()) now.set(el, where(el));
    const moved = [];
    for (const [el, p] of now) {
      const q = last.get(el);
      if (!q || !el.offsetParent) continue;
      let dx = q[0] - p[0], dy = q[1] - p[1];
      // Move relative to the nearest tracked ancestor, which glides too.
      const up = el.parentElement && el.parentElement.closest(TRACKED);
      if (up && now.has(up) && last.has(up)) {
        const a = last.get(up), b = now.get(up);
        dx -= a[0] - b[0]; dy -= a[1] - b[1];
      }
      if (Math.abs(dx) >= 1 || Math.abs(dy) >= 1) moved.push([el, dx, dy]);
    }
    last = new WeakMap(now);
    if (!moved.length || (calm && calm.matches)) return;
    for (const [el, dx, dy] of moved) {
      el.style.transition = "none";
      el.style.transform = "translate(" + dx + "px," + dy + "px)";
    }
    requestAnimationFrame(() => requestAnimationFrame(() => {
      for (const [el] of moved) {
        el.style.transition = "transform .3s ease";
        el.style.transform = "";
      }
    }));
  }

  new MutationObserver(glide).observe(main, {
    childList: true, subtree: true, characterData: true, attributes: true, attributeFilter: ["class", "hidden", "src"],
  });
  window.addEventListener("resize", remember);
  main.addEventListener("transitionend", e => { if (e.propertyName === "transform") e.target.style.transition = ""; });
  remember();
})();
