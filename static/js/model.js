// A model's page: its build (live), the genetic search (live chart of every candidate, Pareto front,
// logbook, finalists, baselines), the held-out figures, confusions, the open-set operating point, every
// person's photos (used, skipped and why, quality), download, delete, and trying it on a photo.
import {api, download, errorBox} from "./api.js";
import {candidatesChart, generationColour, lineChart} from "./charts.js";
import {badge, count, fixed, h, pct, progressBar, replace, seconds, table, when} from "./dom.js";
import {deleteModel} from "./models.js";
import {tryIt} from "./tryit.js";
import {videoUpload} from "./video.js";

const FINAL = new Set(["done", "failed"]);

/** The shape and the training genes of a network (pareto front, finalists). */
function networkDetail(n) {
  if (!n) return "—";
  const genes = [`lr ${n.learning_rate}`, `batch ${n.batch_size}`];
  if (n.dropout) genes.push(`dropout ${n.dropout}`);
  if (n.l2) genes.push(`L2 ${n.l2}`);
  return `${networkName(n)} · ${genes.join(", ")}`;
}

export function networkName(n) {
  if (!n) return "—";
  const hidden = n.hidden && n.hidden.length ? `${n.hidden.join("-")} ${n.activation || ""}`.trim() : "no hidden layer";
  return `${hidden}, ${n.cosine ? "cosine" : "softmax"} head`;
}

const genomeKey = (g) => (g ? g.join(",") : "");

function card(title, value, note) {
  return h("div", {class: "card"}, h("div", {class: "card-title", text: title}), h("div", {class: "card-value", text: value}),
    note ? h("div", {class: "card-note", text: note}) : null);
}

