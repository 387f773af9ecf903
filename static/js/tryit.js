// Try a model: a photo from a file or the camera; every face boxed on it, named or "unknown", with its
// confidence. The photo is drawn on a canvas (no <img src>), the boxes are elements over it.
import {api, errorBox} from "./api.js";
import {fixed, h, pct, replace, table} from "./dom.js";

export function tryIt(box, id) {
  let stream = null;
  const input = h("input", {type: "file", accept: "image/*", id: "try-input"});
  const threshold = h("input", {type: "number", step: "0.01", min: "0.01", max: "4", placeholder: "per person", id: "try-threshold"});
  const video = h("video", {autoplay: true, playsinline: true, muted: true, hidden: true, class: "camera"});
  const cameraButton = h("button", {type: "button", id: "camera-button", text: "Use the camera"});
  const shootButton = h("button", {type: "button", id: "shoot-button", class: "primary", hidden: true, text: "Take the photo"});
  const out = h("div", {class: "try-result", id: "try-result"});
  const drop = h("div", {class: "dropzone small", id: "try-drop"}, h("p", {text: "Drop a photo here, or "}), input);

  replace(box, h("h2", {text: "Try it"}),
    h("p", {class: "muted", text: "Every face in the photo is boxed and named, or called unknown when it is not close enough to anyone in the model."}),
    drop, h("div", {class: "row"}, cameraButton, shootButton, h("label", {}, "Threshold ", threshold)), video, out);

  function stopCamera() {
    if (stream) for (const t of stream.getTracks()) t.stop();
    stream = null;
    video.hidden = true;
    shootButton.hidden = true;
    replace(cameraButton, "Use the camera");
  }
  box.cleanup = stopCamera;

  async function identify(blob, name) {
    replace(out, h("p", {class: "muted", text: `Looking at ${name}…`}));
    let bitmap;
    try {
      bitmap = await createImageBitmap(blob); // EXIF orientation applied, as the service does
    } catch {
      bitmap = null; // a format this browser cannot draw: the service may still read it
    }
    const form = new FormData();
    form.append("image", blob, name);
    if (threshold.value) form.append("threshold", threshold.value);
    let answer;
    try {
      answer = await api(`models/${id}/predict`, {method: "POST", body: form});
    } catch (err) {
      replace(out, errorBox(err, "The photo was refused"));
      return;
    }
    show(answer, bitmap);
  }

  function show(answer, bitmap) {
    const stage = h("div", {class: "stage", id: "try-stage"});
    if (bitmap) {
      const canvas = h("canvas", {width: bitmap.width, height: bitmap.height});
      canvas.getContext("2d").drawImage(bitmap, 0, 0);
      stage.append(canvas);
      answer.faces.forEach((f, i) => {
        const [left, top, right, bottom] = f.box;
        const el = h("div", {class: `face-box ${f.known ? "known" : "unknown"}`, dataset: {label: f.label, index: i}},
          h("span", {class: "tag", text: f.known ? `${f.label} ${pct(f.confidence, 0)}` : (f.reason ? `unknown (${f.reason.replace("_", " ")})` : "unknown")}));
        el.style.left = `${(100 * left) / bitmap.width}%`;
        el.style.top = `${(100 * top) / bitmap.height}%`;
        el.style.width = `${(100 * (right - left)) / bitmap.width}%`;
        el.style.height = `${(100 * (bottom - top)) / bitmap.height}%`;
        stage.append(el);
      });
    }
    const lead = answer.count
      ? `${answer.count} face${answer.count === 1 ? "" : "s"}: ${answer.faces.filter((f) => f.known).length} recognised.`
      : answer.message || "No face found in the photo.";
    replace(out, h("p", {class: "try-summary", id: "try-summary", text: lead}), stage,
      answer.faces_found ? h("p", {class: "warn", text: answer.message}) : null,
      answer.count ? table([
        {title: "#", class: "num", cell: (f) => String(answer.faces.indexOf(f) + 1)},
        {title: "Name", cell: (f) => h("span", {class: f.known ? "known-name" : "unknown-name", text: f.reason ? `${f.label}: ${f.reason.replace("_", " ")}, not judged` : f.label})},
        {title: "Confidence", class: "num", cell: (f) => pct(f.confidence)},
        {title: "Distance / threshold", class: "num", cell: (f) => `${fixed(f.distance)} / ${fixed(f.threshold)}`},
        {title: "Nearest person", cell: (f) => f.candidate},
        {title: "Face", cell: (f) => (f.quality ? `${f.quality.face_px} px${f.quality.problems.length ? ` · ${f.quality.problems.join(", ")}` : ""}` : "")},
      ], answer.faces, {class: "faces-table", id: "faces-table"}) : null);
  }

  input.addEventListener("change", () => { if (input.files[0]) identify(input.files[0], input.files[0].name); });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = e.dataTransfer.files[0];
    if (file) identify(file, file.name);
  });
  cameraButton.addEventListener("click", async () => {
    if (stream) { stopCamera(); return; }
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      replace(out, errorBox({code: "NO_CAMERA", message: "This browser gives no camera to this page (it needs https or localhost)."}, "No camera"));
      return;
    }
    try {
      stream = await navigator.mediaDevices.getUserMedia({video: {width: {ideal: 1280}}, audio: false});
    } catch (err) {
      replace(out, errorBox({code: "NO_CAMERA", message: `The camera could not be opened: ${err.message}`}, "No camera"));
      return;
    }
    video.srcObject = stream;
    video.hidden = false;
    shootButton.hidden = false;
    replace(cameraButton, "Close the camera");
  });
  shootButton.addEventListener("click", () => {
    const canvas = h("canvas", {width: video.videoWidth, height: video.videoHeight});
    canvas.getContext("2d").drawImage(video, 0, 0);
    canvas.toBlob((blob) => { if (blob) identify(blob, "camera.jpg"); }, "image/jpeg", 0.92);
  });
}
