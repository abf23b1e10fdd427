// Leash console: charts in SVG, drawn here (no library, nothing loaded
// from elsewhere). Loaded before app.js, whose helpers (el) they use when
// called. One bucket per bar or point; hovering shows its numbers
// (<title>); clicking a bucket calls `onPick(bucket)`.
"use strict";

const PALETTE = ["#0969da", "#1a7f37", "#bf8700", "#cf222e", "#8250df", "#1b7c83", "#bc4c00", "#6e7781"];
function svg(tag, attrs = {}, ...children) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return e;
}

// What every chart shares: the frame (axis, scale labels), the parts'
// colours, one clickable group per bucket, and the legend.
function chartFrame(node, series, max, format, onPick) {
  const W = 720, H = 200, L = 56, B = 24, T = 8;
  const parts = [...new Set(series.buckets.flatMap((b) => Object.keys(b.parts)))].sort();
  const n = series.buckets.length;
  const f = {
    parts, n, slot: (W - L) / n, L, H, B, T,
    color: (p) => PALETTE[parts.indexOf(p) % PALETTE.length],
    y: (v) => T + (H - T - B) * (1 - v / (max || 1)),
    height: (v) => (H - T - B) * v / (max || 1),
    chart: svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${series.metric} ${series.range}` },
      svg("line", { x1: L, y1: H - B, x2: W, y2: H - B, stroke: "#8c959f" }),
      svg("text", { x: L - 6, y: T + 10, "text-anchor": "end", "font-size": 11 }, format(max || 1)),
      svg("text", { x: L - 6, y: H - B, "text-anchor": "end", "font-size": 11 }, "0")),
  };
  // The group of bucket `i`, its hover text `title`, its click.
  f.bucket = (b, i, title) => {
    const g = svg("g", { class: "bar", "data-start": b.start, "data-total": b.total },
      svg("rect", { class: "hit", x: L + i * f.slot, y: T, width: f.slot, height: H - T - B, fill: "transparent" },
        svg("title", {}, title)));
    g.addEventListener("click", () => {
      node.querySelectorAll(".bar.selected").forEach((s) => s.classList.remove("selected"));
      g.classList.add("selected");
      if (onPick) onPick(b);
    });
    return g;
  };
  f.label = (g, b, i, x) => {
    if (i % Math.ceil(n / 8) === 0) {
      g.append(svg("text", { x, y: H - 6, "text-anchor": "middle", "font-size": 10 }, b.start.slice(5).replace("T", " ")));
    }
  };
  f.done = () => {
    const legend = el("div", { class: "legend" }, ...parts.map((p) => {
      const swatch = el("i", {});
      swatch.style.background = f.color(p);
      return el("span", {}, swatch, p);
    }));
    node.replaceChildren(f.chart, legend);
  };
  return f;
}

// Stacked bars: one segment per part.
function stackedChart(node, series, format, onPick) {
  const f = chartFrame(node, series, Math.max(...series.buckets.map((b) => b.total), 0), format, onPick);
  const bw = Math.max(2, f.slot * 0.7);
  series.buckets.forEach((b, i) => {
    const x = f.L + i * f.slot + (f.slot - bw) / 2;
    const g = f.bucket(b, i, `${b.start}: ${format(b.total)}`);
    let top = f.H - f.B;
    for (const p of f.parts) {
      const v = b.parts[p] || 0;
      if (!v) continue;
      const h = f.height(v);
      top -= h;
      g.append(svg("rect", { class: "seg", x, y: top, width: bw, height: Math.max(h, 0.5), fill: f.color(p), "data-part": p, "data-value": v },
        svg("title", {}, `${b.start} — ${p}: ${format(v)}`)));
    }
    f.label(g, b, i, x + bw / 2);
    f.chart.append(g);
  });
  f.done();
}

// Lines (the added time's P50 and P99): a point per bucket with data,
// gaps where a bucket had no requests.
function lineChart(node, series, format, onPick) {
  const f = chartFrame(node, series, Math.max(...series.buckets.flatMap((b) => Object.values(b.parts)), 0), format, onPick);
  const cx = (i) => f.L + (i + 0.5) * f.slot;
  for (const p of f.parts) {
    let d = "", pen = "M";
    series.buckets.forEach((b, i) => {
      const v = b.parts[p];
      if (v === undefined) { pen = "M"; return; }
      d += `${pen}${cx(i).toFixed(1)},${f.y(v).toFixed(1)} `;
      pen = "L";
    });
    f.chart.append(svg("path", { d, fill: "none", stroke: f.color(p), "stroke-width": 2, "data-part": p }));
  }
  series.buckets.forEach((b, i) => {
    const values = f.parts.map((p) => `${p} ${b.parts[p] === undefined ? "–" : format(b.parts[p])}`).join(", ");
    const g = f.bucket(b, i, `${b.start}: ${values || "no requests"}`);
    for (const p of f.parts) {
      if (b.parts[p] === undefined) continue;
      g.append(svg("circle", { class: "pt", cx: cx(i), cy: f.y(b.parts[p]), r: 2.5, fill: f.color(p), "data-part": p, "data-value": b.parts[p] },
        svg("title", {}, `${b.start} — ${p}: ${format(b.parts[p])}`)));
    }
    f.label(g, b, i, cx(i));
    f.chart.append(g);
  });
  f.done();
}
