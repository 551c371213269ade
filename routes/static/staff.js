// Staff UI behaviour, no build step: local times, live updates, click-to-seek.
"use strict";

const POLL_MS = 3000;  // only where the browser has no EventSource, or the stream is refused
// Live events (routes/live.py) ask for a refresh; a burst of them asks once. The store writes
// a call's rows behind it (within 0.5 s), so a second refresh follows to pick up what the
// first came too early for.
const REFRESH_MS = 250;
const SETTLED_MS = 1250;
const LIVE_KINDS = ["call-started", "call-ended", "turn", "event", "reconnect", "qa", "reset"];

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

// Copy `from`'s attributes onto `to` (a row's class says whether its call is live).
function syncAttributes(to, from) {
  for (const { name } of Array.from(to.attributes)) {
    if (!from.hasAttribute(name)) to.removeAttribute(name);
  }
  for (const { name, value } of Array.from(from.attributes)) {
    if (to.getAttribute(name) !== value) to.setAttribute(name, value);
  }
}

// A live call's turn with its QA note control open (routes/templates/_qa_turn.html): its
// cell is left as it is, or a refresh would close the form and lose what is being typed.
function writing(cell) {
  return cell.querySelector(".qa-turn details[open]") !== null;
}

// Bring the rows in `el` up to date with a fragment of rows, touching only what changed: a
// row is matched by its data-sid (else its position) and only its cells whose HTML differs
// are replaced. Replacing the whole body (innerHTML) would drop keyboard focus to <body> and
// clear any text selection in it on every refresh; this way both survive unless the very
// cell they are in changed. Unchanged rows are never moved, only new ones inserted.
function updateRows(el, html) {
  const tpl = document.createElement("template");
  tpl.innerHTML = html;
  localiseTimes(tpl.content);  // compare like with like: the page's times are localised
  const key = (row, i) => row.dataset.sid || "#" + i;
  const old = new Map(Array.from(el.rows, (row, i) => [key(row, i), row]));
  const incoming = Array.from(tpl.content.children).filter((n) => n.tagName === "TR");
  const rows = incoming.map((fresh, i) => {
    const row = old.get(key(fresh, i));
    if (!row) return fresh;
    old.delete(key(fresh, i));
    if (row.cells.length !== fresh.cells.length) {
      row.replaceWith(fresh);
      return fresh;
    }
    syncAttributes(row, fresh);
    Array.from(fresh.cells).forEach((cell, j) => {
      if (writing(row.cells[j])) return;  // a QA note being written waits for its submit
      if (row.cells[j].outerHTML !== cell.outerHTML) row.cells[j].replaceWith(cell);
    });
    return row;
  });
  for (const gone of old.values()) gone.remove();
  rows.forEach((row, i) => {
    if (el.rows[i] !== row) el.insertBefore(row, el.rows[i] || null);
  });
}

// Fetch the element's fragment (data-poll) and apply it; false once there is nothing more to
// follow (the call ended: the page reloads to show its final status and recording).
async function refresh(el) {
  let resp;
  try {
    resp = await fetch(el.dataset.poll, { credentials: "same-origin" });
  } catch (e) {
    return true;  // network blip: the next event or poll tries again
  }
  if (resp.status === 401) {
    window.location = "/login?next=" + encodeURIComponent(location.pathname + location.search);
    return false;
  }
  if (!resp.ok) return true;
  updateRows(el, await resp.text());
  const total = resp.headers.get("x-total");
  const counter = document.getElementById("total");
  if (total !== null && counter) counter.textContent = total;
  if (resp.headers.get("x-live") === "0") {
    window.location.reload();
    return false;
  }
  return true;
}

// Does a live event concern this element? A call page's timeline (data-live-sid) follows its
// call only; the calls list follows calls starting and ending, and the turns of calls it shows.
function concerns(el, kind, data) {
  if (kind === "reset") return true;  // events were missed: refetch
  const sid = el.dataset.liveSid;
  if (sid) return data.sid === sid;
  if (kind === "call-started" || kind === "call-ended") return true;
  return el.querySelector(`tr[data-sid="${CSS.escape(data.sid || "")}"]`) !== null;
}

