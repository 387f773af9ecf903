// The API reference, rendered from /openapi.json: operations by tag, their parameters, bodies, answers
// and a curl line each; then the schemas.
import {h, replace} from "./dom.js";

const main = document.getElementById("main");
const base = new URL(".", location.href).href.replace(/\/$/, "");

/** Text with `code` spans, as the document writes them (text nodes only). */
function rich(text) {
  return String(text || "").split("`").map((part, i) => (i % 2 ? h("code", {text: part}) : part));
}

function refName(schema) {
  return schema && schema.$ref ? schema.$ref.split("/").pop() : null;
}

function typeOf(schema) {
  if (!schema) return "";
  const name = refName(schema);
  if (name) return h("a", {href: `#schema-${name}`, text: name});
  if (schema.anyOf) return h("span", {}, schema.anyOf.map((s, i) => [i ? " | " : "", typeOf(s)]));
  if (schema.allOf) return h("span", {}, schema.allOf.map((s, i) => [i ? " & " : "", typeOf(s)]));
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (schema.const !== undefined) return JSON.stringify(schema.const);
  if (schema.type === "array") return h("span", {}, typeOf(schema.items), "[]");
  return [schema.type, schema.format ? ` (${schema.format})` : ""].join("");
}

function fields(schema) {
  const props = (schema && schema.properties) || {};
  const required = new Set((schema && schema.required) || []);
  const names = Object.keys(props);
  if (!names.length) return null;
  return h("table", {}, h("thead", {}, h("tr", {}, h("th", {text: "field"}), h("th", {text: "type"}), h("th", {text: "what"}))),
    h("tbody", {}, names.map((n) => h("tr", {},
      h("td", {}, h("code", {text: n}), required.has(n) ? " *" : ""), h("td", {}, typeOf(props[n])),
      h("td", {}, rich(props[n].description))))));
}

function curl(path, method, op) {
  const parts = ["curl"];
  if (method !== "get") parts.push(method === "post" ? "" : `-X ${method.toUpperCase()}`);
  const secured = op.security === undefined || op.security.length > 0;
  if (secured) parts.push('-H "X-API-Key: $FR_API_KEY"');
  const body = op.requestBody && op.requestBody.content["multipart/form-data"];
  if (body) {
    const props = body.schema.properties || {};
    if (props.archive) parts.push("-F archive=@people.zip");
    else if (props.image) parts.push("-F image=@photo.jpg");
  }
  const url = base + path.replace("{job_id}", "$ID").replace("{filename}", "console.css");
  parts.push(path.includes("?") ? `"${url}"` : url);
  return parts.filter(Boolean).join(" ");
}

function operation(path, method, op) {
  const secured = op.security === undefined || op.security.length > 0;
  const params = op.parameters || [];
  const body = op.requestBody ? Object.entries(op.requestBody.content) : [];
  return h("div", {class: "op", id: `${method}-${path}`},
    h("h3", {}, h("span", {class: `method ${method}`, text: method}), h("code", {text: path}), h("span", {text: op.summary}),
      h("span", {class: "lock", text: secured ? "API key" : "public"})),
    op.description ? h("p", {}, rich(op.description)) : null,
    params.length ? [h("h4", {text: "Parameters"}), h("table", {},
      h("tbody", {}, params.map((p) => h("tr", {}, h("td", {}, h("code", {text: p.name}), p.required ? " *" : ""),
        h("td", {text: p.in}), h("td", {}, typeOf(p.schema)), h("td", {}, rich(p.description))))))] : null,
    body.map(([type, media]) => [h("h4", {}, "Body ", h("code", {text: type})), fields(media.schema) || h("p", {}, typeOf(media.schema))]),
    h("h4", {text: "Answers"}),
    h("table", {}, h("tbody", {}, Object.entries(op.responses).map(([status, r]) => h("tr", {},
      h("td", {}, h("code", {text: status})), h("td", {}, rich(r.description)),
      h("td", {}, r.content ? Object.entries(r.content).map(([t, m]) => [typeOf(m.schema), " ", h("span", {class: "muted small", text: t})]) : ""))))),
    h("pre", {text: curl(path, method, op)}));
}

function schemaView(name, schema) {
  const parts = (schema.allOf || [schema]).map((s) => (refName(s) ? h("p", {}, "Has every field of ", typeOf(s), ".") : fields(s)));
  return h("div", {class: "op", id: `schema-${name}`}, h("h3", {}, h("code", {text: name})), parts);
}

async function main_() {
  let doc;
  try {
    doc = await (await fetch("openapi.json", {cache: "no-store"})).json();
  } catch (e) {
    replace(main, h("p", {class: "error", text: `openapi.json could not be read: ${e.message}`}));
    return;
  }
  const byTag = new Map((doc.tags || []).map((t) => [t.name, []]));
  for (const [path, ops] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const tag = (op.tags || ["other"])[0];
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push([path, method, op]);
    }
  }
  const tags = new Map((doc.tags || []).map((t) => [t.name, t.description]));
  replace(main,
    h("h1", {text: `${doc.info.title} ${doc.info.version}: the API`}),
    h("p", {}, rich(doc.info.description)),
    h("p", {}, "Send the key as ", h("code", {text: "X-API-Key: <key>"}), " (or ", h("code", {text: "Authorization: Bearer <key>"}),
      ") on every route marked “API key”. The machine-readable document: ", h("a", {href: "openapi.json", text: "openapi.json"}), "."),
    h("ul", {class: "toc"}, [...byTag.values()].flat().map(([path, method, op]) =>
      h("li", {}, h("a", {href: `#${method}-${path}`}, h("code", {text: `${method.toUpperCase()} ${path}`})), ` ${op.summary}`))),
    [...byTag.entries()].map(([tag, ops]) => [h("h2", {text: `${tag}${tags.get(tag) ? `: ${tags.get(tag)}` : ""}`}),
      ops.map(([path, method, op]) => operation(path, method, op))]),
    h("h2", {text: "Schemas"}),
    Object.entries(doc.components.schemas).map(([name, s]) => schemaView(name, s)));
  if (location.hash) { const el = document.getElementById(decodeURIComponent(location.hash.slice(1))); if (el) el.scrollIntoView(); }
  document.documentElement.dataset.ready = "1";
}

main_();
