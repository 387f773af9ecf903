// The list of models: live state and progress, people, photos, accuracy; delete with a confirmation.
import {api, errorBox} from "./api.js";
import {badge, count, h, pct, progressBar, replace, table, when} from "./dom.js";

const PAGE = 50;
const FINAL = new Set(["done", "failed"]);
const summaries = new Map(); // id -> summary of a built model (a model never changes once built)

export function confirmDialog(title, text, action) {
  const dialog = document.getElementById("confirm-dialog");
  replace(dialog.querySelector("h3"), title);
  replace(dialog.querySelector("p"), text);
  replace(dialog.querySelector("[data-act=ok]"), action);
  return new Promise((resolve) => {
    const ok = dialog.querySelector("[data-act=ok]");
    const cancel = dialog.querySelector("[data-act=cancel]");
    const done = (value) => {
      ok.removeEventListener("click", onOk);
      cancel.removeEventListener("click", onCancel);
      dialog.removeEventListener("cancel", onCancel);
      dialog.close();
      resolve(value);
    };
    const onOk = (e) => { e.preventDefault(); done(true); };
    const onCancel = (e) => { e.preventDefault(); done(false); };
    ok.addEventListener("click", onOk);
    cancel.addEventListener("click", onCancel);
    dialog.addEventListener("cancel", onCancel);
    dialog.showModal();
  });
}

export async function deleteModel(model) {
  const what = model.name ? `“${model.name}”` : model.id;
  const yes = await confirmDialog(`Delete ${what}?`,
    "This erases the model, its uploaded photos and their cached features. It cannot be undone.", "Delete");
  if (!yes) return null;
  const answer = await api(`models/${encodeURIComponent(model.id)}`, {method: "DELETE"});
  summaries.delete(model.id);
  return answer;
}

export function modelsPage(main) {
  let offset = 0;
  let timer = null;
  let stopped = false;
  const status = h("div", {class: "status-line"});
  const body = h("div", {class: "models"});
  const pager = h("div", {class: "pager"});
  main.append(
    h("div", {class: "page-head"}, h("h1", {text: "Models"}), h("a", {class: "button primary", href: "#/new", text: "New model"})),
    status, body, pager);

  async function details(model) {
    if (model.state === "done" && !summaries.has(model.id)) {
      try { summaries.set(model.id, await api(`models/${model.id}/summary`)); } catch { /* shown as — */ }
    }
    if (!FINAL.has(model.state)) {
      try { return await api(`is_available/${model.id}`); } catch { return model; }
    }
    return model;
  }

  function progressCell(m) {
    if (m.state === "failed") return h("span", {class: "failed-why", text: m.error ? `${m.error.code}: ${m.error.message}` : "failed"});
    if (m.state === "done" || !m.progress) return "";
    const p = m.progress;
    return progressBar(p.done, p.total, p.total ? `${p.stage} ${p.done}/${p.total}` : p.stage);
  }

  async function load() {
    if (stopped) return;
    let list;
    try {
      list = await api(`models?limit=${PAGE}&offset=${offset}`);
    } catch (err) {
      replace(status, errorBox(err, "Cannot list the models"));
      schedule(10000);
      return;
    }
    replace(status);
    const models = await Promise.all(list.models.map(details));
    if (stopped) return;
    if (!models.length) {
      replace(body, h("p", {class: "empty"}, "No models yet. ", h("a", {href: "#/new", text: "Build one"}),
        " from a folder of photos, one folder per person."));
    } else {
      replace(body, table([
        {title: "Name", cell: (m) => h("a", {href: `#/model/${m.id}`, class: "model-link", dataset: {id: m.id}},
          m.name || h("span", {class: "muted", text: m.id.slice(0, 8)}))},
        {title: "State", cell: (m) => badge(m.state)},
        {title: "Progress", class: "wide", cell: progressCell},
        {title: "People", class: "num", cell: (m) => count(m.people)},
        {title: "Photos", class: "num", cell: (m) => count(m.photos)},
        {title: "Unknown faces", class: "num", cell: (m) => (m.unknown_waiting
          ? h("a", {href: `#/model/${m.id}/unknown`, class: "unknown-count", text: count(m.unknown_waiting)})
          : (m.keep_unknown ? "0" : "—"))},
        {title: "Balanced accuracy", class: "num", cell: (m) => {
          const s = summaries.get(m.id);
          return s && s.metrics ? pct(s.metrics.balanced_accuracy) : "—";
        }},
        {title: "Created", cell: (m) => when(m.created)},
        {title: "", class: "actions", cell: (m) => h("button", {type: "button", class: "danger small", text: "Delete",
          on: {click: async () => {
            try { if (await deleteModel(m)) load(); } catch (err) { replace(status, errorBox(err, "Delete refused")); }
          }}})},
      ], models, {class: "models-table"}));
    }
    replace(pager,
      offset > 0 ? h("button", {type: "button", text: "← Newer", on: {click: () => { offset = Math.max(0, offset - PAGE); load(); }}}) : null,
      h("span", {class: "muted", text: `${list.total ? offset + 1 : 0}–${offset + models.length} of ${list.total}`}),
      offset + PAGE < list.total ? h("button", {type: "button", text: "Older →", on: {click: () => { offset += PAGE; load(); }}}) : null);
    schedule(models.some((m) => !FINAL.has(m.state)) ? 2000 : 15000);
  }

  function schedule(ms) {
    clearTimeout(timer);
    if (!stopped) timer = setTimeout(load, ms);
  }

  load();
  return () => { stopped = true; clearTimeout(timer); };
}
