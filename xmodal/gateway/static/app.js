// The xmodal search page: no build step, no dependencies. It talks to the gateway only
// (POST /search, POST /search/upload); the URL carries a text query, so it can be shared.
"use strict";

const $ = (selector) => document.querySelector(selector);
const MODALITIES = ["text", "image", "audio"];

function chosenModalities() {
  const checked = [...document.querySelectorAll("input[name=modality]:checked")].map((box) => box.value);
  return checked.length === MODALITIES.length || checked.length === 0 ? null : checked;
}

// The active metadata filter, typed as the API takes it: chips add their values as they came in the
// reply (the string "2024" stays a string); only what the user types in #filter is parsed.
let activeFilter = {};

// What the user typed: a JSON object, or "album=summer, year=2024, public=true" ->
// {album: "summer", year: 2024, public: true}. Throws on a JSON text that is not an object.
function parseFilter(text) {
  if (text.trim().startsWith("{")) {
    let parsed;
    try { parsed = JSON.parse(text); } catch (e) { parsed = null; }
    if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
      throw new Error("filter: not a JSON object (or write key=value, key=value)");
    }
    return parsed;
  }
  const filter = {};
  for (const part of text.split(",")) {
    const at = part.indexOf("=");
    if (at <= 0) continue;
    const key = part.slice(0, at).trim();
    const raw = part.slice(at + 1).trim();
    if (/^-?\d+$/.test(raw)) filter[key] = Number(raw);
    else if (raw === "true" || raw === "false") filter[key] = raw === "true";
    else filter[key] = raw;
  }
  return filter;
}

function options() {
  const k = Math.max(1, Math.min(1000, parseInt($("#k").value, 10) || 10));
  if (filterProblem) throw new Error(filterProblem);
  return { k, modalities: chosenModalities(), filter: activeFilter };
}

function setStatus(text, isError = false) {
  $("#status").textContent = text;
  $("#status").classList.toggle("error", isError);
}

function updateUrl(q) {
  const { k, modalities } = options();
  const params = new URLSearchParams();
  if (q) params.set("q", q);
  if (modalities) params.set("modalities", modalities.join(","));
  if (k !== 10) params.set("k", String(k));
  if (Object.keys(activeFilter).length) params.set("filter", JSON.stringify(activeFilter));  // types survive
  const query = params.toString();
  history.replaceState(null, "", query ? `/?${query}` : "/");
}

async function show(response, what) {
  let reply;
  try {
    reply = await response.json();
  } catch (e) {
    setStatus(`${what}: the gateway answered ${response.status} without JSON`, true);
    return;
  }
  if (!reply.ok) {
    const error = reply.error || { code: "error", message: `HTTP ${response.status}` };
    setStatus(`${what}: ${error.code}: ${error.message}`, true);
    $("#results").replaceChildren();
    return;
  }
  setStatus(`${reply.hits.length} results for ${what} (the service took ${reply.took_ms.toFixed(1)} ms)`);
  $("#results").replaceChildren(...reply.hits.map(renderHit));
}

async function searchText(q) {
  $("#q").value = q;
  const what = `“${q}”`;
  try {
    updateUrl(q);
    setStatus(`searching for ${what}…`);
    const { k, modalities, filter } = options();
    const body = { query: { text: q }, k, with_thumbnails: true };
    if (modalities) body.modalities = modalities;
    if (Object.keys(filter).length) body.filter = filter;
    const response = await fetch("/search", {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
    });
    await show(response, what);
  } catch (e) {
    setStatus(`${what}: ${e.message}`, true);
  }
}

let previewUrl = null;  // the object URL of the query's preview, revoked when the next one replaces it

