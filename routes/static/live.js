// The live wallboard (/live): the server renders the board; live events (routes/live.py) keep
// each call's card current; calls starting and ending (and missed events) refetch the board.
"use strict";

// Its own scope: staff.js, on every page, has names of its own.
(() => {
  const REFETCH_MS = 250;
  const SETTLED_MS = 1250;  // the store writes rows behind the call (within 0.5 s)
  const SILENCE_S = 20;  // no word from either side this long: an alert on the card
  const ALERT_S = 10;  // a reconnect alert stays this long
  const STATES = {
    "caller": "Caller speaking",
    "staff": "Staff speaking",
    "bot": "Bot speaking",
    "thinking": "Thinking",
    "listening": "Listening",
    "transferring": "Transferring to a person",
  };

  const board = document.getElementById("board");
  const lastHeard = new Map();  // sid -> Date.now() of its last event
  const timers = [null, null];

  function tz() {
    return String(new Date().getTimezoneOffset());
  }

  async function refetch() {
    let resp;
    try {
      resp = await fetch(`${board.dataset.board}?tz=${tz()}`, { credentials: "same-origin" });
    } catch (e) {
      return;
    }
    if (resp.status === 401) {
      window.location = "/login?next=/live";
      return;
    }
    if (!resp.ok) return;
    const html = await resp.text();
    const fresh = document.createElement("div");
    fresh.innerHTML = html;
    // Keep what events told each card since the board was written (its state, interim text).
    for (const card of fresh.querySelectorAll("li.live-call")) {
      const old = board.querySelector(`li.live-call[data-sid="${CSS.escape(card.dataset.sid)}"]`);
      if (!old) continue;
      for (const sel of [".state", ".interim", ".alerts"]) {
        const was = old.querySelector(sel);
        const now = card.querySelector(sel);
        if (was && now && (sel !== ".state" || !now.dataset.state)) now.replaceWith(was);
      }
    }
    board.replaceChildren(...fresh.childNodes);
    tick();
  }

  function refetchSoon() {
    [REFETCH_MS, SETTLED_MS].forEach((ms, i) => {
      clearTimeout(timers[i]);
      timers[i] = setTimeout(refetch, ms);
    });
  }

  function card(sid) {
    return board.querySelector(`li.live-call[data-sid="${CSS.escape(sid || "")}"]`);
  }

  function setState(el, state) {
    if (el.querySelector(".state").dataset.state === "transferring") return;  // stays so
    const p = el.querySelector(".state");
    p.dataset.state = state;
    p.textContent = STATES[state] || state;
  }

  function alert(el, cls, text, forSeconds) {
    const box = el.querySelector(".alerts");
    let badge = box.querySelector(`.${cls}`);
    if (!badge) {
      badge = document.createElement("span");
      badge.className = `badge failure ${cls}`;
      box.append(badge);
    }
    badge.textContent = text;
    if (forSeconds) setTimeout(() => badge.remove(), forSeconds * 1000);
  }

  function addTurn(el, role, text) {
    const list = el.querySelector(".last-turns");
    const li = document.createElement("li");
    li.className = role;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = `${{ caller: "Caller", staff: "Staff" }[role] || "Bot"}:`;
    li.append(who, ` ${text}`);
    list.append(li);
    while (list.children.length > 2) list.firstElementChild.remove();
  }

  const handlers = {
    "interim": (el, d) => {
      setState(el, d.role);
      const p = el.querySelector(".interim");
      p.textContent = d.text ? `“${d.text}…”` : "";
      p.hidden = !d.text;
    },
    "opened": (el, d) => {
      if (d.role === "bot") setState(el, "bot");
    },
    "turn": (el, d) => {
      el.querySelector(".interim").hidden = true;
      addTurn(el, d.role, d.text || "");
      if (d.role === "bot") {
        setState(el, "listening");
        if (d.latency_ms != null) {
          el.querySelector(".latency").textContent = `Last reply after ${d.latency_ms} ms`;
        }
      } else if (!d.backchannel) {
        setState(el, d.role === "caller" ? "thinking" : "listening");
      }
    },
    "event": (el, d) => {
      if (d.kind === "transfer" || d.kind === "handover") {
        setState(el, "transferring");
        el.classList.add("transferring");
        totals();
      } else if (d.kind === "upstream-failed") {
        alert(el, "failover", "failed over", 0);
      } else if (d.kind === "nudge") {
        alert(el, "nudged", "caller silent: reprompted", ALERT_S);
      }
    },
    "reconnect": (el) => alert(el, "reconnecting", "Deepgram reconnecting", ALERT_S),
  };

  function totals() {
    const count = document.getElementById("live-count");
    const person = document.getElementById("with-person");
    if (count) count.textContent = board.querySelectorAll("li.live-call").length;
    if (person) person.textContent = board.querySelectorAll("li.live-call.transferring").length;
  }

  function follow() {
    const status = document.getElementById("stream-status");
    const source = new EventSource("/live/events");
    for (const kind of ["call-started", "call-ended", "reset"]) {
      source.addEventListener(kind, refetchSoon);
    }
    for (const [kind, handle] of Object.entries(handlers)) {
      source.addEventListener(kind, (e) => {
        const d = JSON.parse(e.data || "{}");
        const el = card(d.sid);
        if (!el) return refetchSoon();  // a call this board has not seen yet
        lastHeard.set(d.sid, Date.now());
        el.querySelector(".alerts .silent")?.remove();
        handle(el, d);
      });
    }
    source.onopen = () => {
      status.textContent = "";
      document.body.dataset.live = "on";  // the stream is open (tests wait for it)
    };
    source.onerror = () => {
      status.textContent = source.readyState === EventSource.CLOSED
        ? "Live updates stopped: reload the page."
        : "Reconnecting to live updates…";
    };
  }

  // Once a second: each card's duration, and a long-silence alert.
  function tick() {
    const now = Date.now();
    for (const el of board.querySelectorAll("li.live-call")) {
      const started = Number(el.dataset.started) * 1000;
      const s = Math.max(0, Math.floor((now - started) / 1000));
      el.querySelector(".elapsed").textContent =
        `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
      const heard = lastHeard.get(el.dataset.sid) || started;
      if (now - heard > SILENCE_S * 1000 && !el.querySelector(".alerts .silent")) {
        alert(el, "silent", `silent ${SILENCE_S} s`, 0);
      }
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (new URLSearchParams(location.search).get("wall")) document.body.classList.add("wall");
    refetch();  // today's outcomes in this browser's time zone
    follow();
    setInterval(tick, 1000);
  });
})();
