// Listen-in (routes/listen.py): the live call's μ-law frames over a WebSocket, decoded here and
// played with the Web Audio API, both sides mixed, about a second behind (a little buffered
// so a late batch does not click; more than a second behind and the backlog is skipped).
"use strict";

(() => {
  const RATE = 8000;
  const LEAD_S = 0.3;  // how far ahead of "now" a side's audio is scheduled once it starts
  const MAX_BEHIND_S = 1.0;

  // G.711 μ-law to linear, as a table of the 256 byte values.
  const ULAW = new Float32Array(256);
  for (let i = 0; i < 256; i++) {
    const u = ~i & 0xff;
    const exponent = (u >> 4) & 0x07;
    const magnitude = ((u & 0x0f) << 3) + 0x84;
    const sample = (magnitude << exponent) - 0x84;
    ULAW[i] = ((u & 0x80) ? -sample : sample) / 32768;
  }

  document.addEventListener("DOMContentLoaded", () => {
    const button = document.getElementById("listen");
    const status = document.getElementById("listen-status");
    if (!button) return;
    let socket = null;
    let ctx = null;
    let heard = 0;  // bytes received, both sides
    const next = [0, 0];  // per side: when its next audio starts (AudioContext time)

    // A message holds frames, each as side (1 byte), length (2 bytes) and μ-law bytes.
    function frames(data, each) {
      for (let at = 0; at + 3 <= data.length;) {
        const side = data[at];
        const n = (data[at + 1] << 8) | data[at + 2];
        each(side, data.subarray(at + 3, at + 3 + n));
        at += 3 + n;
      }
    }

    function play(side, ulaw) {
      const n = ulaw.length;
      if (n <= 0 || side > 1) return;
      const buffer = ctx.createBuffer(1, n, RATE);
      const samples = buffer.getChannelData(0);
      for (let i = 0; i < n; i++) samples[i] = ULAW[ulaw[i]];
      const now = ctx.currentTime;
      let at = Math.max(next[side], now + LEAD_S);
      if (at - now > MAX_BEHIND_S) at = now + LEAD_S;  // fell behind: drop the backlog
      const source = ctx.createBufferSource();
      source.buffer = buffer;
      source.connect(ctx.destination);
      source.start(at);
      next[side] = at + n / RATE;
    }

    function stop(why) {
      if (socket) socket.close();
      socket = null;
      if (ctx) ctx.close();
      ctx = null;
      button.textContent = "Listen in";
      button.setAttribute("aria-pressed", "false");
      status.textContent = why;
    }

    button.addEventListener("click", () => {
      if (socket) return stop("Stopped.");
      ctx = new AudioContext({ sampleRate: 48000 });
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      socket = new WebSocket(`${scheme}//${location.host}${button.dataset.url}`);
      socket.binaryType = "arraybuffer";
      heard = 0;
      next[0] = next[1] = 0;
      button.textContent = "Stop listening";
      button.setAttribute("aria-pressed", "true");
      status.textContent = "Connecting…";
      socket.onopen = () => { status.textContent = "Listening (both sides)."; };
      socket.onmessage = (e) => {
        frames(new Uint8Array(e.data), (side, ulaw) => {
          heard += ulaw.length;
          if (ctx) play(side, ulaw);
        });
        button.dataset.heard = String(heard);  // how much audio arrived (bytes: 8 per ms)
      };
      socket.onclose = (e) => {
        if (!socket) return;
        const why = { 4401: "Sign in again.", 4403: "Supervisors only.", 4404: "The call is not live.",
          4429: "Too many people are listening to this call.", 1000: "The call ended." }[e.code];
        stop(why || "Disconnected.");
      };
    });
  });
})();
