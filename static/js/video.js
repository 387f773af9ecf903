// Recorded videos: send one to a model (from the model's "Try it"), follow it, and see its tracks on a
// timeline; a click on a track jumps the player to its best frame and boxes the face there. The player
// plays the file from this browser (a blob: URL of the file picked here); the service never sends the
// video back. Thumbnails need the key, so they are fetched and shown as blob: URLs.
import {api, errorBox, upload} from "./api.js";
import {badge, fixed, h, pct, progressBar, replace, svg, table, when} from "./dom.js";

const FINAL = new Set(["done", "failed"]);
const localFiles = new Map(); // video id -> the File it was made from, while this tab lives

/** The form that sends a video to model `id`; the page of the video follows. */
export function videoUpload(box, id) {
  const input = h("input", {type: "file", accept: "video/*,.mkv,.avi,.mov", id: "video-input"});
  const fps = h("input", {type: "number", min: "0.1", max: "30", step: "0.1", value: "5", id: "video-fps"});
  const out = h("div", {class: "video-upload-result"});
  replace(box, h("h2", {text: "A recorded video"}),
    h("p", {class: "muted", text: "Who is seen in a video, and when: each face followed from frame to frame and named from all its frames together. A worker reads it; this page follows it."}),
    h("div", {class: "row"}, input, h("label", {}, "Frames a second ", fps)), out);
  input.addEventListener("change", async () => {
    const file = input.files[0];
    if (!file) return;
    const form = new FormData();
    form.append("video", file, file.name);
    form.append("fps", fps.value || "5");
    try {
      const answer = await upload(`models/${id}/video`, form,
        (sent, total) => replace(out, progressBar(sent, total, `sending ${file.name}…`)));
      localFiles.set(answer.id, file);
      location.hash = `#/video/${answer.id}`;
    } catch (err) {
      replace(out, errorBox(err, "The video was refused"));
    }
  });
}

/** The list of videos. */
export function videosPage(main) {
  const body = h("div", {class: "videos"});
  main.append(h("div", {class: "page-head"}, h("h1", {text: "Videos"})),
    h("p", {class: "muted", text: "Send a video from a model's page (Try it). Videos go with their model."}), body);
  (async () => {
    try {
      const list = await api("videos?limit=200");
      replace(body, list.videos.length ? table([
        {title: "Video", cell: (v) => h("a", {href: `#/video/${v.id}`, text: v.name || v.id})},
        {title: "State", cell: (v) => badge(v.state)},
        {title: "Model", cell: (v) => h("a", {href: `#/model/${v.model}`, text: v.model.slice(0, 8)})},
        {title: "Sent", cell: (v) => when(v.created)},
      ], list.videos, {id: "videos-table"}) : h("p", {class: "muted", text: "No video yet."}));
    } catch (err) {
      replace(body, errorBox(err, "The videos could not be read"));
    }
  })();
  return () => {};
}

