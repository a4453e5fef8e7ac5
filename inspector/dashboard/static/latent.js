/* The latent map: one canvas, points from a compact binary payload (/api/latent/map.bin), drawn as
   1-2 px squares into an ImageData buffer (100k points in a few ms); a grid of cells finds the point under the
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

  function parse(buf) {
    const len = new DataView(buf).getUint32(0, true);
    const head = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, len)));
    const n = head.n; let o = 4 + len;
    const take = (T, size) => { const a = new T(buf, o, n); o += n * size; return a; };
    return { head, n, x: take(Float32Array, 4), y: take(Float32Array, 4), id: take(Int32Array, 4),
             group: take(Int32Array, 4), kind: new Uint8Array(buf, o, n) };
  }
  function groupColour(g) { const h = (g * 137.5) % 360; return hsl(h / 360, 0.65, 0.45); }
  function hsl(h, s, l) {
    const f = (n) => { const k = (n + h * 12) % 12; return l - s * Math.min(l, 1 - l) * Math.max(-1, Math.min(k - 3, 9 - k, 1)); };
    return [255 * f(0), 255 * f(8), 255 * f(4)];
  }
  function layout() {
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (let i = 0; i < P.n; i++) { x0 = Math.min(x0, P.x[i]); x1 = Math.max(x1, P.x[i]); y0 = Math.min(y0, P.y[i]); y1 = Math.max(y1, P.y[i]); }
    const pad = 12, s = Math.min((W - 2 * pad) / (x1 - x0 || 1), (H - 2 * pad) / (y1 - y0 || 1));
    sx = new Float32Array(P.n); sy = new Float32Array(P.n); grid = new Map();
    for (let i = 0; i < P.n; i++) {
      sx[i] = pad + (P.x[i] - x0) * s; sy[i] = H - pad - (P.y[i] - y0) * s;
      if (P.id[i] < 0) continue;  // only flagged items are hovered and clicked
      const key = ((sx[i] >> 3) << 12) | (sy[i] >> 3);
      if (!grid.has(key)) grid.set(key, []);
      grid.get(key).push(i);
    }
  }
  function draw() {
    const img = ctx2d.createImageData(W, H), d = img.data, byGroup = document.getElementById("colour").value === "group";
    for (let p = 0; p < d.length; p += 4) { d[p] = d[p + 1] = d[p + 2] = 255; d[p + 3] = 255; }
    for (let pass = 0; pass < 2; pass++) for (let i = 0; i < P.n; i++) {  // good first, flagged on top
      const flagged = P.kind[i] >= 2; if ((pass === 1) !== flagged) continue;
      const c = byGroup && P.group[i] >= 0 ? groupColour(P.group[i]) : COLOURS[P.kind[i]];
      const r = flagged ? 2 : 1, cx = sx[i] | 0, cy = sy[i] | 0, sel = selected.has(P.id[i]);
      for (let dy = -r; dy < r; dy++) for (let dx = -r; dx < r; dx++) {
        const X = cx + dx, Y = cy + dy; if (X < 0 || Y < 0 || X >= W || Y >= H) continue;
        const q = (Y * W + X) * 4; d[q] = sel ? 0 : c[0]; d[q + 1] = sel ? 0 : c[1]; d[q + 2] = sel ? 0 : c[2];
      }
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
    hoverImg.src = `/thumbs/${P.id[i]}.jpg`; hoverText.textContent = `item ${P.id[i]}`;
    hover.style.left = (e.offsetX + 14) + "px"; hover.style.top = (e.offsetY + 14) + "px"; hover.hidden = false;
  });
  canvas.addEventListener("mouseup", (e) => {
    const [mx, my] = pos(e), moved = down && Math.hypot(mx - down[0], my - down[1]) > 4;
    down = null;
    if (!moved) { lasso = null; const i = nearest(mx, my); if (i >= 0) window.location.href = `/items/${P.id[i]}`; return; }
    selected = new Set();
    for (let i = 0; i < P.n; i++) if (P.id[i] >= 0 && inside(lasso, sx[i], sy[i])) selected.add(P.id[i]);
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
    canvas.dataset.firstPaintMs = String(Math.round(performance.now() - t0));
    canvas.dataset.points = String(P.n);
  }
  load();
})();
