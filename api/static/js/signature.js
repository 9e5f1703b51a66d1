/* A signature pad on a <canvas> (pointer events: finger, pen, mouse). HDSignature.attach(canvas) →
 * {clear(), isEmpty(), toBlob(): Promise<Blob>} — the PNG is uploaded as a ticket attachment. */
(function () {
  "use strict";
  function attach(canvas) {
    const ctx = canvas.getContext("2d");
    let drawing = false, empty = true, last = null;
    ctx.lineWidth = 2.2; ctx.lineCap = "round"; ctx.strokeStyle = "#111827";
    function pos(ev) {
      const r = canvas.getBoundingClientRect();
      return [(ev.clientX - r.left) * canvas.width / r.width, (ev.clientY - r.top) * canvas.height / r.height];
    }
    canvas.addEventListener("pointerdown", (ev) => { drawing = true; last = pos(ev); canvas.setPointerCapture(ev.pointerId); });
    canvas.addEventListener("pointermove", (ev) => {
      if (!drawing) return;
      const p = pos(ev);
      ctx.beginPath(); ctx.moveTo(last[0], last[1]); ctx.lineTo(p[0], p[1]); ctx.stroke();
      last = p; empty = false;
    });
    const stop = () => { drawing = false; };
    canvas.addEventListener("pointerup", stop); canvas.addEventListener("pointercancel", stop);
    return {
      clear() { ctx.clearRect(0, 0, canvas.width, canvas.height); empty = true; },
      isEmpty() { return empty; },
      toBlob() { return new Promise((res) => canvas.toBlob(res, "image/png")); },
    };
  }
  window.HDSignature = { attach };
})();
