// Unknown faces a model kept (keep_unknown): one row of chips per group, largest first; name a group (a
// person picker: the model's people, or a new name), merge the groups ticked, move a face out, discard a group.
// Chips need the API key, so they are fetched (api raw) and shown from blob: URLs, revoked when the page goes.
import {api, errorBox} from "./api.js";
import {confirmDialog} from "./models.js";
import {h, replace, when} from "./dom.js";

export function unknownPage(main, id) {
  let stopped = false;
  const urls = [];
  const msg = h("div", {class: "actions-msg", id: "unknown-msg"});
  const list = h("div", {class: "unknown-groups", id: "unknown-groups"});
  const picker = h("datalist", {id: "people-list"});
  const mergeButton = h("button", {type: "button", id: "merge-button", text: "Merge the groups ticked", disabled: true});
  main.append(
    h("div", {class: "page-head"}, h("h1", {text: "Unknown faces"}),
      h("a", {class: "button", href: `#/model/${id}`, text: "Back to the model"})),
    h("p", {class: "muted", text: "Faces this model could not name, grouped by likeness. Name a group to make a new "
      + "model that knows the person; merge groups of one person; move a face that is not theirs; discard the rest."}),
    msg, h("div", {class: "row"}, mergeButton), picker, list);

  const ticked = new Set();
  mergeButton.addEventListener("click", async () => {
    try {
      const answer = await api(`models/${id}/unknown/merge`, {method: "POST", body: JSON.stringify({clusters: [...ticked]}),
        json: true});
      replace(msg, h("p", {class: "ok", text: `Merged into one group of ${answer.size} faces.`}));
      load();
    } catch (err) { replace(msg, errorBox(err, "Merge refused")); }
  });

  async function chip(cluster, face) {
    const img = h("img", {alt: "an unknown face", width: 96, height: 96, class: "chip"});
    try {
      const resp = await api(`models/${id}/unknown/${cluster}/faces/${face}`, {raw: true});
      const url = URL.createObjectURL(await resp.blob());
      urls.push(url);
      img.src = url;
    } catch { img.alt = "chip unavailable"; }
    return img;
  }

  async function post(path, body) {
    return api(`models/${id}/unknown/${path}`, {method: "POST", body: JSON.stringify(body), json: true});
  }

  async function row(group) {
    const label = h("input", {type: "text", list: "people-list", placeholder: "who is this?", class: "name-input",
      "aria-label": "the person's name"});
    const tick = h("input", {type: "checkbox", class: "merge-tick", "aria-label": "merge this group",
      on: {change: () => {
        if (tick.checked) ticked.add(group.id); else ticked.delete(group.id);
        mergeButton.disabled = ticked.size < 2;
      }}});
    const nameButton = h("button", {type: "button", class: "primary small name-button", text: "Name"});
    nameButton.addEventListener("click", async () => {
      try {
        const answer = await post(`${group.id}/name`, {label: label.value});
        replace(msg, h("p", {class: "ok"}, `Building a new model that knows ${answer.named.label}: `,
          h("a", {href: `#/model/${answer.id}`, text: answer.id.slice(0, 8)}),
          ". The other groups move to it once it is built."));
        load();
      } catch (err) { replace(msg, errorBox(err, "Naming refused")); }
    });
    const discardButton = h("button", {type: "button", class: "danger small discard-button", text: "Discard"});
    discardButton.addEventListener("click", async () => {
      if (!await confirmDialog("Discard this group?", `Its ${group.size} face(s) are deleted.`, "Discard")) return;
      try {
        await api(`models/${id}/unknown/${group.id}`, {method: "DELETE"});
        load();
      } catch (err) { replace(msg, errorBox(err, "Discard refused")); }
    });
    const faces = await Promise.all(group.faces.slice(0, 40).map(async (face) => {
      const move = h("button", {type: "button", class: "link small move-button", text: "not them",
        title: "move this face to a group of its own"});
      move.addEventListener("click", async () => {
        try { await post(`${group.id}/faces/${face}/move`, {}); load(); } catch (err) { replace(msg, errorBox(err, "Move refused")); }
      });
      return h("figure", {class: "face", dataset: {face}}, await chip(group.id, face), move);
    }));
    return h("section", {class: "unknown-group", dataset: {cluster: group.id}},
      h("div", {class: "row"}, tick,
        h("strong", {text: `${group.size} face${group.size === 1 ? "" : "s"}`}),
        h("span", {class: "muted", text: ` seen ${when(group.first_seen)} – ${when(group.last_seen)}`})),
      h("div", {class: "faces"}, faces, group.size > 40 ? h("span", {class: "muted", text: `+${group.size - 40}`}) : null),
      h("div", {class: "row"}, label, nameButton, discardButton));
  }

  async function load() {
    ticked.clear();
    mergeButton.disabled = true;
    for (const url of urls.splice(0)) URL.revokeObjectURL(url);
    let answer;
    try {
      answer = await api(`models/${id}/unknown`);
    } catch (err) {
      replace(list, errorBox(err, "Cannot read the unknown faces"));
      return;
    }
    if (stopped) return;
    const rows = await Promise.all(answer.clusters.map(row));
    if (stopped) return;
    replace(list, answer.naming ? h("p", {class: "muted", text: `A group is being named ${answer.naming.label}: `
      + "the next one can be named on the new model once it is built."}) : null,
    rows.length ? rows : h("p", {class: "empty", text: "No unknown faces wait. A model keeps them when built with "
      + "keep_unknown=1, or for a prediction sent with keep_unknown=1."}));
  }

  // The picker's people: the first 500 of the model's people always, and as a name is typed, also those whose
  // label holds it (a model of thousands of people is never sent whole: GET /models/<id>/people pages it;
  // the browser itself narrows the options to what is typed).
  let first = [];
  let pickerAsked = 0;
  async function offer(q) {
    const asked = ++pickerAsked;
    try {
      const page = await api(`models/${id}/people?limit=${q ? 50 : 500}&q=${encodeURIComponent(q)}`);
      if (!q) first = page.people.map((p) => p.label);
      const labels = [...new Set([...first, ...page.people.map((p) => p.label)])];
      if (asked === pickerAsked) replace(picker, labels.map((label) => h("option", {value: label})));
    } catch { /* the picker keeps what it had: a new name still works */ }
  }
  let typing = 0;
  list.addEventListener("input", (e) => {
    if (!e.target.classList.contains("name-input") || first.length < 500) return; // all of them offered already
    clearTimeout(typing);
    typing = setTimeout(() => offer(e.target.value.trim()), 250);
  });
  offer("");
  load();
  return () => { stopped = true; for (const url of urls.splice(0)) URL.revokeObjectURL(url); };
}
