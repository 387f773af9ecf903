// Charts drawn as SVG, no library: a scatter of the search's candidates and a line chart.
import {svg} from "./dom.js";

const W = 640;
const H = 320;
const PAD = {left: 58, right: 16, top: 14, bottom: 44};

function scale(lo, hi, a, b, log) {
  const f = log ? Math.log10 : (v) => v;
  const l = f(lo);
  const span = f(hi) - l || 1;
  return (v) => a + ((f(v) - l) / span) * (b - a);
}

function ticks(lo, hi, log) {
  if (log) {
    const out = [];
    for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e += 1) {
      const v = 10 ** e;
      if (v >= lo / 1.0001 && v <= hi * 1.0001) out.push(v);
    }
    return out.length >= 2 ? out : [lo, hi];
  }
  const raw = (hi - lo) / 5;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function label(v, log, percent) {
  if (percent) return `${Number((100 * v).toPrecision(6))}%`;
  if (log) return v >= 1000 ? `${v / 1000}k` : String(v < 0.01 ? v.toPrecision(1) : v);
  return String(Number(v.toPrecision(6)));
}

/** A rate's axis: from a little under its lowest value (a round figure) to 1. */
function rateRange(values) {
  const lo = Math.min(...values);
  const span = Math.max(0.02, 1 - lo);
  const step = span <= 0.05 ? 0.01 : span <= 0.2 ? 0.05 : 0.1;
  return [Math.max(0, Math.floor((lo - span * 0.1) / step) * step), 1];
}

function frame(xr, yr, xs, ys, xlab, ylab, title, percent = false) {
  const g = svg("g", {class: "axes"});
  for (const t of ticks(xr[0], xr[1], xs.log)) {
    const x = xs(t);
    g.append(svg("line", {x1: x, x2: x, y1: PAD.top, y2: H - PAD.bottom, class: "grid"}),
      svg("text", {x, y: H - PAD.bottom + 16, "text-anchor": "middle", class: "tick", text: label(t, xs.log)}));
  }
  for (const t of ticks(yr[0], yr[1], ys.log)) {
    const y = ys(t);
    g.append(svg("line", {x1: PAD.left, x2: W - PAD.right, y1: y, y2: y, class: "grid"}),
      svg("text", {x: PAD.left - 6, y: y + 4, "text-anchor": "end", class: "tick", text: label(t, ys.log, percent)}));
  }
  g.append(svg("text", {x: (PAD.left + W - PAD.right) / 2, y: H - 6, "text-anchor": "middle", class: "axis-label", text: xlab}),
    svg("text", {x: 14, y: (PAD.top + H - PAD.bottom) / 2, "text-anchor": "middle", class: "axis-label",
      transform: `rotate(-90 14 ${(PAD.top + H - PAD.bottom) / 2})`, text: ylab}));
  const root = svg("svg", {viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": title});
  root.append(svg("title", {text: title}), g);
  return root;
}

function range(values, pad, floor) {
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (!Number.isFinite(lo)) return [0, 1];
  if (hi - lo < 1e-9) { lo -= pad; hi += pad; }
  const m = (hi - lo) * 0.05;
  return [floor !== undefined ? Math.max(floor, lo - m) : lo - m, hi + m];
}

/** Generation k of n -> a colour from early (blue) to late (orange). */
export function generationColour(k, n) {
  const t = n > 0 ? Math.min(1, k / n) : 0;
  return `hsl(${Math.round(220 - 190 * t)}, 70%, ${Math.round(45 + 5 * t)}%)`;
}

/**
 * Every candidate of a search: x parameters (log), y score; colour by generation; the Pareto front
 * ringed; the pick drawn large. points: [{params, score, generation, pareto, chosen, title}]
 */
export function candidatesChart(points, generations) {
  const xs0 = points.map((p) => Math.max(1, p.params));
  const xr = [Math.min(...xs0) / 1.3, Math.max(...xs0) * 1.3];
  const yr = rateRange(points.map((p) => p.score));
  const xs = scale(xr[0], xr[1], PAD.left, W - PAD.right, true);
  xs.log = true;
  const ys = scale(yr[0], yr[1], H - PAD.bottom, PAD.top, false);
  const root = frame(xr, yr, xs, ys, "parameters (log scale)", "validation score", "every candidate network");
  const dots = svg("g", {class: "points"});
  const front = points.filter((p) => p.pareto).sort((a, b) => a.params - b.params);
  if (front.length > 1) {
    dots.append(svg("polyline", {class: "front-line",
      points: front.map((p) => `${xs(Math.max(1, p.params)).toFixed(1)},${ys(p.score).toFixed(1)}`).join(" ")}));
  }
  for (const p of points) {
    const cx = xs(Math.max(1, p.params)).toFixed(1);
    const cy = ys(p.score).toFixed(1);
    const gen = p.generation === null || p.generation === undefined ? "?" : p.generation;
    const dot = svg("circle", {cx, cy, r: p.chosen ? 7 : 4, class: `candidate${p.pareto ? " pareto" : ""}${p.chosen ? " chosen" : ""}`,
      fill: p.generation === null || p.generation === undefined ? "#888" : generationColour(p.generation, generations),
      "data-generation": gen});
    dot.append(svg("title", {text: p.title}));
    dots.append(dot);
  }
  root.append(dots);
  return root;
}

/** Lines over x: series [{name, class, points: [[x, y], ...]}]; marks [{x, y, title}] drawn as rings. */
export function lineChart(series, {xlabel, ylabel, title, xlog = false, rates = false, marks = []}) {
  const all = series.flatMap((s) => s.points);
  if (!all.length) return null;
  const xr = xlog ? [Math.min(...all.map((p) => p[0])) / 1.2, Math.max(...all.map((p) => p[0])) * 1.2]
    : range(all.map((p) => p[0]), 0.5);
  const yr = rates ? rateRange(all.map((p) => p[1])) : range(all.map((p) => p[1]), 0.01);
  const xs = scale(xr[0], xr[1], PAD.left, W - PAD.right, xlog);
  xs.log = xlog;
  const ys = scale(yr[0], yr[1], H - PAD.bottom, PAD.top, false);
  const root = frame(xr, yr, xs, ys, xlabel, ylabel, title, rates);
  series.forEach((s, i) => {
    const pts = s.points.map(([x, y]) => `${xs(x).toFixed(1)},${ys(y).toFixed(1)}`).join(" ");
    root.append(svg("polyline", {points: pts, class: `series series-${i} ${s.class || ""}`}));
    for (const [x, y] of s.points) root.append(svg("circle", {cx: xs(x).toFixed(1), cy: ys(y).toFixed(1), r: 3, class: `series-${i} dot`}));
  });
  for (const m of marks) {
    const c = svg("circle", {cx: xs(m.x).toFixed(1), cy: ys(m.y).toFixed(1), r: 8, class: "mark"});
    c.append(svg("title", {text: m.title}));
    root.append(c);
  }
  const legend = svg("g", {class: "legend"});
  series.forEach((s, i) => {
    const y = PAD.top + 6 + 16 * i;
    legend.append(svg("line", {x1: W - PAD.right - 150, x2: W - PAD.right - 130, y1: y, y2: y, class: `series series-${i}`}),
      svg("text", {x: W - PAD.right - 124, y: y + 4, class: "tick", text: s.name}));
  });
  root.append(legend);
  return root;
}
