// The console: a router over the location's hash, the header (health, API key), and the pages.
import {apiKey, askKey, setApiKey} from "./api.js";
import {replace} from "./dom.js";
import {buildPage} from "./build.js";
import {cameraPage, camerasPage} from "./cameras.js";
import {modelPage} from "./model.js";
import {modelsPage} from "./models.js";
import {unknownPage} from "./unknown.js";
import {videoPage, videosPage} from "./video.js";

const main = document.getElementById("main");
let leave = null; // the current page's clean-up (timers, camera)

function route() {
  if (leave) { try { leave(); } catch { /* a page that failed to clean up must not block the next */ } }
  leave = null;
  const hash = location.hash.replace(/^#\/?/, "");
  const parts = hash.split("/").filter(Boolean).map(decodeURIComponent);
  replace(main);
  window.scrollTo(0, 0);
  for (const a of document.querySelectorAll("header nav a")) {
    a.classList.toggle("current", a.getAttribute("href") === `#/${parts[0] || ""}`);
  }
  if (parts[0] === "new") leave = buildPage(main);
  else if (parts[0] === "model" && parts[1] && parts[2] === "unknown") leave = unknownPage(main, parts[1]);
  else if (parts[0] === "model" && parts[1]) leave = modelPage(main, parts[1], parts[2]);
  else if (parts[0] === "video" && parts[1]) leave = videoPage(main, parts[1]);
  else if (parts[0] === "videos") leave = videosPage(main);
  else if (parts[0] === "camera" && parts[1]) leave = cameraPage(main, parts[1]);
  else if (parts[0] === "cameras") leave = camerasPage(main);
  else leave = modelsPage(main);
}

async function health() {
  const el = document.getElementById("health");
  try {
    const resp = await fetch("is_alive", {cache: "no-store"});
    const body = await resp.json();
    el.className = `health ${body.alive ? "up" : "down"}`;
    replace(el, body.alive
      ? `${body.workers} worker${body.workers === 1 ? "" : "s"} · ${body.busy} busy · ${body.queued} queued`
      : `not ready: ${body.error ? body.error.code : resp.status}`);
    el.title = body.alive ? `version ${body.version}` : (body.error ? body.error.message : "");
  } catch {
    el.className = "health down";
    replace(el, "service unreachable");
  }
}

function keyButton() {
  const button = document.getElementById("key-button");
  const show = () => replace(button, apiKey() ? "API key ✓" : "API key");
  show();
  document.addEventListener("fr-key", show);
  button.addEventListener("click", () => askKey("The key is kept in this browser tab only (sessionStorage) and sent as X-API-Key."));
  document.querySelector("#key-dialog [data-act=forget]").addEventListener("click", (e) => {
    e.preventDefault();
    setApiKey("");
    document.querySelector("#key-dialog input[name=key]").value = "";
  });
}

window.addEventListener("hashchange", route);
keyButton();
route();
health();
setInterval(health, 10000);
document.documentElement.dataset.ready = "1";
