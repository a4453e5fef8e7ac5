/* inspector dashboard: live list updates, review actions and keyboard shortcuts. No dependencies.
   The review token lives in this tab's sessionStorage and travels only in a request header. */
"use strict";

const POLL_MS = 5000;

function pollNewItems() {
  const live = document.getElementById("live");
  if (!live) return;
  let after = Number(live.dataset.after || 0);
  const qs = live.dataset.qs || "";
  async function tick() {
    if (document.hidden) return;
    try {
      const r = await fetch(`/fragments/new?after_id=${after}${qs ? "&" + qs : ""}`, { headers: { Accept: "text/html" } });
      if (!r.ok) throw new Error(r.status);
      const html = (await r.text()).trim();
      live.classList.remove("paused");
      live.textContent = "● live";
      if (!html) return;
      let grid = document.getElementById("grid");
      if (!grid) {
        grid = document.createElement("div");
        grid.id = "grid"; grid.className = "grid";
        const empty = document.querySelector("main > .empty");
        (empty || live.parentElement).after(grid);
        if (empty) empty.remove();
      }
      const tpl = document.createElement("template");
      tpl.innerHTML = html;
      const cards = [...tpl.content.querySelectorAll(".card")];
      cards.forEach((c) => { after = Math.max(after, Number(c.dataset.id)); });
      grid.prepend(...cards);
      const count = document.querySelector("#count strong");
      if (count && /^[\d,]+$/.test(count.textContent)) {
        const n = Number(count.textContent.replace(/,/g, "")) + cards.length;
        count.textContent = n.toLocaleString("en-US");
      }
    } catch (e) {
      live.classList.add("paused");
      live.textContent = "○ offline, retrying";
    }
  }
  setInterval(tick, POLL_MS);
}

function stamp(d) {
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}`;
}

function reviewPage() {
  const box = document.getElementById("review");
  if (!box) return;
  const form = document.getElementById("review-form");
  const reviewer = document.getElementById("reviewer");
  const token = document.getElementById("token");
  const note = document.getElementById("note");
  const msg = document.getElementById("msg");
  const advance = document.getElementById("advance");
  if (form) {
    reviewer.value = localStorage.getItem("inspector.reviewer") || "";
    token.value = sessionStorage.getItem("inspector.token") || "";
    advance.checked = localStorage.getItem("inspector.advance") === "1";
    advance.addEventListener("change", () => localStorage.setItem("inspector.advance", advance.checked ? "1" : "0"));
    form.querySelectorAll("button[data-status]").forEach((b) => b.addEventListener("click", () => send(b.dataset.status)));
  }

  function say(text, ok) { msg.textContent = text; msg.className = "msg " + (ok ? "ok" : "err"); }

  async function send(status) {
    if (!form) return;
    if (!reviewer.value.trim()) { say("Enter your name as reviewer first.", false); reviewer.focus(); return; }
    if (!token.value) { say("Enter the review token first.", false); token.focus(); return; }
    localStorage.setItem("inspector.reviewer", reviewer.value.trim());
    sessionStorage.setItem("inspector.token", token.value);
    const r = await fetch(`/api/items/${box.dataset.id}/review`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: "Bearer " + token.value },
      body: JSON.stringify({ status, reviewer: reviewer.value.trim(), note: note.value.trim() || null }),
    }).catch(() => null);
    if (!r) { say("The dashboard did not answer; try again.", false); return; }
    const body = await r.json().catch(() => ({}));
    if (!r.ok) {
      if (r.status === 401) sessionStorage.removeItem("inspector.token");
      say(r.status === 401 ? "Token rejected." : (body.detail && body.detail[0] && body.detail[0].msg) || body.detail || `Error ${r.status}`, false);
      return;
    }
    show(body);
    say("Saved.", true);
    const older = document.getElementById("older");
    if (advance.checked && older && status !== "pending") setTimeout(() => { location.href = older.href; }, 400);
  }

  function show(item) {
    const labels = { pending: "Pending", confirmed: "Defect confirmed", false_alarm: "False alarm" };
    const pill = document.getElementById("status");
    pill.textContent = labels[item.review_status];
    pill.className = "pill st-" + item.review_status;
    pill.dataset.status = item.review_status;
    document.getElementById("who").textContent = item.reviewed_by && item.reviewed_at
      ? `by ${item.reviewed_by} · ${stamp(new Date(item.reviewed_at))}` : "";
    document.getElementById("note-text").textContent = item.review_note || "";
    document.getElementById("retrain").hidden = item.review_status !== "false_alarm";
  }

  document.addEventListener("keydown", (e) => {
    const typing = /^(INPUT|TEXTAREA|SELECT)$/.test(e.target.tagName);
    if (e.key === "Escape") { if (typing) e.target.blur(); else location.href = "/"; return; }
    if (typing || e.ctrlKey || e.metaKey || e.altKey) return;
    const go = (id) => { const a = document.getElementById(id); if (a) location.href = a.href; };
    const k = e.key.toLowerCase();
    if (k === "d") send("confirmed");
    else if (k === "f") send("false_alarm");
    else if (k === "u") send("pending");
    else if (k === "n" && note) { e.preventDefault(); note.focus(); }
    else if (k === "j" || e.key === "ArrowRight") go("older");
    else if (k === "k" || e.key === "ArrowLeft") go("newer");
    else if (k === "z") document.getElementById("images").classList.toggle("natural");
  });
  document.getElementById("zoom").addEventListener("click", () => document.getElementById("images").classList.toggle("natural"));
}

document.addEventListener("DOMContentLoaded", () => { pollNewItems(); reviewPage(); });