/** One video: state and progress while it is read, then its tracks on a timeline. */
export function videoPage(main, id) {
  let timer = null;
  let stopped = false;
  const urls = [];
  const title = h("h1", {text: "Video"});
  const status = h("section", {class: "status", id: "video-status"});
  const player = h("video", {controls: true, muted: true, playsinline: true, class: "video-player", id: "video-player", hidden: true});
  const overlay = h("div", {class: "face-box known video-box", hidden: true});
  const stage = h("div", {class: "stage video-stage"}, player, overlay);
  const pick = h("input", {type: "file", accept: "video/*,.mkv,.avi,.mov", id: "video-local"});
  const timeline = h("figure", {class: "chart-box", id: "video-timeline", hidden: true});
  const tracksBox = h("section", {class: "tracks", id: "video-tracks"});
  main.append(h("div", {class: "page-head"}, title), status, timeline, stage,
    h("p", {class: "muted small"}, "To play the video here and jump to each face, open the file from this computer (it is not sent again): ", pick),
    tracksBox);

  function attach(file) {
    const url = URL.createObjectURL(file);
    urls.push(url);
    player.src = url;
    player.hidden = false;
  }
  if (localFiles.has(id)) attach(localFiles.get(id));
  pick.addEventListener("change", () => { if (pick.files[0]) attach(pick.files[0]); });

  function jump(track, video) {
    if (player.hidden) return;
    player.currentTime = track.best.t;
    player.pause();
    const [left, top, right, bottom] = track.best.box;
    const w = video.width || player.videoWidth || 1;
    const hgt = video.height || player.videoHeight || 1;
    overlay.style.left = `${(100 * left) / w}%`;
    overlay.style.top = `${(100 * top) / hgt}%`;
    overlay.style.width = `${(100 * (right - left)) / w}%`;
    overlay.style.height = `${(100 * (bottom - top)) / hgt}%`;
    replace(overlay, h("span", {class: "tag", text: `${track.label} · ${fixed(track.best.t, 1)} s`}));
    overlay.className = `face-box ${track.known ? "known" : "unknown"} video-box`;
    overlay.hidden = false;
  }
  player.addEventListener("play", () => { overlay.hidden = true; });

  function drawTimeline(result) {
    const tracks = result.tracks;
    const total = Math.max(result.video.seconds || 0, result.sampling.seconds || 0, ...tracks.map((t) => t.last), 1);
    const W = 820, left = 150, row = 22, top = 10;
    const H = top + row * tracks.length + 30;
    const x = (s) => left + ((W - left - 10) * s) / total;
    const parts = [];
    for (let s = 0; s <= total + 1e-9; s += niceStep(total)) {
      parts.push(svg("line", {x1: x(s), x2: x(s), y1: top, y2: H - 24, class: "grid"}),
        svg("text", {x: x(s), y: H - 8, class: "tick", "text-anchor": "middle", text: `${Math.round(s)} s`}));
    }
    tracks.forEach((t, i) => {
      const y = top + i * row;
      const bar = svg("rect", {x: x(t.first), y: y + 3, width: Math.max(3, x(t.last) - x(t.first)), height: row - 8,
        rx: 3, class: `track-bar ${t.known ? "known" : "unknown"}`});
      bar.addEventListener("click", () => jump(t, result.video));
      const mark = svg("circle", {cx: x(t.best.t), cy: y + row / 2 - 1, r: 4, class: "track-best"});
      mark.addEventListener("click", () => jump(t, result.video));
      parts.push(svg("text", {x: left - 6, y: y + row / 2 + 3, class: "tick", "text-anchor": "end", text: `${t.id}. ${t.label}`}),
        bar, mark);
    });
    replace(timeline, svg("svg", {viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img"}, parts),
      h("figcaption", {text: "One bar per face followed, from its first to its last second; the dot is its best frame. Click a bar to jump there."}));
    timeline.hidden = false;
  }

  async function thumbnail(track) {
    const img = h("img", {alt: `track ${track.id}`, class: "thumb"});
    try {
      const resp = await api(track.thumbnail, {raw: true});
      const url = URL.createObjectURL(await resp.blob());
      urls.push(url);
      img.src = url;
    } catch { /* shown without */ }
    return img;
  }

  async function show(view) {
    replace(title, view.name || "Video");
    if (view.state === "failed") {
      replace(status, badge("failed"), errorBox(view.error || {}, "The video could not be read"));
      return;
    }
    if (!FINAL.has(view.state)) {
      replace(status, badge(view.state), progressBar(view.progress.done, view.progress.total,
        view.state === "queued" ? "waiting for a worker" : `${view.progress.done} of ${view.progress.total} frames looked at`));
      return;
    }
    const r = view.result;
    replace(status, badge("done"), h("span", {class: "muted", text:
      ` ${r.video.width}x${r.video.height}, ${fixed(r.video.seconds, 1)} s, ${r.sampling.frames} frames looked at (${r.sampling.fps} a second)` +
      `${r.truncated ? " — the file was cut short: the tracks cover what could be read" : ""}`}));
    drawTimeline(r);
    const thumbs = await Promise.all(r.tracks.map(thumbnail));
    replace(tracksBox, h("h2", {text: `Tracks (${r.tracks.length})`}), r.tracks.length ? table([
      {title: "", cell: (t) => thumbs[r.tracks.indexOf(t)]},
      {title: "#", class: "num", cell: (t) => String(t.id)},
      {title: "Who", cell: (t) => h("a", {href: "#", class: t.known ? "known-name" : "unknown-name", text: t.label,
        on: {click: (e) => { e.preventDefault(); jump(t, r.video); }}})},
      {title: "Confidence", class: "num", cell: (t) => (t.known ? pct(t.confidence) : "—")},
      {title: "From", class: "num", cell: (t) => `${fixed(t.first, 1)} s`},
      {title: "To", class: "num", cell: (t) => `${fixed(t.last, 1)} s`},
      {title: "Frames", class: "num", cell: (t) => String(t.frames)},
      {title: "Frame by frame", cell: (t) => Object.entries(t.per_frame).map(([k, n]) => `${k} ${n}`).join(", ")},
    ], r.tracks, {id: "tracks-table"}) : h("p", {class: "muted", text: "No face was found in the video."}));
  }

  async function poll() {
    if (stopped) return;
    let view;
    try {
      view = await api(`videos/${id}`);
    } catch (err) {
      replace(status, errorBox(err, "The video could not be read"));
      return;
    }
    await show(view);
    if (!FINAL.has(view.state) && !stopped) timer = setTimeout(poll, 1000);
  }
  poll();
  return () => {
    stopped = true;
    clearTimeout(timer);
    for (const u of urls) URL.revokeObjectURL(u);
  };
}

function niceStep(total) {
  for (const s of [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800]) if (total / s <= 12) return s;
  return 3600;
}