export function modelPage(main, id, section) {
  let timer = null;
  let stopped = false;
  let job = null;
  let report = null;
  let searchWanted = null; // unknown until the first look
  let lastSearch = null;

  const title = h("h1", {text: "Model"});
  const meta = h("div", {class: "meta"});
  const downloadButton = h("button", {type: "button", id: "download-button", disabled: true, text: "Download the bundle"});
  const deleteButton = h("button", {type: "button", class: "danger", text: "Delete"});
  const actionsMsg = h("div", {class: "actions-msg"});
  const statusBox = h("section", {class: "status", id: "status"});
  const searchBox = h("section", {class: "search", id: "search", hidden: true});
  const resultsBox = h("section", {class: "results", id: "results", hidden: true});
  const peopleBox = h("section", {class: "people", id: "people", hidden: true});
  const tryBox = h("section", {class: "try", id: "try", hidden: true});
  const videoBox = h("section", {class: "try", id: "video", hidden: true});
  const nav = h("nav", {class: "sections"},
    h("a", {href: `#/model/${id}`, text: "Build"}),
    h("a", {href: `#/model/${id}/search`, text: "Search"}),
    h("a", {href: `#/model/${id}/results`, text: "Figures"}),
    h("a", {href: `#/model/${id}/people`, text: "People"}),
    h("a", {href: `#/model/${id}/try`, text: "Try it"}),
    h("a", {href: `#/model/${id}/unknown`, text: "Unknown faces"}));
  main.append(h("div", {class: "page-head"}, title, h("div", {class: "row"}, downloadButton, deleteButton)),
    meta, actionsMsg, nav, statusBox, searchBox, resultsBox, peopleBox, tryBox, videoBox);

  downloadButton.addEventListener("click", async () => {
    try {
      const size = await download(`models/${id}`, `recognizer-${id}.zip`);
      replace(actionsMsg, h("p", {class: "ok", text: `Downloaded (${count(size)} bytes).`}));
    } catch (err) { replace(actionsMsg, errorBox(err, "Download refused")); }
  });
  deleteButton.addEventListener("click", async () => {
    try {
      if (await deleteModel({id, name: job && job.name})) location.hash = "#/";
    } catch (err) { replace(actionsMsg, errorBox(err, "Delete refused")); }
  });

  function renderStatus() {
    replace(title, job.name || "Unnamed model");
    replace(meta, badge(job.state), " ", h("code", {text: job.id}), ` · ${count(job.people)} people · ${count(job.photos)} photos · created ${when(job.created)}`,
      job.attempts > 1 ? ` · attempt ${job.attempts}` : "");
    downloadButton.disabled = job.state !== "done";
    if (job.state === "failed") {
      replace(statusBox, h("h2", {text: "Build failed"}), errorBox(job.error || {}, "The build failed"));
    } else if (job.state === "done") {
      replace(statusBox, h("p", {class: "ok", text: `Built ${when(job.updated)}.`}));
    } else {
      const p = job.progress;
      replace(statusBox, h("h2", {text: "Building"}),
        progressBar(p.done, p.total, p.total && !/\d+ of \d+/.test(p.stage) ? `${p.stage}: ${p.done} of ${p.total}` : p.stage),
        h("p", {class: "muted", text: "queued → extracting faces → (searching networks) → training → done. This page follows it live."}));
    }
  }

  function renderSearch(view) {
    searchBox.hidden = false;
    const prog = view.progress || {};
    const cands = view.candidates || [];
    const front = new Set((view.pareto_front || []).map((p) => genomeKey(p.genome)));
    const chosen = view.chosen ? genomeKey(view.chosen.genome) : null;
    const generations = prog.generations || (view.controls && view.controls.generations) ||
      Math.max(1, ...cands.map((c) => c.generation || 0));
    const parts = [h("h2", {text: "Genetic search"})];
    const stats = [];
    if (prog.generation !== undefined) {
      stats.push(prog.phase === "confirming"
        ? `cross-validating ${prog.finalists} finalists: ${prog.fold_evaluations} of ${prog.fold_evaluations_planned} fold evaluations`
        : `generation ${prog.generation} of ${prog.generations}`);
      stats.push(`${count(prog.evaluations)} networks trained, ${count(prog.cache_hits)} answered by the cache`);
      stats.push(`${seconds(prog.seconds)} of ${seconds(prog.budget_s)}`);
      if (prog.best && prog.best.balanced_accuracy !== undefined) {
        stats.push(`best balanced accuracy ${pct(prog.best.balanced_accuracy)}, open set ${pct(prog.best.open_set)}, smallest ${count(prog.best.smallest_params)} parameters`);
      }
      if (prog.done) stats.push(`stopped: ${prog.stop_reason}`);
    }
    if (view.fallback) parts.push(h("p", {class: "warn", text: `No search: ${view.fallback}. The fixed network was trained.`}));
    parts.push(h("p", {class: "search-stats"}, stats.join(" · ")));
    if (cands.length) {
      const chart = candidatesChart(cands.map((c) => ({
        params: c.params, score: c.score, generation: c.generation,
        pareto: front.has(genomeKey(c.genome)), chosen: genomeKey(c.genome) === chosen,
        title: `generation ${c.generation ?? "?"}: ${networkName(c)}, ${count(c.params)} parameters, score ${fixed(c.score, 4)} (balanced accuracy ${pct(c.balanced_accuracy, 2)}, open set ${pct(c.open_set, 2)})`,
      })), generations);
      const shown = [...new Set([0, 0.25, 0.5, 0.75, 1].map((f) => Math.round(f * generations)))]; // a long search: a few
      const legend = h("div", {class: "legend"}, shown.map((g) =>
        h("span", {class: "legend-item"}, h("span", {class: "swatch", dataset: {generation: g}}), `generation ${g}`)),
      h("span", {class: "legend-item"}, "ringed: Pareto front; large: the pick"));
      for (const sw of legend.querySelectorAll(".swatch")) sw.style.backgroundColor = generationColour(Number(sw.dataset.generation), generations);
      parts.push(h("figure", {class: "chart-box", id: "candidates-chart", dataset: {candidates: cands.length}}, chart, h("figcaption", {},
        `Every network evaluated (${cands.length}): validation score (mean of balanced accuracy and open-set rate) against size, coloured by the generation it was bred for.`)), legend);
    } else if (view.requested) {
      parts.push(h("p", {class: "muted", text: "The search starts once every face is extracted."}));
    }
    if (view.chosen) {
      const c = view.chosen;
      parts.push(h("p", {class: "pick"}, h("strong", {text: "The pick: "}),
        `${networkDetail(c.network)}, ${count(c.params)} parameters; mean score over ${c.folds} folds ${fixed(c.score, 4)} (best ${fixed(c.best_score, 4)})`,
        view.choice_rule ? h("span", {class: "muted", text: ` — ${view.choice_rule}`}) : null));
    }
    if (view.baselines) parts.push(baselinesTable(view.baselines));
    if ((view.logbook || []).length) {
      parts.push(h("h3", {text: "Logbook"}), table([
        {title: "Generation", class: "num", cell: (l) => l.generation},
        {title: "Trained", class: "num", cell: (l) => count(l.evaluations)},
        {title: "Cache hits", class: "num", cell: (l) => count(l.cache_hits)},
        {title: "Seconds", class: "num", cell: (l) => fixed(l.seconds, 1)},
        {title: "Balanced accuracy max / mean / min", cell: (l) => `${pct(l.balanced_accuracy.max)} / ${pct(l.balanced_accuracy.mean)} / ${pct(l.balanced_accuracy.min)}`},
        {title: "Open set max / mean", cell: (l) => `${pct(l.open_set.max)} / ${pct(l.open_set.mean)}`},
        {title: "Parameters min / mean", cell: (l) => `${count(l.params.min)} / ${count(Math.round(l.params.mean))}`},
      ], view.logbook, {class: "logbook"}));
    }
    if ((view.pareto_front || []).length) {
      parts.push(h("h3", {text: `Pareto front (${view.pareto_front.length})`}), table([
        {title: "Network", cell: (p) => networkDetail(p.network)},
        {title: "Parameters", class: "num", cell: (p) => count(p.params)},
        {title: "Balanced accuracy", class: "num", cell: (p) => pct(p.balanced_accuracy, 2)},
        {title: "Open set", class: "num", cell: (p) => pct(p.open_set, 2)},
      ], view.pareto_front, {class: "pareto"}));
    }
    if ((view.finalists || []).length) {
      parts.push(h("h3", {text: `Finalists, cross-validated (${view.finalists.length})`}), table([
        {title: "Network", cell: (f) => networkDetail(f.network)},
        {title: "Parameters", class: "num", cell: (f) => count(f.params)},
        {title: "Mean score", class: "num", cell: (f) => fixed(f.score, 4)},
        {title: "Score per fold", cell: (f) => (f.fold_scores || []).map((s) => fixed(s, 3)).join(" · ")},
      ], view.finalists, {class: "finalists"}));
    }
    replace(searchBox, parts);
  }

  function baselinesTable(b) {
    const methods = [...new Set([...Object.keys(b.closed_set || {}), ...Object.keys(b.open_set || {})])];
    const rows = methods.map((m) => ({m, c: (b.closed_set || {})[m] || {}, o: (b.open_set || {})[m] || {}}));
    return h("div", {}, h("h3", {text: "Baselines beside the pick"}), table([
      {title: "Method", cell: (r) => h("span", {class: r.m.includes("bundle") ? "strong" : "", text: r.m})},
      {title: "Test accuracy", class: "num", cell: (r) => pct(r.c.test_accuracy, 2)},
      {title: "Balanced accuracy", class: "num", cell: (r) => pct(r.c.balanced_accuracy, 2)},
      {title: "Open set: right name accepted", class: "num", cell: (r) => pct(r.o.test_rate, 2)},
      {title: "Open set: false accepts", class: "num", cell: (r) => pct(r.o.test_far, 2)},
    ], rows, {class: "baselines"}), h("p", {class: "muted small", text: (b.held_out_people || []).length
      ? `Open set measured with ${b.held_out_people.length} people held out as strangers.` : ""}));
  }

  function renderResults() {
    const m = report.manifest;
    const metrics = m.metrics;
    const os = m.open_set || {};
    const people = m.people || [];
    const inModel = people.filter((p) => p.in_model).length;
    const skipped = people.reduce((n, p) => n + (p.skipped || []).length, 0);
    const used = people.reduce((n, p) => n + (p.used || 0), 0);
    resultsBox.hidden = false;
    const cards = h("div", {class: "cards"},
      card("Balanced accuracy", metrics ? pct(metrics.balanced_accuracy) : "—", metrics ? `on ${metrics.test_photos} held-out test photos` : "nothing to measure: one photo each"),
      card("Test accuracy", metrics ? pct(metrics.test_accuracy) : "—", metrics ? `classifier alone: ${pct(metrics.network_test_accuracy)}` : null),
      card("People in the model", `${inModel} of ${people.length}`, people.length > inModel ? `left out: ${people.filter((p) => !p.in_model).map((p) => p.label).join(", ")}` : null),
      card("Photos used", `${count(used)} of ${count(used + skipped)}`, skipped ? `${skipped} skipped (see People)` : "none skipped"),
      card("Network", `${count(m.network.params)} parameters`, networkName(m.network)),
      metrics && metrics.one_photo_people ? card("One-photo people", `${metrics.one_photo_people}`, `${metrics.one_photo_people_accepted_as_someone_else} taken for someone else`) : null);
    const points = os.operating_points || [];
    const curve = points.length ? lineChart([
      {name: "right name, accepted", points: points.filter((p) => p.test_dir !== null).map((p) => [p.target_far, p.test_dir])},
      {name: "accepted at all", points: points.filter((p) => p.test_accepted !== null).map((p) => [p.target_far, p.test_accepted])},
    ], {xlabel: "false-accept rate of strangers (expected)", ylabel: "share of test photos", title: "FAR/DIR trade-off", xlog: true, rates: true,
      marks: os.test_dir !== null && os.test_dir !== undefined ? [{x: os.target_far, y: os.test_dir, title: `this model: ${pct(os.target_far)} FAR, ${pct(os.test_dir)} DIR`}] : []}) : null;
    const confusions = (metrics && metrics.confusions) || [];
    replace(resultsBox,
      h("h2", {text: "Held-out figures"}), cards,
      h("p", {class: "muted small", text: (m.refit && m.refit.note) || ""}),
      h("h3", {text: "Who is taken for whom"}),
      confusions.length ? table([
        {title: "Person", cell: (c) => c.person}, {title: "Named as", cell: (c) => c.named},
        {title: "Test photos", class: "num", cell: (c) => c.photos},
        {title: "Of which accepted (a real mistake)", class: "num", cell: (c) => c.accepted},
      ], confusions, {class: "confusions"})
        : h("p", {class: "muted", text: metrics ? (metrics.confusions ? "No test photo was named as someone else." : "Not recorded in this bundle (built before confusions were kept).") : "No test photos."}),
      h("h3", {text: "Saying “unknown”: the operating point"}),
      h("div", {class: "cards"},
        card("Target false-accept rate", pct(os.target_far, 2), "of strangers, for the whole gallery"),
        card("Per person", pct(os.person_far, 3), "each person's share of it"),
        card("Thresholds", os.threshold_range ? `${fixed(os.threshold_range[0])}–${fixed(os.threshold_range[1])}` : "—", "distance to the person's template"),
        card("Recognised (DIR)", pct(os.test_dir), "test photos accepted with the right name"),
        card("Accepted", pct(os.test_accepted), "test photos accepted at all")),
      curve ? h("figure", {class: "chart-box", id: "operating-chart"}, curve, h("figcaption", {},
        "Thresholds calibrated for other target rates, applied to the same test photos: the FAR is what the model of strangers expects (a build has no strangers to measure it on), the DIR is measured. Ringed: this model.")) : null,
      points.length ? table([
        {title: "Target FAR", class: "num", cell: (p) => pct(p.target_far, 1)},
        {title: "Thresholds", cell: (p) => `${fixed(p.threshold_range[0])}–${fixed(p.threshold_range[1])}`},
        {title: "DIR", class: "num", cell: (p) => pct(p.test_dir)},
        {title: "Accepted", class: "num", cell: (p) => pct(p.test_accepted)},
      ], points, {class: "operating"}) : null,
      h("p", {class: "muted small", text: os.calibration || ""}));
  }

  function measured(p) {
    if (!p.in_model) return p.excluded || "not in the model";
    const m = p.measured;
    if (!m) return "—";
    if (m.as_stranger) {
      const s = m.as_stranger;
      return s.accepted_as ? `one photo: taken for ${s.accepted_as} (${fixed(s.score)} ≤ ${fixed(s.threshold)})`
        : `one photo: refused as anyone else (closest ${s.closest}, ${fixed(s.score)} > ${fixed(s.threshold)})`;
    }
    return `${m.named_right}/${m.test_photos} named right, ${m.accepted_right} accepted`;
  }

  function renderPeople() {
    const people = report.manifest.people || [];
    peopleBox.hidden = false;
    const reasons = (p) => {
      const by = {};
      for (const s of p.skipped || []) by[s.reason] = (by[s.reason] || 0) + 1;
      return Object.entries(by).map(([r, n]) => `${n} ${r.replace(/_/g, " ")}`).join(", ");
    };
    const poor = (p) => (p.quality || []).filter((q) => q.problems && q.problems.length).length;
    replace(peopleBox, h("h2", {text: `People (${people.length})`}), table([
      {title: "Person", cell: (p) => h("a", {href: `#/model/${id}/people`, class: "person", dataset: {label: p.label}, text: p.label,
        on: {click: (e) => { e.preventDefault(); const d = peopleBox.querySelector(`details[data-label="${CSS.escape(p.label)}"]`); if (d) { d.open = true; d.scrollIntoView(); } }}})},
      {title: "Photos", class: "num", cell: (p) => p.photos},
      {title: "Used", class: "num", cell: (p) => p.used},
      {title: "Skipped", cell: (p) => reasons(p) || "—"},
      {title: "Poor quality", class: "num", cell: (p) => poor(p) || "—"},
      {title: "Measured", cell: measured},
    ], people, {class: "people-table"}),
    h("h3", {text: "Every photo"}),
    people.map((p) => {
      const skippedFiles = new Map((p.skipped || []).map((s) => [s.file, s]));
      const several = new Map((p.several_faces || []).map((s) => [s.file, s]));
      const rows = [...(p.quality || []).map((q) => ({file: q.file, q})),
        ...(p.skipped || []).filter((s) => !(p.quality || []).some((q) => q.file === s.file)).map((s) => ({file: s.file, q: null}))];
      const details = h("details", {class: "person-photos", dataset: {label: p.label}},
        h("summary", {}, h("strong", {text: p.label}), ` — ${p.used} used of ${p.photos}${(p.skipped || []).length ? `, ${(p.skipped || []).length} skipped` : ""}`));
      // built when first opened: a large gallery has thousands of photos
      details.addEventListener("toggle", () => { if (details.open && details.children.length === 1) details.append(photosTable()); });
      const photosTable = () => table([
          {title: "File", cell: (r) => r.file},
          {title: "Used", cell: (r) => {
            const s = skippedFiles.get(r.file);
            if (s) return h("span", {class: "skipped", text: `skipped: ${s.reason.replace(/_/g, " ")}${s.detail ? ` (${s.detail})` : ""}`});
            const sev = several.get(r.file);
            return sev ? `yes (${sev.faces} faces, face #${sev.face_used + 1} used)` : "yes";
          }},
          {title: "Face px", class: "num", cell: (r) => (r.q ? r.q.face_px : "—")},
          {title: "Sharpness", class: "num", cell: (r) => (r.q ? fixed(r.q.sharpness, 1) : "—")},
          {title: "Yaw", class: "num", cell: (r) => (r.q ? fixed(r.q.yaw, 2) : "—")},
          {title: "Roll °", class: "num", cell: (r) => (r.q ? fixed(r.q.roll, 1) : "—")},
          {title: "Problems", cell: (r) => (r.q && r.q.problems.length ? h("span", {class: "warn", text: r.q.problems.join(", ")}) : "")},
        ], rows, {class: "photos-table"});
      return details;
    }));
  }

  async function poll() {
    if (stopped) return;
    try {
      job = await api(`is_available/${id}`);
    } catch (err) {
      replace(statusBox, errorBox(err, err.code === "NOT_FOUND" ? "No such model" : "Cannot read this model"));
      if (err.code !== "NOT_FOUND" && err.code !== "BAD_ID") schedule(5000);
      return;
    }
    renderStatus();
    if (searchWanted !== false && (!lastSearch || !FINAL.has(lastSearch.state))) {
      try {
        lastSearch = await api(`models/${id}/search`);
        searchWanted = lastSearch.requested;
        if (searchWanted) renderSearch(lastSearch);
      } catch (err) { if (err.code !== "NOT_READY") replace(searchBox, errorBox(err, "Cannot read the search")); }
    }
    if (job.state === "done" && !report) {
      try {
        report = await api(`models/${id}/report`);
        renderResults();
        renderPeople();
        tryBox.hidden = false;
        tryIt(tryBox, id);
        videoBox.hidden = false;
        videoUpload(videoBox, id);
        if (section) { const target = document.getElementById(section); if (target) target.scrollIntoView(); }
      } catch (err) { replace(resultsBox, errorBox(err, "Cannot read the report")); resultsBox.hidden = false; }
    }
    if (!FINAL.has(job.state) || (searchWanted && lastSearch && !FINAL.has(lastSearch.state))) schedule(job.state === "optimizing" ? 1500 : 1000);
  }

  function schedule(ms) {
    clearTimeout(timer);
    if (!stopped) timer = setTimeout(poll, ms);
  }

  poll();
  return () => {
    stopped = true;
    clearTimeout(timer);
    if (tryBox.cleanup) tryBox.cleanup();
  };
}