// One event stream per page, pushed by the server (no polling): each element with data-poll
// refreshes its fragment when an event concerns it. Without EventSource, or when the stream
// is refused for good, the old way: poll every POLL_MS while something is live.
function follow(els) {
  if (!els.length) return;
  if (!window.EventSource) return els.forEach(poll);
  const source = new EventSource("/live/events");
  for (const el of els) {
    const timers = [null, null];
    let following = true;
    const due = () => {
      [REFRESH_MS, SETTLED_MS].forEach((ms, i) => {
        clearTimeout(timers[i]);
        timers[i] = setTimeout(async () => { following = following && await refresh(el); }, ms);
      });
    };
    for (const kind of LIVE_KINDS) {
      source.addEventListener(kind, (e) => {
        if (following && concerns(el, kind, JSON.parse(e.data || "{}"))) due();
      });
    }
  }
  source.onopen = () => { document.body.dataset.live = "on"; };  // tests wait for it
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) els.forEach(poll);  // else it reconnects
  };
}

// The fallback: refresh every POLL_MS while the element lists something live
// (data-poll-while: the calls list's live calls and ones just transferred to a person,
// routes/transfer_view.py), or always.
function poll(el) {
  const whileSel = el.dataset.pollWhile;
  const wanted = () => !whileSel || el.querySelector(whileSel) !== null;
  let timer = null;
  async function tick() {
    if (!document.hidden && !(await refresh(el))) return;
    schedule();
  }
  function schedule() {
    clearTimeout(timer);
    if (wanted()) timer = setTimeout(tick, POLL_MS);
  }
  schedule();
}

// Mark `row` as the one playing (one at a time), for the eye and for screen readers.
function markCurrent(timeline, row) {
  for (const r of timeline.querySelectorAll("tr.current")) {
    if (r === row) continue;
    r.classList.remove("current");
    r.removeAttribute("aria-current");
  }
  if (row && !row.classList.contains("current")) {
    row.classList.add("current");
    row.setAttribute("aria-current", "true");
    return true;
  }
  return false;
}

// While the recording plays, the turn being heard is the current row, scrolled into view
// (rows are in call-time order: the last turn started at or before the playhead).
function followPlayback() {
  const player = document.getElementById("player");
  const timeline = document.getElementById("timeline");
  if (!player || !timeline) return;
  player.addEventListener("timeupdate", () => {
    const ms = player.currentTime * 1000;
    let row = null;
    for (const r of timeline.querySelectorAll("tr.turn[data-ms]")) {
      if (Number(r.dataset.ms) > ms) break;
      row = r;
    }
    if (row && markCurrent(timeline, row) && !player.paused) row.scrollIntoView({ block: "nearest" });
  });
}

function seekOnClick() {
  const player = document.getElementById("player");
  const timeline = document.getElementById("timeline");
  if (!timeline) return;
  function seek(row) {
    if (!player || row.dataset.ms === undefined) return;
    player.currentTime = Number(row.dataset.ms) / 1000;
    markCurrent(timeline, row);
    player.play().catch(() => {});  // autoplay may be refused; the seek stands
  }
  // A turn's QA note controls (typing, buttons) are not a request to play.
  const inQa = (ev) => ev.target.closest(".qa-turn") !== null;
  timeline.addEventListener("click", (ev) => {
    if (inQa(ev)) return;
    const row = ev.target.closest("tr[data-ms]");
    if (row) seek(row);
  });
  timeline.addEventListener("keydown", (ev) => {
    if (inQa(ev)) return;
    const row = ev.target.closest("tr[data-ms]");
    if (row && (ev.key === "Enter" || ev.key === " ")) {
      ev.preventDefault();
      seek(row);
    }
  });
}

// The recording's waveform (levels from the server, telephony/store/waveform.py): the caller
// above the centre line, what the caller heard below, a tick per turn start, a line at the
// playhead. A click plays from that point. The drawing is kept in an offscreen canvas so a
// playhead move repaints one image and one line.
const WAVE_COLOURS = { caller: "#6b4bb3", heard: "#0b5cad", playhead: "#b3261e", line: "#d9dee3" };

