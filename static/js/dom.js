// DOM helpers. Text from the API (names of people, files, models) is attacker-controlled: it only ever
// goes in as text nodes (textContent), never as HTML.

/** h("a", {href: "#/", class: "x", on: {click: f}, dataset: {id: 1}}, "text", child, [more]) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "on") for (const [ev, fn] of Object.entries(value)) el.addEventListener(ev, fn);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export function replace(el, ...children) {
  clear(el);
  return append(el, children);
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** An SVG element; attributes are SVG presentation attributes (fill, stroke), not inline styles. */
export function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (key === "text") el.textContent = value;
    else if (key === "class") el.setAttribute("class", value);
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat(Infinity)) if (child) el.append(child);
  return el;
}

export const pct = (x, digits = 1) => (x === null || x === undefined ? "—" : `${(100 * x).toFixed(digits)}%`);
export const fixed = (x, digits = 3) => (x === null || x === undefined ? "—" : Number(x).toFixed(digits));
export const count = (x) => (x === null || x === undefined ? "—" : Number(x).toLocaleString("en"));

export function when(unixSeconds) {
  if (!unixSeconds) return "—";
  const d = new Date(unixSeconds * 1000);
  return d.toLocaleString(undefined, {dateStyle: "medium", timeStyle: "short"});
}

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KB", "MB", "GB", "TB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

export function seconds(s) {
  if (s === null || s === undefined) return "—";
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${Math.round(s - 60 * m)} s`;
}

/** A table: columns [{title, cell(row) -> node|text, class?}], rows. */
export function table(columns, rows, attrs = {}) {
  return h("table", attrs,
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", {class: c.class}, c.title)))),
    h("tbody", {}, rows.map((row) => h("tr", {}, columns.map((c) => h("td", {class: c.class}, c.cell(row)))))));
}

/** A progress bar: <progress> with a caption. total 0: indeterminate. */
export function progressBar(done, total, caption) {
  const bar = h("progress", total > 0 ? {max: total, value: Math.min(done, total)} : {});
  return h("div", {class: "progress"}, bar, h("span", {class: "caption"}, caption));
}

export function badge(state) {
  return h("span", {class: `badge state-${state}`, text: state});
}
