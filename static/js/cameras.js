// Live cameras: the list (state with its reason, model; add one; delete with a confirmation) and a camera's
// page: the latest event's snapshot (the frame with every face boxed and named, drawn by the service), the
// events as they arrive, and a timeline per person over the last hour (each track's start and end paired
// into one bar). Snapshots need the key, so they are fetched and shown as blob: URLs.
import {api, apiKey, errorBox} from "./api.js";
import {confirmDialog} from "./models.js";
import {badge, h, pct, replace, svg, table, when} from "./dom.js";

const HOUR = 3600;
const SHOWN = 50;          // events listed on the page (the timeline keeps the last hour's)
const HISTORY_PAGES = 20;  // at most 20 x 1000 events read back when the page opens

/** The list of cameras, with the form that adds one. */
export function camerasPage(main) {
  let timer = null;
  let stopped = false;
  const status = h("div", {class: "status-line", id: "cameras-msg"});
  const body = h("div", {class: "cameras", id: "cameras-list"});
  const models = h("select", {name: "model", id: "camera-model", required: true});
  const form = h("form", {class: "build-form camera-form", id: "camera-form"},
    h("label", {}, "Name ", h("input", {name: "name", id: "camera-name", required: true, maxlength: "200", placeholder: "front door"})),
    h("label", {}, "URL ", h("input", {name: "url", id: "camera-url", required: true, size: "48",
      placeholder: "rtsp://user:password@192.168.1.20:554/stream1"})),
    h("label", {}, "Model ", models),
    h("label", {}, "Frames a second ", h("input", {name: "fps", id: "camera-fps", type: "number", min: "0.05", max: "30",
      step: "0.05", value: "5"})),
    h("span", {class: "hint", text: "rtsp://, an HTTP(S) MJPEG stream, or a snapshot URL to poll. Credentials go in the URL; "
      + "the service never shows them again."}),
    h("button", {type: "submit", class: "primary", text: "Add the camera"}));
  main.append(h("div", {class: "page-head"}, h("h1", {text: "Cameras"})), status, body,
    h("h2", {text: "Add a camera"}), form);

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const data = Object.fromEntries(new FormData(form).entries());
    try {
      const answer = await api("cameras", {method: "POST", body: JSON.stringify({...data, fps: Number(data.fps)}), json: true});
      location.hash = `#/camera/${answer.camera.id}`;
    } catch (err) { replace(status, errorBox(err, "The camera was refused")); }
  });

  (async () => {
    try {
      const list = await api("models?limit=200");
      const built = list.models.filter((m) => m.state === "done");
      replace(models, built.length ? built.map((m) => h("option", {value: m.id, text: m.name ? `${m.name} (${m.id.slice(0, 8)})` : m.id}))
        : h("option", {value: "", text: "no model built yet"}));
    } catch { replace(models, h("option", {value: "", text: "the models could not be read"})); }
  })();

  async function load() {
    if (stopped) return;
    try {
      const list = await api("cameras");
      if (stopped) return;
      replace(body, list.cameras.length ? table([
        {title: "Name", cell: (c) => h("a", {href: `#/camera/${c.id}`, class: "camera-link", dataset: {id: c.id}, text: c.name})},
        {title: "State", cell: (c) => h("span", {}, badge(c.state), c.reason ? h("span", {class: "muted small camera-reason", text: ` ${c.reason}`}) : null)},
        {title: "Model", cell: (c) => h("a", {href: `#/model/${c.model}`, text: c.model.slice(0, 8)})},
        {title: "URL", cell: (c) => h("code", {text: c.url})},
        {title: "Added", cell: (c) => when(c.created)},
        {title: "", class: "actions", cell: (c) => h("button", {type: "button", class: "danger small delete-camera", text: "Delete",
          on: {click: async () => {
            if (!await confirmDialog(`Delete the camera “${c.name}”?`, "It is no longer watched; its events and their snapshots are erased.", "Delete")) return;
            try { await api(`cameras/${c.id}`, {method: "DELETE"}); load(); } catch (err) { replace(status, errorBox(err, "Delete refused")); }
          }}})},
      ], list.cameras, {id: "cameras-table"}) : h("p", {class: "empty", text: "No camera yet: add one below."}));
    } catch (err) {
      replace(body, errorBox(err, "The cameras could not be read"));
    }
    clearTimeout(timer);
    if (!stopped) timer = setTimeout(load, 5000);
  }
  load();
  return () => { stopped = true; clearTimeout(timer); };
}

/** Split an SSE body into its events: -> [{id, event, data}] and the text not yet ended by a blank line. */
function parseSse(text) {
  const out = [];
  const blocks = text.replace(/\r\n?/g, "\n").split("\n\n");
  const rest = blocks.pop();
  for (const block of blocks) {
    const ev = {id: null, event: "message", data: []};
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
      if (field === "data") ev.data.push(value);
      else if (field === "id" || field === "event") ev[field] = value;
    }
    if (ev.data.length) out.push({...ev, data: ev.data.join("\n")});
  }
  return [out, rest];
}