async function drawWaveform() {
  const canvas = document.getElementById("waveform");
  const player = document.getElementById("player");
  if (!canvas || !player) return;
  let levels;
  try {
    const resp = await fetch(canvas.dataset.src, { credentials: "same-origin" });
    if (!resp.ok) return;
    levels = await resp.json();
  } catch (e) {
    return;  // no waveform; the player and the timeline work without it
  }
  if (!levels.duration_ms) return;
  canvas.closest("figure").hidden = false;
  const turns = Array.from(document.querySelectorAll("#timeline tr.turn[data-ms]"), (r) => ({
    ms: Number(r.dataset.ms),
    caller: r.classList.contains("caller"),
  }));
  let base = null;

  function paintBase() {
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
    const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
    canvas.width = width;
    canvas.height = height;
    base = document.createElement("canvas");
    base.width = width;
    base.height = height;
    const g = base.getContext("2d");
    const mid = height / 2;
    const half = mid - 8 * ratio;  // room for the turn ticks at the edges
    const n = levels.left.length;
    for (let x = 0; x < width; x++) {
      const from = Math.floor((x * n) / width);
      const to = Math.max(from + 1, Math.floor(((x + 1) * n) / width));
      let up = 0;
      let down = 0;
      for (let i = from; i < to && i < n; i++) {
        up = Math.max(up, levels.left[i]);
        down = Math.max(down, levels.right[i]);
      }
      g.fillStyle = WAVE_COLOURS.caller;
      g.fillRect(x, mid - (up / 100) * half, 1, (up / 100) * half);
      g.fillStyle = WAVE_COLOURS.heard;
      g.fillRect(x, mid, 1, (down / 100) * half);
    }
    g.fillStyle = WAVE_COLOURS.line;
    g.fillRect(0, Math.floor(mid), width, Math.max(1, Math.round(ratio)));
    for (const t of turns) {
      const x = Math.round((t.ms / levels.duration_ms) * width);
      g.fillStyle = t.caller ? WAVE_COLOURS.caller : WAVE_COLOURS.heard;
      g.fillRect(x, t.caller ? 0 : height - 7 * ratio, 3 * ratio, 7 * ratio);
    }
    paint();
  }

  function paint() {
    const g = canvas.getContext("2d");
    g.clearRect(0, 0, canvas.width, canvas.height);
    g.drawImage(base, 0, 0);
    if (player.currentTime > 0) {
      const x = Math.round(((player.currentTime * 1000) / levels.duration_ms) * canvas.width);
      g.fillStyle = WAVE_COLOURS.playhead;
      g.fillRect(x, 0, Math.max(1, Math.round(window.devicePixelRatio || 1)), canvas.height);
    }
  }

  paintBase();
  player.addEventListener("timeupdate", paint);
  player.addEventListener("seeked", paint);
  let resizing = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(paintBase, 100);
  });
  canvas.addEventListener("click", (ev) => {
    const box = canvas.getBoundingClientRect();
    const at = Math.min(1, Math.max(0, (ev.clientX - box.left) / box.width));
    player.currentTime = (at * levels.duration_ms) / 1000;
    player.play().catch(() => {});  // autoplay may be refused; the seek stands
  });
}

// On a phone the list's filters start folded, unless one of them is in use.
function foldFilters() {
  const box = document.getElementById("more-filters");
  if (!box || !window.matchMedia("(max-width: 600px)").matches) return;
  const used = Array.from(box.querySelectorAll("input, select")).some((el) =>
    el.type === "checkbox" ? el.checked : el.value !== "",
  );
  if (!used) box.open = false;
}

document.addEventListener("DOMContentLoaded", () => {
  localiseTimes(document);
  fillTimeZone();
  foldFilters();
  seekOnClick();
  followPlayback();
  drawWaveform();
  follow(Array.from(document.querySelectorAll("[data-poll]")));
});
