// Staff UI behaviour, no build step: local times, live polling, click-to-seek.
"use strict";

const POLL_MS = 3000;

function localiseTimes(root) {
  for (const el of root.querySelectorAll("time[datetime]")) {
    const d = new Date(el.getAttribute("datetime"));
    if (!isNaN(d)) el.textContent = d.toLocaleString();
  }
}

// Date filters are days in the viewer's time zone: tell the server which one.
function fillTimeZone() {
  for (const el of document.querySelectorAll("input[data-tz]")) {
    el.value = String(new Date().getTimezoneOffset());
  }
}

// Replace the element's rows with the fragment at data-poll, while anything is live.
function poll(el) {
  let timer = null;
  async function tick() {
    if (document.hidden) return schedule();
    let resp;
    try {
      resp = await fetch(el.dataset.poll, { credentials: "same-origin" });
    } catch (e) {
      return schedule();  // network blip: try again later
    }
    if (resp.status === 401) {
      window.location = "/login?next=" + encodeURIComponent(location.pathname + location.search);
      return;
    }
    if (!resp.ok) return schedule();
    el.innerHTML = await resp.text();
    localiseTimes(el);
    const total = resp.headers.get("x-total");
    const counter = document.getElementById("total");
    if (total !== null && counter) counter.textContent = total;
    if (resp.headers.get("x-live") === "0") {
      window.location.reload();  // the call just ended: show its final status and recording
      return;
    }
    schedule();
  }
  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(tick, POLL_MS);
  }
  schedule();
}

function seekOnClick() {
  const player = document.getElementById("player");
  const timeline = document.getElementById("timeline");
  if (!timeline) return;
  function seek(row) {
    if (!player || row.dataset.ms === undefined) return;
    player.currentTime = Number(row.dataset.ms) / 1000;
    for (const r of timeline.querySelectorAll("tr.current")) r.classList.remove("current");
    row.classList.add("current");
    player.play().catch(() => {});  // autoplay may be refused; the seek stands
  }
  timeline.addEventListener("click", (ev) => {
    const row = ev.target.closest("tr[data-ms]");
    if (row) seek(row);
  });
  timeline.addEventListener("keydown", (ev) => {
    const row = ev.target.closest("tr[data-ms]");
    if (row && (ev.key === "Enter" || ev.key === " ")) {
      ev.preventDefault();
      seek(row);
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  localiseTimes(document);
  fillTimeZone();
  seekOnClick();
  for (const el of document.querySelectorAll("[data-poll]")) poll(el);
});