/** One camera: its state, the latest snapshot, the events as they come, the last hour per person. */
export function cameraPage(main, id) {
  let stopped = false;
  let stateTimer = null;
  let tickTimer = null;
  let snapUrl = null;
  let latestSnap = 0;
  const abort = new AbortController();
  const events = []; // the last hour's (and at least the SHOWN latest), oldest first
  const title = h("h1", {text: "Camera"});
  const state = h("div", {class: "camera-state", id: "camera-state"});
  const frame = h("img", {id: "camera-frame", class: "camera-frame", alt: "the latest event's frame", hidden: true});
  const frameNote = h("p", {class: "muted small", id: "camera-frame-note", text: "No event yet: the latest event's frame shows here."});
  const timeline = h("figure", {class: "chart-box", id: "camera-timeline"});
  const list = h("div", {class: "camera-events", id: "camera-events"});
  const live = h("span", {class: "muted small", id: "camera-live"});
  main.append(h("div", {class: "page-head"}, title, h("a", {class: "button", href: "#/cameras", text: "All cameras"})),
    state, h("div", {class: "camera-view"}, h("div", {}, frame, frameNote), h("div", {class: "camera-side"},
      h("h2", {}, "Events ", live), list)),
    h("h2", {text: "The last hour, per person"}), timeline);

  async function showState() {
    try {
      const c = (await api(`cameras/${id}`)).camera;
      if (stopped) return;
      replace(title, c.name);
      replace(state, badge(c.state), c.reason ? h("span", {class: "camera-reason", text: ` ${c.reason}`}) : null,
        h("span", {class: "muted small"}, " · model ", h("a", {href: `#/model/${c.model}`, text: c.model.slice(0, 8)}),
          ` · ${c.fps} frames a second · `, h("code", {text: c.url})));
      state.dataset.state = c.state;
    } catch (err) {
      replace(state, errorBox(err, "The camera could not be read"));
      if (err.status === 404) return;
    }
    if (!stopped) stateTimer = setTimeout(showState, 3000);
  }

  async function showSnapshot(ev) {
    if (!ev.snapshot || ev.id <= latestSnap) return;
    latestSnap = ev.id;
    try {
      const resp = await api(ev.snapshot.replace(/^\//, ""), {raw: true});
      const url = URL.createObjectURL(await resp.blob());
      if (stopped || ev.id !== latestSnap) { URL.revokeObjectURL(url); return; }
      if (snapUrl) URL.revokeObjectURL(snapUrl);
      snapUrl = url;
      frame.src = url;
      frame.dataset.event = String(ev.id);
      frame.hidden = false;
      replace(frameNote, `${ev.type === "track.start" ? "Arrived" : "Left"}: ${ev.label} · ${when(ev.time)}`);
    } catch { /* the previous frame stays */ }
  }

  function showEvents() {
    const shown = events.slice(-SHOWN).reverse();
    replace(list, shown.length ? table([
      {title: "", cell: (e) => (e.type === "track.start" ? "→ in" : "← out")},
      {title: "Who", cell: (e) => h("span", {class: e.known ? "known-name" : "unknown-name", text: e.label})},
      {title: "Confidence", class: "num", cell: (e) => (e.known ? pct(e.confidence) : "—")},
      {title: "When", cell: (e) => new Date(e.time * 1000).toLocaleTimeString()},
    ], shown, {id: "camera-events-table"}) : h("p", {class: "muted", text: "No event yet."}));
    for (const [i, row] of [...list.querySelectorAll("tbody tr")].entries()) {
      row.dataset.event = String(shown[i].id);
      row.dataset.label = shown[i].label;
    }
  }

  // Visits from the events in order: a start opens its track's bar, the next end of that track number closes
  // it (the end's label wins: a track's name comes from all its frames). Track numbers start again when a
  // camera changes worker, so a start on a number still open closes the older bar where it was last known.
  // An end with no start read (before the history) is its own bar; a track not ended yet runs to now.
  function drawTimeline() {
    const now = Date.now() / 1000;
    const from = now - HOUR;
    const visits = [];
    const open = new Map();
    for (const e of events) {
      const key = `${e.model}:${e.track}`;
      if (e.type === "track.start") {
        if (open.has(key)) open.get(key).last = open.get(key).first;
        const v = {first: e.first, last: null, label: e.label, known: e.known};
        open.set(key, v);
        visits.push(v);
      } else {
        const v = open.get(key) || (visits.push({}), visits[visits.length - 1]);
        Object.assign(v, {first: v.first ?? e.first, last: e.last, label: e.label, known: e.known});
        open.delete(key);
      }
    }
    const bars = visits.map((t) => ({...t, last: t.last ?? now, open: t.last === null}))
      .filter((t) => t.last >= from);
    const labels = [...new Set(bars.map((t) => t.label))].sort((a, b) => (a === "unknown") - (b === "unknown") || a.localeCompare(b));
    const W = 820, left = 150, row = 24, top = 10;
    const H = top + row * Math.max(labels.length, 1) + 30;
    const x = (s) => left + ((W - left - 10) * (Math.max(s, from) - from)) / HOUR;
    const parts = [];
    for (let m = 0; m <= 60; m += 10) {
      const s = from + 60 * m;
      parts.push(svg("line", {x1: x(s), x2: x(s), y1: top, y2: H - 24, class: "grid"}),
        svg("text", {x: x(s), y: H - 8, class: "tick", "text-anchor": "middle", text: m === 60 ? "now" : `-${60 - m} min`}));
    }
    labels.forEach((label, i) => {
      const y = top + i * row;
      parts.push(svg("text", {x: left - 6, y: y + row / 2 + 3, class: "tick", "text-anchor": "end", text: label}));
      for (const t of bars.filter((b) => b.label === label)) {
        parts.push(svg("rect", {x: x(t.first), y: y + 3, width: Math.max(3, x(t.last) - x(t.first)), height: row - 8, rx: 3,
          class: `track-bar ${t.known ? "known" : "unknown"}${t.open ? " open" : ""}`, "data-label": label},
        svg("title", {text: `${label}: ${new Date(t.first * 1000).toLocaleTimeString()} – ${t.open ? "now" : new Date(t.last * 1000).toLocaleTimeString()}`})));
      }
    });
    replace(timeline, svg("svg", {viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img"}, parts),
      h("figcaption", {text: bars.length ? "One bar per visit, from the track's start to its end (a visit not ended yet runs to now)."
        : "Nobody seen in the last hour."}));
  }

  function add(batch) {
    const known = new Set(events.map((e) => e.id));
    for (const e of batch) if (!known.has(e.id)) events.push(e);
    const from = Date.now() / 1000 - HOUR;
    while (events.length > SHOWN && events[0].time < from) events.shift();
    showEvents();
    drawTimeline();
    const last = [...batch].reverse().find((e) => e.snapshot);
    if (last) showSnapshot(last);
  }

  // The history: events are answered oldest first and by id, so the page reads them forward from the start
  // (bounded: HISTORY_PAGES) and keeps the last hour's.
  async function history() {
    let after = 0;
    for (let i = 0; i < HISTORY_PAGES && !stopped; i += 1) {
      const page = (await api(`cameras/${id}/events?after=${after}&limit=1000`)).events;
      if (!page.length) break;
      after = page[page.length - 1].id;
      add(page);
      if (page.length < 1000) break;
    }
    return after;
  }

  // New events: the API's Server-Sent Events read with fetch() as a stream. EventSource cannot send the
  // X-API-Key header the API asks for (the key is taken from headers only, never from the URL, where logs
  // and referrers would keep it); fetch can, and the CSP's default-src 'self' allows it. A stream ends after
  // 15 minutes (or on a network cut): the page opens the next one after the last event it has.
  async function follow(after) {
    while (!stopped) {
      try {
        const resp = await fetch(`cameras/${id}/events?after=${after}`, {headers: {"X-API-Key": apiKey(), Accept: "text/event-stream"},
          cache: "no-store", credentials: "omit", signal: abort.signal});
        if (!resp.ok) {
          replace(live, resp.status === 404 ? "· the camera is gone" : `· live updates paused (${resp.status}); trying again`);
          if (resp.status === 404) return;
          await new Promise((r) => setTimeout(r, 5000));
          continue;
        }
        replace(live, "· live");
        live.dataset.live = "1";
        const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const {value, done} = await reader.read();
          if (done) break;
          let parsed;
          [parsed, buffer] = parseSse(buffer + value);
          const batch = [];
          for (const ev of parsed) {
            if (ev.event === "gone") { replace(live, "· the camera is gone"); return; }
            if (ev.event.startsWith("track.")) batch.push(JSON.parse(ev.data));
          }
          if (batch.length) {
            after = batch[batch.length - 1].id;
            add(batch);
          }
        }
      } catch (err) {
        if (stopped) return;
        replace(live, "· live updates cut; trying again");
      }
      delete live.dataset.live;
      if (!stopped) await new Promise((r) => setTimeout(r, 1000));
    }
  }

  showState();
  drawTimeline();
  showEvents();
  history().then(follow).catch((err) => { if (!stopped) replace(list, errorBox(err, "The events could not be read")); });
  tickTimer = setInterval(drawTimeline, 30000); // open visits grow, old ones slide out
  return () => {
    stopped = true;
    abort.abort();
    clearTimeout(stateTimer);
    clearInterval(tickTimer);
    if (snapUrl) URL.revokeObjectURL(snapUrl);
  };
}
