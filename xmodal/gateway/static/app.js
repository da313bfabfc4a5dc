// The xmodal search page: no build step, no dependencies. It talks to the gateway only
// (POST /search, POST /search/upload); the URL carries a text query, so it can be shared.
"use strict";

const $ = (selector) => document.querySelector(selector);
const MODALITIES = ["text", "image", "audio"];

function chosenModalities() {
  const checked = [...document.querySelectorAll("input[name=modality]:checked")].map((box) => box.value);
  return checked.length === MODALITIES.length || checked.length === 0 ? null : checked;
}

// "album=summer, year=2024, public=true" -> {album: "summer", year: 2024, public: true}
function parseFilter(text) {
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
  return { k, modalities: chosenModalities(), filter: parseFilter($("#filter").value) };
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
  if ($("#filter").value.trim()) params.set("filter", $("#filter").value.trim());
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
  updateUrl(q);
  setStatus(`searching for “${q}”…`);
  const { k, modalities, filter } = options();
  const body = { query: { text: q }, k, with_thumbnails: true };
  if (modalities) body.modalities = modalities;
  if (Object.keys(filter).length) body.filter = filter;
  const response = await fetch("/search", {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  });
  await show(response, `“${q}”`);
}

async function searchFile(file, label) {
  const preview = $("#query-preview");
  if (file.type.startsWith("image/")) {
    preview.src = URL.createObjectURL(file);
    preview.hidden = false;
  } else {
    preview.hidden = true;
  }
  updateUrl(null);
  const what = label || file.name || "the file";
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
  const blob = await (await fetch(url)).blob();
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
      const current = $("#filter").value.trim();
      $("#filter").value = current ? `${current}, ${key}=${value}` : `${key}=${value}`;
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

function setUp() {
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
  const q = (params.get("q") || "").trim();
  if (q) searchText(q);
}

setUp();
