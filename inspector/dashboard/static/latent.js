/* The latent map: one canvas, points from a compact binary payload (/api/latent/map.bin), drawn as
   2-4 px squares into one Uint32 view of an ImageData (100k points in a few ms); a grid of cells finds the point under the
   mouse without scanning them all. Lasso selects flagged items for a bulk review (token in a header). */
"use strict";
(function () {
  const canvas = document.getElementById("map");
  if (!canvas) return;
  const COLOURS = [[176, 190, 197], [102, 187, 106], [255, 167, 38], [198, 40, 40], [30, 136, 229]];
  const ctx2d = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height;
  let P = null, sx = null, sy = null, grid = null, selected = new Set(), lasso = null;
  const hover = document.getElementById("hover"), hoverImg = document.getElementById("hover-img");
  const hoverText = document.getElementById("hover-text");

  function parse(buf) {  // layout: inspector/dashboard/latent_map.py (flagged items are the last m points)
    const len = new DataView(buf).getUint32(0, true);
    const head = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, len)));
    const n = head.n, m = head.m; let o = 4 + len;
    const take = (T, count) => { const a = new T(buf, o, count); o += count * T.BYTES_PER_ELEMENT; return a; };
    const x = take(Float32Array, n), y = take(Float32Array, n), fid = take(Int32Array, m), fgroup = take(Int32Array, m);
    return { head, n, m, first: n - m, x, y, fid, fgroup, kind: take(Uint8Array, n) };
  }
  const itemOf = (i) => (i >= P.first ? P.fid[i - P.first] : -1);
  const rgba = (c) => (255 << 24) | ((c[2] & 255) << 16) | ((c[1] & 255) << 8) | (c[0] & 255);  // little-endian ImageData
  function groupColour(g) { const h = (g * 137.5) % 360; return hsl(h / 360, 0.65, 0.45); }
  function hsl(h, s, l) {
    const f = (n) => { const k = (n + h * 12) % 12; return l - s * Math.min(l, 1 - l) * Math.max(-1, Math.min(k - 3, 9 - k, 1)); };
    return [255 * f(0), 255 * f(8), 255 * f(4)];
  }
  function layout() {
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (let i = 0; i < P.n; i++) {
      const x = P.x[i], y = P.y[i];
      if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
    }
    const pad = 12, s = Math.min((W - 2 * pad) / (x1 - x0 || 1), (H - 2 * pad) / (y1 - y0 || 1));
    sx = new Float32Array(P.n); sy = new Float32Array(P.n); grid = new Map();
    for (let i = 0; i < P.n; i++) { sx[i] = pad + (P.x[i] - x0) * s; sy[i] = H - pad - (P.y[i] - y0) * s; }
    for (let i = P.first; i < P.n; i++) {  // only flagged items are hovered and clicked
      const key = ((sx[i] >> 3) << 12) | (sy[i] >> 3);
      if (!grid.has(key)) grid.set(key, []);
      grid.get(key).push(i);
    }
  }
  const STATUS = COLOURS.map(rgba), SELECTED = rgba([0, 0, 0]), WHITE = rgba([255, 255, 255]), groupRgba = new Map();
  function square(px, i, r, c) {  // a (2r)x(2r) square of colour c at point i, clipped to the canvas
    const cx = sx[i] | 0, cy = sy[i] | 0, xa = Math.max(0, cx - r), xb = Math.min(W, cx + r);
    for (let Y = Math.max(0, cy - r); Y < Math.min(H, cy + r); Y++) px.fill(c, Y * W + xa, Y * W + xb);
  }
  function draw() {  // one Uint32 view of an ImageData: no per-point objects, good frames first, flagged on top
    const img = ctx2d.createImageData(W, H), px = new Uint32Array(img.data.buffer);
    const byGroup = document.getElementById("colour").value === "group";
    px.fill(WHITE);
    for (let i = 0; i < P.first; i++) square(px, i, 1, STATUS[P.kind[i]]);
    for (let i = P.first; i < P.n; i++) {
      const g = P.fgroup[i - P.first];
      let c = STATUS[P.kind[i]];
      if (byGroup && g >= 0) { if (!groupRgba.has(g)) groupRgba.set(g, rgba(groupColour(g))); c = groupRgba.get(g); }
      square(px, i, 2, selected.has(P.fid[i - P.first]) ? SELECTED : c);
    }
    ctx2d.putImageData(img, 0, 0);
    if (lasso && lasso.length > 1) {
      ctx2d.beginPath(); ctx2d.moveTo(lasso[0][0], lasso[0][1]);
      for (const [x, y] of lasso) ctx2d.lineTo(x, y);
      ctx2d.strokeStyle = "#263238"; ctx2d.stroke();
    }
  }
  function nearest(mx, my) {
    let best = -1, bd = 36;
    for (let gx = (mx >> 3) - 1; gx <= (mx >> 3) + 1; gx++) for (let gy = (my >> 3) - 1; gy <= (my >> 3) + 1; gy++) {
      for (const i of grid.get((gx << 12) | gy) || []) {
        const dd = (sx[i] - mx) ** 2 + (sy[i] - my) ** 2; if (dd < bd) { bd = dd; best = i; }
      }
    }
    return best;
  }
  function pos(e) { const r = canvas.getBoundingClientRect(); return [(e.clientX - r.left) * W / r.width, (e.clientY - r.top) * H / r.height]; }
  function inside(poly, x, y) {
    let c = false;
    for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
      const [xi, yi] = poly[i], [xj, yj] = poly[j];
      if ((yi > y) !== (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi) c = !c;
    }
    return c;
  }
  function showSelection() {
    const form = document.getElementById("lasso-form");
    form.hidden = selected.size === 0;
    document.getElementById("lasso-count").textContent = selected.size + " flagged items selected";
    draw();
  }
  let down = null;
  canvas.addEventListener("mousedown", (e) => { down = pos(e); lasso = [down]; });
  canvas.addEventListener("mousemove", (e) => {
    const [mx, my] = pos(e);
    if (down) { lasso.push([mx, my]); draw(); return; }
    const i = nearest(mx, my);
    if (i < 0) { hover.hidden = true; canvas.style.cursor = "default"; return; }
    canvas.style.cursor = "pointer";
    hoverImg.src = `/thumbs/${itemOf(i)}.jpg`; hoverText.textContent = `item ${itemOf(i)}`;
    hover.style.left = (e.offsetX + 14) + "px"; hover.style.top = (e.offsetY + 14) + "px"; hover.hidden = false;
  });
  canvas.addEventListener("mouseup", (e) => {
    const [mx, my] = pos(e), moved = down && Math.hypot(mx - down[0], my - down[1]) > 4;
    down = null;
    if (!moved) { lasso = null; const i = nearest(mx, my); if (i >= 0) window.location.href = `/items/${itemOf(i)}`; return; }
    selected = new Set();
    for (let i = P.first; i < P.n; i++) if (inside(lasso, sx[i], sy[i])) selected.add(itemOf(i));
    lasso = null; showSelection();
  });
  document.getElementById("colour").addEventListener("change", draw);
  for (const b of document.querySelectorAll(".select-group")) b.addEventListener("click", () => {
    const row = b.closest("tr"); selected = new Set(row.dataset.members.split(",").map(Number)); showSelection();
  });
  for (const b of document.querySelectorAll("#lasso-form button[data-status]")) b.addEventListener("click", async () => {
    const token = document.getElementById("token"), msg = document.getElementById("msg");
    const reviewer = document.getElementById("reviewer").value.trim();
    if (!token.value || !reviewer) { msg.textContent = "Enter your name and the review token first."; return; }
    sessionStorage.setItem("inspector.token", token.value);
    const r = await fetch("/api/latent/review", { method: "POST",
      headers: { "Content-Type": "application/json", Authorization: "Bearer " + token.value },
      body: JSON.stringify({ item_ids: [...selected], status: b.dataset.status, reviewer }) });
    msg.textContent = r.ok ? `${selected.size} items reviewed; each can be undone on its own page.` : `Refused (${r.status}).`;
    if (r.ok) load();
  });
  const tok = document.getElementById("token"); if (tok) tok.value = sessionStorage.getItem("inspector.token") || "";
  async function load() {
    const t0 = performance.now();
    const r = await fetch(`/api/latent/map.bin?version=${encodeURIComponent(canvas.dataset.version)}`);
    P = parse(await r.arrayBuffer()); layout(); draw();
    document.getElementById("map-count").textContent = `${P.n} points`;
    requestAnimationFrame(() => {  // the frame that shows the points: times from navigation and from the request
      canvas.dataset.loadMs = String(Math.round(performance.now() - t0));
      canvas.dataset.firstPaintMs = String(Math.round(performance.now()));
      canvas.dataset.points = String(P.n);
    });
  }
  load();
})();