async function searchFile(file, label) {
  const preview = $("#query-preview");
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = null;
  if (file.type.startsWith("image/")) {
    previewUrl = URL.createObjectURL(file);
    preview.src = previewUrl;
    preview.hidden = false;
  } else {
    preview.removeAttribute("src");
    preview.hidden = true;
  }
  const what = label || file.name || "the file";
  try {
    updateUrl(null);
    setStatus(`searching with ${what}…`);
    const { k, modalities, filter } = options();
    const form = new FormData();
    form.append("file", file, file.name || "query");
    form.append("k", String(k));
    form.append("with_thumbnails", "true");
    if (modalities) form.append("modalities", modalities.join(","));
    if (Object.keys(filter).length) form.append("filter", JSON.stringify(filter));
    const response = await fetch("/search/upload", { method: "POST", body: form });
    await show(response, what);
  } catch (e) {
    setStatus(`${what}: ${e.message}`, true);
  }
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

async function moreLikeThis(hit) {
  const thumb = hit.thumbnail || {};
  if (hit.modality === "text" && thumb.text) return searchText(thumb.text);
  const url = hit.modality === "audio" ? thumb.audio : thumb.image;
  let blob;
  try {
    blob = await (await fetch(url)).blob();
  } catch (e) {
    setStatus(`more like ${hit.id}: ${e.message}`, true);
    return;
  }
  const name = hit.modality === "audio" ? "preview.wav" : "thumbnail.jpg";
  return searchFile(new File([blob], name, { type: blob.type }), `more like ${hit.id}`);
}

function renderHit(hit) {
  const thumb = hit.thumbnail || {};
  const media = element("div", { class: "media" });
  if (thumb.image) media.append(element("img", { class: "thumb", src: thumb.image, alt: `${hit.modality} ${hit.id}` }));
  if (thumb.audio) media.append(element("audio", { controls: "", preload: "none", src: thumb.audio }));
  if (thumb.text) media.append(element("p", { class: "caption", text: thumb.text }));
  if (!media.childElementCount) media.append(element("span", { class: "id", text: "no thumbnail stored" }));

  const cosine = hit.cosine == null ? "" : `cosine ${hit.cosine.toFixed(3)} in ${hit.space}`;
  const line = element("div", { class: "line" },
    element("span", { class: `badge ${hit.modality}`, text: hit.modality }),
    element("span", { class: "score", title: cosine, text: hit.score.toFixed(2) }));

  const meta = element("div", { class: "meta" });
  for (const [key, value] of Object.entries(hit.metadata || {})) {
    if (value === null || typeof value === "object" || typeof value === "number" && !Number.isInteger(value)) continue;
    const chip = element("button", { type: "button", title: "filter on this", text: `${key}=${value}` });
    chip.addEventListener("click", () => {
      activeFilter = { ...activeFilter, [key]: value };  // the value as the reply typed it
      $("#filter").value = JSON.stringify(activeFilter);  // shown as JSON, which reads back exactly
      $("#filter").classList.remove("error");
      if ($("#q").value.trim()) searchText($("#q").value.trim());
    });
    meta.append(chip);
  }

  const more = element("button", { type: "button", class: "more", text: "More like this" });
  const usable = hit.modality === "text" ? thumb.text : hit.modality === "audio" ? thumb.audio : thumb.image;
  if (usable) more.addEventListener("click", () => moreLikeThis(hit));
  else { more.disabled = true; more.title = "no stored media to search with"; }

  return element("article", { class: `hit ${hit.modality}`, "data-id": hit.id, "data-modality": hit.modality },
    media, line, element("code", { class: "id", text: hit.id }), meta, more);
}

// What the user typed into #filter becomes the active filter; a JSON text that is not an object
// is said in the status (and searches are refused) until it is fixed.
let filterProblem = null;
function typedFilter() {
  try {
    activeFilter = parseFilter($("#filter").value);
    filterProblem = null;
  } catch (e) {
    activeFilter = {};
    filterProblem = e.message;
  }
  $("#filter").classList.toggle("error", filterProblem !== null);
}

function setUp() {
  $("#filter").addEventListener("input", typedFilter);
  $("#search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const q = $("#q").value.trim();
    if (q) searchText(q);
  });
  const drop = $("#drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) searchFile(file);
  });
  $("#file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) searchFile(file);
  });

  const params = new URLSearchParams(location.search);
  const wanted = (params.get("modalities") || params.getAll("modality").join(",")).split(",").filter(Boolean);
  if (wanted.length) {
    for (const box of document.querySelectorAll("input[name=modality]")) box.checked = wanted.includes(box.value);
  }
  if (params.get("k")) $("#k").value = params.get("k");
  if (params.get("filter")) $("#filter").value = params.getAll("filter").join(", ");
  typedFilter();
  const q = (params.get("q") || "").trim();
  if (q) searchText(q);
}

setUp();
