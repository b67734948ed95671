// styleprefs review: one page over the JSON API of styleprefs/review/server.py. Text from the dataset is
// always set as text, never as HTML.
"use strict";

const state = { tab: "pairs", offset: 0, limit: 10, total: 0, rows: [], current: 0, filters: {},
                status: null, readOnly: false };
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function showError(message) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
}

// ------------------------------------------------------------------------------------ status and progress

async function refreshStatus() {
  let status;
  try {
    status = await api("/api/status");
  } catch (error) {
    showError(String(error.message || error));
    return;
  }
  const first = state.status === null;
  const decided = (s) => JSON.stringify([s.counts, s.pending]);
  // the dataset was rewritten (an --apply), or another tab or browser judged a pair: show it
  const changed = !first && (status.version !== state.status.version || decided(status) !== decided(state.status));
  state.status = status;
  $("dataset").textContent = status.dataset;
  $("n-pairs").textContent = `(${status.total})`;
  $("n-rejects").textContent = `(${status.rejects})`;
  $("n-quarantine").textContent = `(${status.quarantine})`;
  const c = status.counts;
  $("progress").textContent = `judged ${c.judged} · dropped ${c.dropped} · flipped ${c.flipped} · kept ${c.kept}` +
    ` · ${status.pending} decision${status.pending === 1 ? "" : "s"} not applied yet` +
    ` (styleprefs review DATASET --apply)`;
  state.readOnly = status.holder !== null;
  $("lock").hidden = !state.readOnly;
  $("lock").textContent = state.readOnly ?
    `Read-only: another styleprefs command (pid ${status.holder}) is writing this dataset. ` +
    "Decisions are possible again once it finishes." : "";
  for (const id of ["b-drop", "b-flip", "b-keep"]) $(id).disabled = state.readOnly;
  document.querySelectorAll(".pair .buttons button").forEach((b) => { b.disabled = state.readOnly; });
  if (first) setupFilters(status);
  if (changed) await load();
}

function setupFilters(status) {
  for (const editor of status.editors) $("f-editor").append(el("option", { value: editor }, editor));
  $("l-disagree").hidden = !status.original_labels;
  $("o-image").textContent = `image checker score > ${status.thresholds.image}`;
  $("o-text").textContent = `text classifier score ≥ ${status.thresholds.text}`;
  for (const column of status.scores) {
    $("ranges").append(el("label", {}, column, " ",
      el("input", { type: "number", step: "any", "data-bound": `min.${column}`, placeholder: "min" }), " – ",
      el("input", { type: "number", step: "any", "data-bound": `max.${column}`, placeholder: "max" })));
    $("f-sort").append(el("option", { value: column }, column));
  }
}

function readFilters() {
  const f = {};
  const text = $("f-q").value.trim();
  if (text) f.q = text;
  for (const [key, id] of [["editor", "f-editor"], ["decision", "f-decision"], ["flag", "f-flag"], ["sort", "f-sort"]]) {
    if ($(id).value) f[key] = $(id).value;
  }
  if ($("f-disagree").checked) f.disagree = "1";
  if (f.sort && $("f-desc").checked) f.desc = "1";
  document.querySelectorAll("[data-bound]").forEach((input) => {
    if (input.value !== "") f[input.dataset.bound] = input.value;
  });
  return f;
}

// ------------------------------------------------------------------------------------ loading a page

async function load() {
  const params = new URLSearchParams({ offset: state.offset, limit: state.limit });
  if (state.tab === "pairs") for (const [k, v] of Object.entries(state.filters)) params.set(k, v);
  try {
    const page = await api(`/api/${state.tab}?${params}`);
    state.total = page.total;
    state.rows = page.rows;
    showError("");
  } catch (error) {
    showError(String(error.message || error));
    state.rows = [];
  }
  state.current = Math.min(state.current, Math.max(0, state.rows.length - 1));
  render();
}

function render() {
  document.querySelectorAll(".tab").forEach((b) => b.classList.toggle("active", b.dataset.tab === state.tab));
  document.querySelectorAll("[data-tab-only]").forEach((n) => { n.hidden = n.dataset.tabOnly !== state.tab; });
  const last = Math.min(state.total, state.offset + state.rows.length);
  $("range").textContent = state.total ? `${state.offset + 1}–${last} of ${state.total}` : "nothing to show";
  $("b-page-prev").disabled = state.offset === 0;
  $("b-page-next").disabled = state.offset + state.limit >= state.total;
  const list = $("list");
  list.replaceChildren();
  if (state.tab === "rejects") list.append(rejectsTable());
  else state.rows.forEach((row, i) => list.append(state.tab === "pairs" ? pairCard(row, i) : quarantineCard(row)));
  markCurrent(false);
}

function score(value) {
  return typeof value === "number" ? value.toFixed(3) : "–";
}

