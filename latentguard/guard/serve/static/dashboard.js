// Latent Guard dashboard: fetches /dashboard/data and draws inline SVG charts. No external code.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const W = 480, H = 240, M = { left: 48, right: 12, top: 12, bottom: 32 };
  const COLORS = { p50: "#4a78c2", p90: "#e08a1e", p99: "#b03060", rate: "#d0312d" };
  const REFRESH_MS = 5000;

  function el(name, attrs, parent) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (parent) parent.appendChild(node);
    return node;
  }

  function text(parent, x, y, content, anchor) {
    const t = el("text", { x: x, y: y, "text-anchor": anchor || "middle" }, parent);
    t.textContent = content;
    return t;
  }

  function clear(svg) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
  }

  function empty(svg, message) {
    clear(svg);
    text(svg, W / 2, H / 2, message).setAttribute("class", "empty");
    svg.dataset.rendered = "empty";
  }

  function fmt(v, digits) {
    if (v === null || v === undefined || !isFinite(v)) return "-";
    return Number(v).toFixed(digits);
  }

  function clock(iso) {
    return iso.slice(11, 16);
  }

  function axes(svg, xTicks, yMax, yFormat) {
    const plotH = H - M.top - M.bottom, plotW = W - M.left - M.right;
    for (let i = 0; i <= 4; i++) {
      const y = M.top + plotH - (plotH * i) / 4;
      el("line", { x1: M.left, x2: W - M.right, y1: y, y2: y, class: "grid" }, svg);
      text(svg, M.left - 6, y + 4, yFormat((yMax * i) / 4), "end");
    }
    el("line", { x1: M.left, x2: M.left, y1: M.top, y2: H - M.bottom, class: "axis" }, svg);
    el("line", { x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom, class: "axis" }, svg);
    for (const [x, label] of xTicks) text(svg, M.left + x * plotW, H - M.bottom + 16, label);
  }

  function lineChart(svg, buckets, series, yMax, yFormat) {
    clear(svg);
    const plotH = H - M.top - M.bottom, plotW = W - M.left - M.right;
    const n = buckets.length;
    const xAt = (i) => (n === 1 ? 0.5 : i / (n - 1));
    const ticks = [];
    const step = Math.max(1, Math.ceil(n / 6));
    for (let i = 0; i < n; i += step) ticks.push([xAt(i), clock(buckets[i].start)]);
    axes(svg, ticks, yMax, yFormat);
    let drawn = 0;
    series.forEach(([name, pick], k) => {
      const pts = [];
      buckets.forEach((b, i) => {
        const v = pick(b);
        if (v === null || v === undefined) return;
        pts.push([M.left + xAt(i) * plotW, M.top + plotH - (plotH * Math.min(v, yMax)) / yMax]);
      });
      if (!pts.length) return;
      const color = COLORS[name] || "#333";
      if (pts.length > 1) {
        el("polyline", { points: pts.map((p) => p.join(",")).join(" "), fill: "none", stroke: color,
          "stroke-width": 2, class: "series series-" + name }, svg);
      }
      for (const [x, y] of pts) el("circle", { cx: x, cy: y, r: 3, fill: color, class: "point" }, svg);
      if (series.length > 1) {  // a legend row along the top edge
        text(svg, W - M.right - 4 - 34 * (series.length - 1 - k), M.top - 1, name, "end").setAttribute("fill", color);
      }
      drawn += pts.length;
    });
    svg.dataset.rendered = String(drawn);
  }

  function histogram(svg, hist, threshold) {
    clear(svg);
    const counts = hist.counts, edges = hist.edges;
    if (!counts.length) return empty(svg, "no decisions in this window");
    const plotH = H - M.top - M.bottom, plotW = W - M.left - M.right;
    const lo = edges[0], hi = edges[edges.length - 1];
    const maxCount = Math.max(1, ...counts);
    const xOf = (v) => M.left + ((v - lo) / (hi - lo)) * plotW;
    axes(svg, [[0, fmt(lo, 2)], [0.5, fmt((lo + hi) / 2, 2)], [1, fmt(hi, 2)]], maxCount, (v) => fmt(v, 0));
    let bars = 0;
    counts.forEach((c, i) => {
      if (!c) return;
      const h = (plotH * c) / maxCount;
      el("rect", { x: xOf(edges[i]) + 0.5, y: M.top + plotH - h, width: Math.max(1, xOf(edges[i + 1]) - xOf(edges[i]) - 1),
        height: h, class: "bar" }, svg).appendChild(document.createElementNS(SVG, "title")).textContent =
        fmt(edges[i], 3) + " to " + fmt(edges[i + 1], 3) + ": " + c;
      bars++;
    });
    if (threshold !== null && threshold !== undefined) {
      const x = xOf(threshold);
      el("line", { x1: x, x2: x, y1: M.top, y2: H - M.bottom, class: "threshold", id: "threshold-line" }, svg);
      text(svg, x + 4, M.top + 10, "threshold " + fmt(threshold, 3), "start");
    }
    svg.dataset.rendered = String(bars);
  }

  function summary(data) {
    const box = document.getElementById("summary");
    box.replaceChildren();
    const items = [
      ["decisions", data.decisions],
      ["flagged", data.flagged],
      ["flag rate", data.decisions ? fmt((100 * data.flagged) / data.decisions, 1) + "%" : "-"],
      ["threshold", fmt(data.threshold, 3)],
    ];
    for (const [label, value] of items) {
      const div = document.createElement("div");
      const b = document.createElement("b");
      b.textContent = String(value);
      div.append(b, label);
      box.appendChild(div);
    }
  }

  function table(rows) {
    const body = document.querySelector("#flagged tbody");
    body.replaceChildren();
    for (const r of rows) {
      const tr = document.createElement("tr");
      const cells = [r.ts.replace("T", " ").slice(0, 19), r.route, fmt(r.score, 3), r.action,
        r.prompt_sha256.slice(0, 16)];
      cells.forEach((c, i) => {
        const td = document.createElement("td");
        td.textContent = c;
        if (i === 4) { td.className = "hash"; td.title = r.prompt_sha256; }
        tr.appendChild(td);
      });
      const td = document.createElement("td");
      if (r.prompt === null) { td.textContent = "(text not stored)"; td.className = "hidden"; }
      else td.textContent = r.prompt;
      tr.appendChild(td);
      body.appendChild(tr);
    }
  }

  function draw(data) {
    summary(data);
    const flagSvg = document.getElementById("chart-flag-rate");
    const latSvg = document.getElementById("chart-latency");
    if (!data.buckets.length) {
      empty(flagSvg, "no decisions in this window");
      empty(latSvg, "no decisions in this window");
    } else {
      lineChart(flagSvg, data.buckets, [["rate", (b) => b.flag_rate]], 1, (v) => fmt(100 * v, 0) + "%");
      const top = Math.max(1, ...data.buckets.map((b) => b.latency_ms.p99 || 0)) * 1.1;
      lineChart(latSvg, data.buckets, [
        ["p50", (b) => b.latency_ms.p50], ["p90", (b) => b.latency_ms.p90], ["p99", (b) => b.latency_ms.p99],
      ], top, (v) => fmt(v, v < 10 ? 1 : 0));
    }
    histogram(document.getElementById("chart-scores"), data.histogram, data.threshold);
    table(data.recent_flagged);
  }

  async function refresh() {
    const status = document.getElementById("status");
    const [hours, bucket] = document.getElementById("window").value.split(":");
    try {
      const r = await fetch("/dashboard/data?hours=" + hours + "&bucket=" + bucket,
        { credentials: "same-origin", cache: "no-store" });
      if (!r.ok) throw new Error("HTTP " + r.status);
      const data = await r.json();
      draw(data);
      status.textContent = "updated " + data.now.slice(11, 19) + " UTC";
      status.className = "status";
      document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
    } catch (err) {
      status.textContent = "refresh failed: " + err.message;
      status.className = "status error";
    }
  }

  document.getElementById("window").addEventListener("change", refresh);
  refresh();
  setInterval(refresh, REFRESH_MS);
})();
