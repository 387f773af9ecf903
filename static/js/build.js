// New model: drop a folder tree (one folder per person) or a zip; name, seed and the search's controls;
// the upload's progress; the service's errors in place (every bad file listed).
import {errorBox, upload} from "./api.js";
import {bytes, h, progressBar, replace} from "./dom.js";

const PHOTO = /\.(jpe?g|png|bmp|webp|tiff?|gif)$/i;
const SKIP = /(^|\/)(\.|__MACOSX\/)/; // dotfiles and macOS resource forks: not photos, not errors

/** Every file under a dropped entry, with its path from the drop ("people/alice/1.jpg"). */
async function walk(entry, out) {
  if (entry.isFile) {
    const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
    out.push({path: entry.fullPath.replace(/^\//, ""), file});
    return;
  }
  const reader = entry.createReader();
  for (;;) {
    const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
    if (!batch.length) break;
    for (const child of batch) await walk(child, out);
  }
}

/** What was chosen: {archive: File} or {photos: [{path, file}], ignored: [path]}. */
function selection(files) {
  const zips = files.filter((f) => /\.zip$/i.test(f.path));
  if (zips.length === 1 && files.length === 1) return {archive: zips[0].file};
  const photos = [];
  const ignored = [];
  for (const f of files) {
    if (SKIP.test(f.path)) continue;
    if (PHOTO.test(f.path)) photos.push(f);
    else ignored.push(f.path);
  }
  return {photos, ignored};
}

function personOf(path) {
  const parts = path.split("/").filter(Boolean);
  return parts.length >= 2 ? parts[parts.length - 2] : null;
}

export function buildPage(main) {
  let chosen = null;
  let xhrBusy = false;
  const summary = h("div", {class: "selection"});
  const result = h("div", {class: "result"});
  const folderInput = h("input", {type: "file", webkitdirectory: true, multiple: true, hidden: true, id: "folder-input"});
  const zipInput = h("input", {type: "file", accept: ".zip,application/zip", hidden: true, id: "zip-input"});
  const drop = h("div", {class: "dropzone", id: "dropzone", tabindex: 0},
    h("p", {class: "big", text: "Drop a folder of people here, or a zip"}),
    h("p", {class: "muted", text: "One folder per person, named after them: people/alice/1.jpg, people/bob/1.jpg … One photo per person is enough; more make them easier to recognise."}),
    h("div", {class: "row"},
      h("button", {type: "button", text: "Choose a folder…", on: {click: () => folderInput.click()}}),
      h("button", {type: "button", text: "Choose a zip…", on: {click: () => zipInput.click()}})),
    folderInput, zipInput);

  const name = h("input", {name: "name", id: "model-name", maxlength: 200, placeholder: "e.g. office"});
  const seed = h("input", {name: "seed", id: "model-seed", type: "number", min: 0, step: 1, placeholder: "42"});
  const optimize = h("input", {name: "optimize", id: "model-optimize", type: "checkbox"});
  const population = h("input", {name: "population", type: "number", min: 4, max: 256, placeholder: "32"});
  const generations = h("input", {name: "generations", type: "number", min: 1, max: 100, placeholder: "6"});
  const budget = h("input", {name: "time_budget", type: "number", min: 1, max: 86400, placeholder: "300"});
  const searchBox = h("fieldset", {class: "search-controls", disabled: true},
    h("legend", {text: "Genetic search"}),
    h("label", {}, "Population ", population),
    h("label", {}, "Generations ", generations),
    h("label", {}, "Time budget (s) ", budget));
  optimize.addEventListener("change", () => { searchBox.disabled = !optimize.checked; });
  const submit = h("button", {type: "submit", class: "primary", id: "build-button", disabled: true, text: "Build the model"});
  const form = h("form", {class: "build-form", id: "build-form"},
    h("label", {}, "Name ", name),
    h("label", {}, "Seed ", seed, h("span", {class: "hint", text: "fixes the split, the training and the search"})),
    h("label", {class: "check"}, optimize, " Evolve the network (genetic search over the workers; slower, smaller network)"),
    searchBox, submit);

  main.append(h("h1", {text: "New model"}), drop, summary, form, result);

  function show() {
    submit.disabled = !chosen || xhrBusy || (chosen.photos && !chosen.photos.length);
    if (!chosen) { replace(summary); return; }
    if (chosen.archive) {
      replace(summary, h("p", {}, "Zip ", h("strong", {text: chosen.archive.name}), ` (${bytes(chosen.archive.size)}): the service reads its folders.`));
      return;
    }
    const people = new Map();
    const loose = [];
    for (const p of chosen.photos) {
      const who = personOf(p.path);
      if (who === null) loose.push(p.path); else people.set(who, (people.get(who) || 0) + 1);
    }
    const total = chosen.photos.reduce((n, p) => n + p.file.size, 0);
    replace(summary,
      h("p", {}, h("strong", {id: "selection-count", text: `${chosen.photos.length} photos of ${people.size} people`}), ` (${bytes(total)})`),
      h("ul", {class: "people-chips"}, [...people.entries()].sort().map(([who, n]) => h("li", {}, who, h("span", {class: "n", text: String(n)})))),
      people.size === 1 ? h("p", {class: "warn", text: "A model tells people apart: it needs at least 2 people."}) : null,
      loose.length ? h("p", {class: "warn", text: `${loose.length} photo(s) are not in a person's folder: ${loose.slice(0, 5).join(", ")}`}) : null,
      chosen.ignored.length ? h("p", {class: "muted", text: `Not photos, left out: ${chosen.ignored.slice(0, 10).join(", ")}${chosen.ignored.length > 10 ? " …" : ""}`}) : null);
  }

  async function take(files) {
    replace(result);
    chosen = files.length ? selection(files) : null;
    show();
  }

  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const items = [...(e.dataTransfer.items || [])];
    const out = [];
    const entries = items.map((i) => (i.webkitGetAsEntry ? i.webkitGetAsEntry() : null));
    if (entries.length && entries.every(Boolean)) {
      for (const entry of entries) await walk(entry, out);
    } else {
      for (const file of e.dataTransfer.files) out.push({path: file.webkitRelativePath || file.name, file});
    }
    take(out);
  });
  folderInput.addEventListener("change", () => take([...folderInput.files].map((f) => ({path: f.webkitRelativePath || f.name, file: f}))));
  zipInput.addEventListener("change", () => take([...zipInput.files].map((f) => ({path: f.name, file: f}))));

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!chosen) return;
    const data = new FormData();
    if (chosen.archive) data.append("archive", chosen.archive, chosen.archive.name);
    else for (const p of chosen.photos) data.append("images", p.file, p.path);
    if (name.value.trim()) data.append("name", name.value.trim());
    if (seed.value !== "") data.append("seed", seed.value);
    if (optimize.checked) {
      data.append("optimize", "1");
      if (population.value) data.append("population", population.value);
      if (generations.value) data.append("generations", generations.value);
      if (budget.value) data.append("time_budget", budget.value);
    }
    xhrBusy = true;
    show();
    const bar = h("div", {class: "upload-progress"});
    replace(result, bar);
    const started = performance.now();
    try {
      const answer = await upload("build_recognizer", data, (sent, total) => {
        const rate = sent / Math.max(0.001, (performance.now() - started) / 1000);
        replace(bar, progressBar(sent, total, total ? `uploading ${bytes(sent)} of ${bytes(total)} (${bytes(rate)}/s)` : `uploading ${bytes(sent)}`));
      });
      replace(result, h("p", {class: "ok", text: `Accepted: ${answer.photos} photos of ${answer.people} people. Building…`}));
      location.hash = `#/model/${answer.id}`;
    } catch (err) {
      replace(result, errorBox(err, "The upload was refused"));
    } finally {
      xhrBusy = false;
      show();
    }
  });
  return () => {};
}
