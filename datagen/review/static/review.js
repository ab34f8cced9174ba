// The review page. Every value from the store is put into the document as text (text nodes, textContent,
// attribute values), never parsed as markup: this file never uses innerHTML, and the server's
// Content-Security-Policy allows no other script.
"use strict";

const token = new URLSearchParams(location.search).get("token") || "";
const state = { rel: null, offset: 0, limit: 50, total: 0, row: null, readOnly: false };
const $ = (id) => document.getElementById(id);

async function api(path, body) {
  const options = { headers: { Authorization: "Bearer " + token } };
  if (body !== undefined) {
    options.method = "POST";
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

// el("td", {class: "n"}, "text", child, ...): strings become text nodes, null and undefined are skipped
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const show = (value) => (value === null || value === undefined ? "" : String(value));
const num = (value, digits = 2) => (value === null || value === undefined ? "" : Number(value).toFixed(digits));

function table(headers, rows) {
  return el("table", {}, el("tr", {}, headers.map((h) => el("th", {}, h))),
    rows.map((r) => el("tr", {}, r.map((v) => (v instanceof Node ? el("td", {}, v)
      : el("td", typeof v === "number" ? { class: "n" } : {}, show(v)))))));
}

function say(text, isError) {
  const box = $("message");
  box.textContent = text;
  box.className = isError ? "error" : "";
}

function setReadOnly(readOnly, why) {
  state.readOnly = readOnly;
  const banner = $("banner");
  banner.hidden = !readOnly;
  banner.textContent = readOnly ? "Read-only: " + why : "";
  for (const button of document.querySelectorAll("#actions button")) button.disabled = readOnly;
}

// --- overview: funnel and judge agreement ---------------------------------------------------------------

async function loadOverview() {
  const o = await api("/api/overview");
  document.title = o.name + ": datagen review";
  $("title").textContent = o.name;
  $("who").textContent = "reviewing as " + o.reviewer + "; store " + o.store;
  setReadOnly(o.read_only, o.why);
  const select = $("rel");
  if (!select.options.length) {
    for (const r of o.relations) {
      const label = r.name + " (" + r.kind + (r.strategy ? ": " + r.strategy : "") + ", "
        + (r.rows === null ? "not in the store" : r.rows + " rows") + ")";
      select.append(el("option", { value: r.name }, label));
    }
    const curated = o.relations.find((r) => r.kind === "curated" && r.rows);
    const firstStep = o.relations.find((r) => r.kind === "step" && r.rows);
    select.value = (curated || firstStep || o.relations[0] || {}).name || "";
  }
  renderFunnel(o.funnel);
  renderAgreement(o.agreement);
}

function renderFunnel(f) {
  const out = [table(["step", "strategy", "requests", "done", "failed", "rows"],
    f.steps.map((s) => [s.step, s.strategy, s.requests, s.done, s.failed, s.rows]))];
  if (f.stages.length) {
    out.push(table(["curation stage", "rows in", "kept", "dropped", "commonest reasons for dropping"],
      f.stages.map((s) => [s.stage, s.rows_in, s.kept, s.dropped,
        s.reasons.map(([r, n]) => r + " (" + n + ")").join("; ")])));
    if (f.selected !== null) out.push(el("p", { class: "meta" }, f.selected + " rows in `curated`"));
  } else {
    out.push(el("p", { class: "note" }, f.curation ? "The curation block has not run yet."
      : "This spec has no curation block."));
  }
  const r = f.review;
  out.push(el("p", { class: "meta" }, "People: " + r.kept + " rows kept, " + r.dropped + " dropped, " + r.rated
    + " rated, " + r.edited + " edited" + (r.applied ? "." : "; run `datagen curate` for the funnel to show them.")));
  $("funnel").replaceChildren(...out);
}

function renderAgreement(list) {
  if (!list.length) {
    $("agreement").replaceChildren(el("p", { class: "note" },
      "No judge step with people's ratings yet: rate rows a judge scored (pass/fail or 1-5) to see how it agrees."));
    return;
  }
  $("agreement").replaceChildren(table(
    ["judge", "Cohen's kappa (pass/fail)", "rows", "agree", "judge pass at", "Spearman (1-5)", "rows"],
    list.map((a) => [a.judge, a.kappa_rows ? (a.kappa === null ? "undefined" : num(a.kappa)) : "",
      a.kappa_rows, a.observed === null ? "" : Math.round(100 * a.observed) + "%", a.pass_at,
      a.spearman_rows ? (a.spearman === null ? "undefined" : num(a.spearman)) : "", a.spearman_rows])));
}

// --- rows --------------------------------------------------------------------------------------------------

function rowQuery() {
  const params = new URLSearchParams({ rel: $("rel").value, offset: state.offset, limit: state.limit });
  for (const [id, key] of [["status", "status"], ["stage", "stage"], ["reason-filter", "reason"],
    ["score-min", "score_min"], ["score-max", "score_max"], ["q", "q"]]) {
    const value = $(id).value.trim();
    if (value) params.set(key, value);
  }
  return params;
}

function fateCell(r) {
  const who = r.human ? " by " + r.human.reviewer + (r.human.reason ? ": " + r.human.reason : "") : "";
  const why = !r.human && !r.kept && r.why ? r.why : "";
  return el("div", {}, el("span", { class: r.kept ? "kept" : "dropped" }, r.kept ? "kept" : "dropped"),
    el("span", { class: "col" }, who || why), r.edited ? el("span", { class: "col" }, "edited") : null);
}

async function loadRows() {
  let page;
  try {
    page = await api("/api/rows?" + rowQuery().toString());
  } catch (err) {
    $("count").textContent = err.message;
    $("rows").tBodies[0].replaceChildren();
    return;
  }
  state.total = page.total;
  setReadOnly(page.read_only, page.why);
  $("score-label").textContent = page.score;
  const stage = $("stage");
  const chosen = stage.value;
  stage.replaceChildren(el("option", { value: "" }, "any"), ...page.stages.map((s) => el("option", { value: s }, s)));
  stage.value = page.stages.includes(chosen) ? chosen : "";
  $("count").textContent = page.total + " rows match";
  const body = $("rows").tBodies[0];
  body.replaceChildren(...page.rows.map((r) => {
    const tr = el("tr", { "data-id": r.id, class: r.id === state.row ? "selected" : null }, el("td", {}, fateCell(r)),
      el("td", {}, el("span", { class: "col" }, r.id),
        r.preview.map(([col, text]) => el("div", {}, el("span", { class: "col" }, col),
          el("span", { class: "cell" }, show(text))))),
      el("td", { class: "n" }, num(r.score)));
    tr.addEventListener("click", () => loadStory(r.id));
    return tr;
  }));
  const last = Math.min(state.offset + state.limit, page.total);
  $("page-info").textContent = page.total ? (state.offset + 1) + "-" + last + " of " + page.total : "";
  $("prev").disabled = state.offset === 0;
  $("next").disabled = last >= page.total;
}

// --- one row's story ------------------------------------------------------------------------------------------

function section(title, ...content) {
  return content.some((c) => c !== null && c !== undefined) ? [el("h3", {}, title), ...content] : [];
}

function turns(messages) {
  return el("div", {}, messages.map((m) => el("div", { class: "turn " + show(m.role) },
    el("div", { class: "role" }, show(m.role) + (m.name ? " (" + m.name + ")" : "")),
    el("div", { class: "text" }, show(m.content)),
    m.tool_calls ? el("pre", {}, typeof m.tool_calls === "string" ? m.tool_calls : JSON.stringify(m.tool_calls, null, 1))
      : null)));
}

function heatStrip(labels) {
  // each token coloured by the teacher's probability of it: red (unlikely) to green (certain)
  return el("div", { class: "strip" }, labels.map((t) => {
    const p = t.p === null ? 0 : t.p;
    const span = el("span", {
      class: "tok",
      title: "p = " + num(p, 3) + "; top: " + t.top.map(([tok, q]) => JSON.stringify(tok) + " " + num(q, 3)).join(", "),
    }, show(t.token));
    span.style.backgroundColor = "hsl(" + Math.round(120 * p) + ", 75%, 80%)";
    return span;
  }));
}

function columnsTable(columns) {
  return table(["column", "value"], columns.map(([k, v]) => [k, el("span", { class: "cell" }, show(v))]));
}

function renderStory(s) {
  const out = [];
  out.push(...section("Decisions", s.decisions.length ? table(["stage", "by", "fate", "reason", "score", "duplicate of", "when"],
    s.decisions.map((d) => [d.stage, d.reviewer || d.owner, d.kept ? "kept" : "dropped", d.reason, num(d.score, 3),
      d.duplicate_of, d.created_at])) : el("p", { class: "note" }, "No decision about this row yet.")));
  if (s.input) out.push(...section("Input row (" + s.input.relation + " " + s.input.id + ")", columnsTable(s.input.columns)));
  if (s.messages) out.push(...section("Request (rendered messages)", turns(s.messages)));
  if (s.kind === "step") {
    const edited = s.revisions.length > 0;
    out.push(...section(edited ? "Reply (edited; curation and export read this)" : "Reply",
      el("div", { class: "text", id: "reply" }, show(s.current_reply)),
      el("p", { class: "meta" }, "teacher " + show(s.teacher) + "; finish reason " + show(s.finish_reason)
        + "; " + show(s.tokens.completion) + " completion tokens")));
    if (edited) out.push(...section("Reply as generated", el("div", { class: "text" }, show(s.reply))));
  }
  if (s.trace) out.push(...section("Reasoning trace", el("div", { class: "text" }, s.trace)));
  if (s.conversation) out.push(...section("Conversation / trajectory", turns(s.conversation)));
  if (s.tool_calls && s.tool_calls.length) out.push(...section("Tool calls", table(["turn", "#", "tool", "arguments", "result", "error", "s"],
    s.tool_calls.map((c) => [c.output_id, c.call_index, c.tool, c.arguments, c.result, c.error, num(c.seconds)]))));
  if (s.soft_labels && s.soft_labels.length) out.push(...section("Soft labels (" + s.soft_labels.length + " tokens: the teacher's probability of each, red 0 to green 1; "
    + "hover for the top-k)", heatStrip(s.soft_labels)));
  if (s.ratings.length) out.push(...section("Ratings", table(["by", "verdict", "score", "note", "when"],
    s.ratings.map((r) => [r.reviewer, r.verdict === null ? "" : (r.verdict ? "pass" : "fail"), r.score, r.note, r.created_at]))));
  if (s.revisions.length) out.push(...section("Edits", table(["edit", "replaces", "by", "reason", "text", "when"],
    s.revisions.map((r) => [r._id, r.previous_id, r.reviewer, r.reason, el("span", { class: "cell" }, r.text), r.created_at]))));
  const lineage = [...s.lineage.parents.map((l) => ["parent", l.role, l.id, ""]),
    ...s.lineage.children.map((l) => ["child", l.role, l.id, show(l.step)])];
  if (lineage.length) out.push(...section("Lineage", table(["", "role", "row", "step"], lineage)));
  out.push(...section(s.in_view ? "Columns" : "Columns (this row is not in its step's current view)",
    columnsTable(s.columns)));
  $("story-body").replaceChildren(...out);
}

async function loadStory(id) {
  let s;
  try {
    s = await api("/api/row/" + encodeURIComponent(id));
  } catch (err) {
    say(err.message, true);
    return;
  }
  state.row = id;
  for (const tr of $("rows").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.id === id);
  $("story").hidden = false;
  $("story-title").textContent = s.relation + " row " + s.id;
  $("edit-box").hidden = !s.editable;
  if (s.editable) $("edit-text").value = s.current_reply || "";
  renderStory(s);
  setReadOnly(s.read_only, s.why);
}

async function act(path, body, done) {
  try {
    await api(path, { row_id: state.row, ...body });
    say(done, false);
  } catch (err) {
    say(err.message, true);
    return;
  }
  await Promise.all([loadStory(state.row), loadRows(), loadOverview()]);
}

function wire() {
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    state.offset = 0;
    loadRows();
  });
  $("rel").addEventListener("change", () => { state.offset = 0; $("stage").value = ""; loadRows(); });
  $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); loadRows(); });
  $("next").addEventListener("click", () => { state.offset += state.limit; loadRows(); });
  $("keep").addEventListener("click", () => act("/api/decisions", { kept: true, reason: $("reason").value.trim() || null }, "kept"));
  $("drop").addEventListener("click", () => act("/api/decisions", { kept: false, reason: $("reason").value.trim() }, "dropped"));
  $("pass").addEventListener("click", () => act("/api/ratings", { verdict: "pass" }, "rated pass"));
  $("fail").addEventListener("click", () => act("/api/ratings", { verdict: "fail" }, "rated fail"));
  for (let n = 1; n <= 5; n++) {
    const button = el("button", { type: "button", "data-score": n }, String(n));
    button.addEventListener("click", () => act("/api/ratings", { score: n }, "rated " + n + " of 5"));
    $("scores").append(button);
  }
  $("save-edit").addEventListener("click", () => act("/api/edits",
    { text: $("edit-text").value, reason: $("edit-reason").value.trim() || null }, "edit saved as a new revision"));
}

document.addEventListener("DOMContentLoaded", async () => {
  wire();
  try {
    await loadOverview();
    await loadRows();
  } catch (err) {
    $("banner").hidden = false;
    $("banner").textContent = err.message;
  }
  document.body.dataset.ready = "1";
});