function pairCard(row, i) {
  const tie = row.label_0 === row.label_1;
  const first = row.label_0 >= row.label_1 ? 0 : 1;  // the preferred image goes left
  const figure = (slot) => {
    const role = tie ? "tie" : slot === first ? "preferred" : "rejected";
    return el("figure", { class: role },
      el("img", { src: `/api/image/pairs/${row.row}/${slot}?v=${state.status.version}`, alt: `jpg_${slot}` }),
      el("figcaption", {}, `${role} · jpg_${slot} · label ${row[`label_${slot}`]}`));
  };
  const details = el("dl");
  const add = (name, value) => { if (value !== null && value !== undefined) details.append(el("dt", {}, name), el("dd", {}, value)); };
  add("style", row.style);
  add("editor", row.editor);
  add("source", row.source);
  add("edit_params", el("code", {}, row.edit_params));
  const gate = ["clip_direction", "clip_image", "clip_text_edit", "clip_text_original"];
  if (gate.some((c) => row[c] !== null)) add("gate scores", gate.map((c) => `${c} ${score(row[c])}`).join(" · "));
  if (row.safety_text_score !== null || row.safety_image_score_0 !== null || row.editor_nsfw !== null) {
    add("safety", `text ${score(row.safety_text_score)} · image_0 ${score(row.safety_image_score_0)} · ` +
      `image_1 ${score(row.safety_image_score_1)} · editor NSFW ${row.editor_nsfw ?? "–"}`);
  }
  if ("score_0" in row) add("relabel scores", `score_0 ${score(row.score_0)} · score_1 ${score(row.score_1)}`);
  if ("original_label_0" in row) add("original labels", `${row.original_label_0} / ${row.original_label_1}`);
  const d = row.decision;
  const decision = el("p", { class: "decision" },
    d ? `decision: ${d.action}${d.applied ? " (applied)" : ""}` : "not judged yet");
  const button = (action, key) => el("button", { onclick: (e) => { e.stopPropagation(); state.current = i; decide(action); } },
    `${action} (${key})`);
  const buttons = el("div", { class: "buttons" }, button("drop", "d"), button("flip", "f"), button("keep", "k"));
  buttons.querySelectorAll("button").forEach((b) => { b.disabled = state.readOnly; });
  return el("article", { class: `pair ${d ? d.action : ""}`, "data-i": i, onclick: () => { state.current = i; markCurrent(false); } },
    el("div", { class: "images" }, figure(first), figure(1 - first)),
    el("div", { class: "meta" }, el("p", { class: "caption" }, row.caption), details, decision, buttons));
}

function quarantineCard(row) {
  const images = row.images ? el("div", { class: "images blurred", title: "click to show or blur" },
    ...[0, 1].map((slot) => el("figure", {},
      el("img", { src: `/api/image/quarantine/${row.row}/${slot}?v=${state.status.version}`, alt: `jpg_${slot}` }),
      el("figcaption", {}, `jpg_${slot}`)))) :
    el("p", { class: "note" }, "no images stored (quarantined from its caption, before editing)");
  if (row.images) images.addEventListener("click", () => images.classList.toggle("blurred"));
  return el("article", { class: "quarantined" }, images,
    el("div", { class: "meta" }, el("p", { class: "caption" }, row.caption),
      el("dl", {}, el("dt", {}, "category"), el("dd", {}, row.category), el("dt", {}, "matched"), el("dd", {}, row.matched),
        el("dt", {}, "backend"), el("dd", {}, row.backend), el("dt", {}, "source"), el("dd", {}, row.source)),
      el("p", { class: "readonly" }, "Quarantine is read-only: images stay blurred until clicked.")));
}

function rejectsTable() {
  return el("table", {}, el("tr", {}, el("th", {}, "source"), el("th", {}, "caption"), el("th", {}, "reason")),
    ...state.rows.map((r) => el("tr", {}, el("td", {}, r.source), el("td", {}, r.caption), el("td", {}, r.reason))));
}

// ------------------------------------------------------------------------------------ moving and judging

function markCurrent(scroll = true) {
  document.querySelectorAll(".pair").forEach((n) => n.classList.toggle("current", Number(n.dataset.i) === state.current));
  const node = document.querySelector(".pair.current");
  if (node && scroll) node.scrollIntoView({ block: "nearest" });
}

async function move(step) {
  const next = state.current + step;
  if (next >= 0 && next < state.rows.length) {
    state.current = next;
    markCurrent();
  } else if (next >= state.rows.length && state.offset + state.limit < state.total) {
    state.offset += state.limit;
    state.current = 0;
    await load();
  } else if (next < 0 && state.offset > 0) {
    state.offset = Math.max(0, state.offset - state.limit);
    state.current = state.limit - 1;
    await load();
  }
}

async function decide(action) {
  const row = state.rows[state.current];
  if (state.tab !== "pairs" || !row) return;
  if (state.readOnly) {
    showError("Read-only while another styleprefs command writes this dataset.");
    return;
  }
  try {
    await api("/api/decide", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ row: row.row, pair: row.pair, action }) });
    row.decision = { action, applied: false };
    showError("");
    const i = state.current;
    render();
    state.current = i;
    await refreshStatus();
    await move(1);
  } catch (error) {
    showError(String(error.message || error));
    await refreshStatus();
  }
}

document.addEventListener("keydown", (event) => {
  if (event.target.closest && event.target.closest("input, select, textarea")) return;
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const actions = { d: "drop", f: "flip", k: "keep" };
  if (actions[event.key]) {
    event.preventDefault();
    decide(actions[event.key]);
  } else if (event.key === "ArrowRight" || event.key === "ArrowDown") {
    event.preventDefault();
    move(1);
  } else if (event.key === "ArrowLeft" || event.key === "ArrowUp") {
    event.preventDefault();
    move(-1);
  }
});

$("b-prev").addEventListener("click", () => move(-1));
$("b-next").addEventListener("click", () => move(1));
for (const action of ["drop", "flip", "keep"]) $(`b-${action}`).addEventListener("click", () => decide(action));
$("b-page-prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); state.current = 0; load(); });
$("b-page-next").addEventListener("click", () => { state.offset += state.limit; state.current = 0; load(); });
$("apply-filters").addEventListener("click", () => { state.filters = readFilters(); state.offset = 0; state.current = 0; load(); });
$("filters").addEventListener("keydown", (e) => { if (e.key === "Enter") $("apply-filters").click(); });
document.querySelectorAll(".tab").forEach((b) => b.addEventListener("click", () => {
  state.tab = b.dataset.tab;
  state.offset = 0;
  state.current = 0;
  load();
}));

(async () => {
  await refreshStatus();
  await load();
  setInterval(refreshStatus, 2000);
})();
