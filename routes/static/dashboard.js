// The dashboard's charts, drawn by the vendored uPlot from the figures the page's tables show
// (embedded as JSON). Without script the tables are the whole page; with it, clicking a bar
// opens the calls list filtered to that period and outcome.
"use strict";

(() => {
  const zone = document.querySelector("input[data-tzname]");
  const params = new URLSearchParams(location.search);
  if (zone && !params.has("tz")) {
    // First visit: the browser's own zone, once (the form then keeps whatever is chosen).
    const own = Intl.DateTimeFormat().resolvedOptions().timeZone;
    if (own && own !== zone.value) {
      params.set("tz", own);
      location.replace(`${location.pathname}?${params}`);
      return;
    }
  }
  const source = document.getElementById("dashboard-data");
  if (!source || !window.uPlot) return;
  const data = JSON.parse(source.textContent);
  if (!data.x.length) return;

  const COLORS = ["#2b6cb0", "#38a169", "#d69e2e", "#e53e3e", "#805ad5", "#718096", "#dd6b20", "#319795", "#b83280"];
  const width = () => Math.max(280, Math.min(document.querySelector("main").clientWidth - 16, 1100));
  // x values are local wall times written as epoch seconds: format them as UTC to read them back.
  const tzDate = (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC");
  const step = data.granularity === "hour" ? 3600 : 86400;
  const xScale = { time: true, range: (u, min, max) => [min - step / 2, max + step / 2] };

  // Stacked bars: each outcome's series is the running total up to it, drawn from the top of
  // the stack down so each lower layer paints over the one above.
  const bars = uPlot.paths.bars({ size: [0.8, 80] });
  let running = data.x.map(() => 0);
  const layers = data.outcomes.map((o, i) => {
    running = running.map((v, j) => v + o.calls[j]);
    return { outcome: o, top: running.slice(), color: COLORS[i % COLORS.length] };
  }).reverse();
  const callsChart = new uPlot(
    {
      width: width(),
      height: 260,
      tzDate,
      scales: { x: xScale, y: { range: (u, min, max) => [0, Math.max(1, max)] } },
      series: [
        {},
        ...layers.map((l) => ({
          label: l.outcome.label,
          fill: l.color,
          stroke: l.color,
          paths: bars,
          points: { show: false },
          value: (u, v, s, idx) => (idx == null ? "–" : String(l.outcome.calls[idx])),
        })),
      ],
      axes: [{}, { label: "calls" }],
    },
    [data.x, ...layers.map((l) => l.top)],
    document.getElementById("calls-chart"),
  );
  callsChart.over.addEventListener("click", () => {
    const idx = callsChart.cursor.idx;
    if (idx == null) return;
    const y = callsChart.posToVal(callsChart.cursor.top, "y");
    // The lowest layer whose top is above the click: the outcome clicked; else the whole period.
    const hit = [...layers].reverse().find((l) => y <= l.top[idx] && l.outcome.calls[idx] > 0);
    location.href = hit ? hit.outcome.links[idx] : data.links[idx];
  });
  callsChart.over.style.cursor = "pointer";

  new uPlot(
    {
      width: width(),
      height: 220,
      tzDate,
      scales: { x: xScale },
      series: [
        {},
        { label: "p50", stroke: COLORS[0], width: 2, spanGaps: false },
        { label: "p95", stroke: COLORS[3], width: 2, spanGaps: false },
      ],
      axes: [{}, { label: "ms" }],
    },
    [data.x, data.p50, data.p95],
    document.getElementById("latency-chart"),
  );
})();
