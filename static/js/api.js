// The API, as the console calls it: every request carries the API key (asked once, kept for this
// browser session in sessionStorage); a 401 asks for the key again and retries; errors arrive as
// ApiError with the service's code, message and details.
import {h, replace} from "./dom.js";

const KEY = "fr.apiKey";

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || null;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
  document.dispatchEvent(new CustomEvent("fr-key"));
}

let asking = null;

/** Open the key dialog (one at a time); resolves true if a key was entered. */
export function askKey(reason) {
  if (asking) return asking;
  const dialog = document.getElementById("key-dialog");
  const form = dialog.querySelector("form");
  const input = dialog.querySelector("input[name=key]");
  replace(dialog.querySelector(".reason"), reason || "");
  input.value = apiKey();
  asking = new Promise((resolve) => {
    const done = (ok) => {
      form.removeEventListener("submit", onSubmit);
      dialog.querySelector("[data-act=cancel]").removeEventListener("click", onCancel);
      dialog.removeEventListener("cancel", onCancel);
      dialog.close();
      asking = null;
      resolve(ok);
    };
    const onSubmit = (e) => {
      e.preventDefault();
      setApiKey(input.value.trim());
      done(Boolean(input.value.trim()));
    };
    const onCancel = (e) => { e.preventDefault(); done(false); };
    form.addEventListener("submit", onSubmit);
    dialog.querySelector("[data-act=cancel]").addEventListener("click", onCancel);
    dialog.addEventListener("cancel", onCancel);
    dialog.showModal();
    input.focus();
  });
  return asking;
}

function headers() {
  const key = apiKey();
  return key ? {"X-API-Key": key} : {};
}

async function errorOf(resp) {
  let body = null;
  try { body = await resp.json(); } catch { /* not JSON: a proxy's page */ }
  const err = body && body.error;
  if (err) return new ApiError(resp.status, err.code, err.message, err.details);
  return new ApiError(resp.status, `HTTP_${resp.status}`, `the service answered ${resp.status} ${resp.statusText}`);
}

/** fetch + the key; -> parsed JSON (or the Response with raw; `json`: the body is JSON). Throws ApiError. */
export async function api(path, {method = "GET", body = undefined, raw = false, json = false} = {}) {
  for (;;) {
    let resp;
    try {
      resp = await fetch(path, {method, body, headers: {...headers(), ...(json ? {"Content-Type": "application/json"} : {})},
        cache: "no-store", credentials: "omit"});
    } catch (e) {
      throw new ApiError(0, "NETWORK", `the service cannot be reached (${e.message})`);
    }
    if (resp.status === 401) {
      const err = await errorOf(resp);
      if (await askKey(err.message)) continue;
      throw err;
    }
    if (!resp.ok) throw await errorOf(resp);
    return raw ? resp : resp.json();
  }
}

/** POST a FormData with upload progress (XMLHttpRequest: fetch reports none). onProgress(sent, total). */
export function upload(path, form, onProgress) {
  const once = () => new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    for (const [k, v] of Object.entries(headers())) xhr.setRequestHeader(k, v);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (e) => onProgress && onProgress(e.loaded, e.lengthComputable ? e.total : 0));
    xhr.addEventListener("load", () => resolve(xhr));
    xhr.addEventListener("error", () => reject(new ApiError(0, "NETWORK", "the upload was cut off")));
    xhr.addEventListener("abort", () => reject(new ApiError(0, "ABORTED", "the upload was cancelled")));
    xhr.send(form);
  });
  return (async () => {
    for (;;) {
      const xhr = await once();
      const body = xhr.response;
      const err = body && body.error;
      if (xhr.status === 401 && await askKey(err ? err.message : "this service needs an API key")) continue;
      if (xhr.status >= 200 && xhr.status < 300) return body;
      if (err) throw new ApiError(xhr.status, err.code, err.message, err.details);
      throw new ApiError(xhr.status, `HTTP_${xhr.status}`, `the service answered ${xhr.status}`);
    }
  })();
}

/** Download a URL that needs the key as a file (an <a href> cannot send headers). */
export async function download(path, filename) {
  const resp = await api(path, {raw: true});
  const blob = await resp.blob();
  const url = URL.createObjectURL(blob);
  const a = h("a", {href: url, download: filename});
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  return blob.size;
}

/** An error, in place: code, message, and its details (lists of files, people) as tables. */
export function errorBox(err, title = "The service refused this") {
  const details = err.details ? detailsView(err.details) : null;
  return h("div", {class: "error", role: "alert"},
    h("strong", {}, title), " ",
    h("code", {class: "code", text: err.code || "ERROR"}),
    h("p", {class: "message", text: err.message || String(err)}),
    details);
}

function detailsView(details) {
  const parts = [];
  for (const [key, value] of Object.entries(details)) {
    if (Array.isArray(value) && value.length && typeof value[0] === "object" && value[0] !== null) {
      const cols = [...new Set(value.flatMap((row) => Object.keys(row)))];
      parts.push(h("div", {class: "detail"}, h("h4", {text: `${key} (${value.length})`}),
        h("table", {class: `details details-${key}`},
          h("thead", {}, h("tr", {}, cols.map((c) => h("th", {text: c})))),
          h("tbody", {}, value.map((row) => h("tr", {}, cols.map((c) => h("td", {text: fmt(row[c])}))))))));
    } else {
      parts.push(h("div", {class: "detail"}, h("span", {class: "key", text: `${key}: `}), h("span", {text: fmt(value)})));
    }
  }
  return h("div", {class: "details-box"}, parts);
}

function fmt(v) {
  if (v === null || v === undefined) return "";
  if (Array.isArray(v)) return v.map(fmt).join(", ");
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}
