// Leash console: plain DOM, no dependencies. Data comes from /api/*.
"use strict";

let current = "live";
const token = () => sessionStorage.getItem("leash-token") || "";

async function api(path, options = {}) {
  // The console's own header: a session's changes need it, and a
  // cross-site form cannot send it.
  const headers = Object.assign({ "x-leash-console": "1" }, options.headers || {});
  if (token()) headers.authorization = "Bearer " + token();
  const resp = await fetch(path, Object.assign({}, options, { headers }));
  if (resp.status === 401) {
    const t = prompt("Admin token");
    if (t) { sessionStorage.setItem("leash-token", t); return api(path, options); }
  }
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error || resp.statusText);
  return body;
}

const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return e;
};
const num = (n, digits = 0) => (n ?? 0).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
const usd = (n) => num(n, 4);
const usd6 = (n) => num(n, 6);

function table(node, head, rows) {
  node.replaceChildren(
    el("thead", {}, el("tr", {}, ...head.map(([h, cls]) => el("th", cls ? { class: cls } : {}, h)))),
    el("tbody", {}, ...rows));
}

// Live traffic: the newest records first, then each new one as the audit
// writer puts it on disk (server-sent events on /api/live, read with fetch
// so the admin token can go in a header).
const seen = [];
let liveState = "connecting";
// `admin.trace_url`: where a trace id opens (a tracing UI), if configured.
let traceUrl = null;
function filters() {
  const data = new FormData(document.getElementById("filters"));
  const q = new URLSearchParams();
  for (const [k, v] of data) if (v) q.set(k, v);
  return q;
}
function matches(r, q) {
  const caller = r.caller || {};
  const action = (r.policy && r.policy.action) || "allow";
  if (r.event) return false;
  for (const k of ["provider", "model"]) if (q.get(k) && r[k] !== q.get(k)) return false;
  if (q.get("team") && caller.team !== q.get("team")) return false;
  if (q.get("action") && action !== q.get("action")) return false;
  if (q.get("trace_id") && r.trace_id !== q.get("trace_id")) return false;
  if (q.get("bucket") && !(r.ts || "").startsWith(q.get("bucket"))) return false;
  const c = q.get("caller");
  if (c && !["exe", "user", "comm", "container", "cgroup"].some((k) => (caller[k] || "").includes(c))) return false;
  return true;
}
function renderLive() {
  const tbody = document.querySelector("#live-table tbody");
  tbody.replaceChildren(...seen.map(recordRow));
  // An empty trail says what to do next; empty filters say so.
  const filtered = [...filters().keys()].length > 0;
  document.getElementById("live-empty").hidden = seen.length > 0 || filtered;
  document.getElementById("live-none").hidden = seen.length > 0 || !filtered;
  document.getElementById("status").textContent = `${seen.length} requests shown · live feed ${liveState}`;
}
async function refreshLive() {
  const q = filters();
  q.set("limit", "200");
  const { records, trace_url } = await api("/api/records?" + q);
  traceUrl = trace_url || null;
  seen.length = 0;
  seen.push(...records);
  renderLive();
}
function onEvent(text) {
  let name = "message", data = "";
  for (const line of text.split("\n")) {
    if (line.startsWith("event:")) name = line.slice(6).trim();
    else if (line.startsWith("data:")) data += line.slice(5).trim();
  }
  if (name !== "record") return;
  const r = JSON.parse(data);
  if (!matches(r, filters())) return;
  seen.unshift(r);
  seen.length = Math.min(seen.length, 500);
  if (current === "live") renderLive();
}
async function follow() {
  for (;;) {
    try {
      const headers = token() ? { authorization: "Bearer " + token() } : {};
      const resp = await fetch("/api/live", { headers });
      if (!resp.ok) throw new Error(resp.statusText);
      liveState = "connected";
      document.body.dataset.live = "connected";
      if (current === "live") renderLive();
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          onEvent(buf.slice(0, i));
          buf = buf.slice(i + 2);
        }
      }
    } catch (e) { /* reconnect below */ }
    liveState = "reconnecting";
    document.body.dataset.live = "reconnecting";
    await new Promise((r) => setTimeout(r, 2000));
  }
}

function recordRow(r) {
  const action = (r.policy && r.policy.action) || "allow";
  const caller = r.caller || {};
  const tr = el("tr", { "data-id": r.id },
    el("td", {}, (r.ts || "").replace("T", " ").slice(0, 19)),
    el("td", {}, r.mode || ""),
    el("td", {}, r.provider || ""),
    el("td", {}, r.model || ""),
    el("td", { class: "num" }, String(r.status ?? "")),
    el("td", {}, caller.exe || caller.addr || ""),
    el("td", {}, caller.team || ""),
    el("td", { class: action }, action),
    el("td", { class: "num" }, r.usage ? `${num(r.usage.input_tokens)} / ${num(r.usage.output_tokens)}` : ""),
    el("td", { class: "num" }, r.cost_usd != null ? usd6(r.cost_usd) : ""),
    el("td", { class: "num" }, r.latency_ms != null ? num(r.latency_ms, 1) : ""));
  tr.addEventListener("click", () => {
    document.getElementById("record").textContent = JSON.stringify(r, null, 2);
    document.getElementById("record-raw").hidden = false;
    showCard(r);
    showTrace(r);
    showContentButton(r);
  });
  return tr;
}

// A record as a readable card: who, what, the policy's outcome, usage
// and cost, timings. The raw JSON is one click away (details below).
function showCard(r) {
  const c = r.caller || {};
  const p = r.policy || {};
  const u = r.usage;
  const section = (title, rows) => el("section", {}, el("h3", {}, title),
    el("dl", {}, ...rows.filter(([, v]) => v !== undefined && v !== null && v !== "")
      .flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))])));
  const card = document.getElementById("record-card");
  card.hidden = false;
  card.replaceChildren(
    section("Who", [["team", c.team], ["process", c.exe || c.comm], ["pid", c.pid], ["user", c.user ?? c.uid],
      ["container", c.container], ["cgroup", c.cgroup], ["address", c.addr], ["key", r.key_id], ["mode", r.mode]]),
    section("What", [["provider", r.provider], ["model", r.model], ["endpoint", r.endpoint], ["stream", r.stream ? "yes" : "no"],
      ["route", r.unified && r.unified.route], ["time", (r.ts || "").replace("T", " ").slice(0, 19)]]),
    section("Outcome", [["status", r.status ?? "no answer"], ["policy", p.action || "allow"], ["rules", (p.rules || []).join(", ")],
      ["findings", (p.findings || []).map((f) => `${f.detector} ×${f.count}`).join(", ")], ["shadow", p.shadow ? "yes (not enforced)" : ""],
      ["error", r.error], ["completed", r.completed ? "yes" : "no"]]),
    section("Usage and cost", [["tokens in", u ? num(u.input_tokens) : ""], ["tokens out", u ? num(u.output_tokens) : ""],
      ["cached", u && u.cached_tokens ? num(u.cached_tokens) : ""], ["cost $", r.cost_usd != null ? usd6(r.cost_usd) : "unpriced"],
      ["estimated", r.usage_estimated ? "yes (stream ended early)" : ""]]),
    section("Timings", [["total ms", num(r.latency_ms, 1)], ["first byte ms", r.ttfb_ms != null ? num(r.ttfb_ms, 1) : ""],
      ["in Leash ms", num(r.overhead_ms, 3)]]),
  );
}

// The trace of the record shown: its id, a link to the tracing UI
// (`admin.trace_url`), and every record of the same trace.
function showTrace(r) {
  const box = document.getElementById("record-trace");
  box.hidden = !r.trace_id;
  if (!r.trace_id) return;
  const parts = ["Trace ", el("code", {}, r.trace_id), " · span ", el("code", {}, r.span_id || "")];
  if (traceUrl) {
    parts.push(" · ", el("a", { id: "trace-link", href: traceUrl.replace("{trace_id}", encodeURIComponent(r.trace_id)), target: "_blank", rel: "noopener noreferrer" }, "open in tracing"));
  }
  const same = el("button", { type: "button", id: "trace-records" }, "records of this trace");
  same.onclick = () => {
    document.querySelector('#filters [name="trace_id"]').value = r.trace_id;
    refreshLive();
  };
  parts.push(" · ", same);
  box.replaceChildren(...parts);
}

// Captured content of the record shown: redacted content on request (the
// read is recorded in the audit trail); sealed content never comes here.
function showContentButton(r) {
  const button = document.getElementById("record-content");
  const body = document.getElementById("record-content-body");
  const c = r.content || {};
  body.hidden = true;
  button.hidden = !c.sha256;
  button.disabled = c.class !== "redacted";
  button.textContent = c.class === "sealed"
    ? "Content sealed: opens only with an auditor's identity (leash audit show --identity)"
    : "Show captured content (this read is recorded in the audit trail)";
  button.onclick = async () => {
    body.hidden = false;
    try { body.textContent = JSON.stringify(await api(`/api/records/${encodeURIComponent(r.id)}/content`), null, 2); }
    catch (e) { body.textContent = "not shown: " + e.message; }
  };
}
function totalsRows(groups) {
  return Object.entries(groups).map(([name, t]) => el("tr", {},
    el("td", {}, name), el("td", { class: "num" }, num(t.requests)),
    el("td", { class: "num" }, num(t.input_tokens)), el("td", { class: "num" }, num(t.output_tokens)),
    el("td", { class: "num" }, usd6(t.cost_usd))));
}
const totalsHead = [["name"], ["requests", "num"], ["input tokens", "num"], ["output tokens", "num"], ["cost $", "num"]];
// The traffic chart above the live table; a click on a bucket lists that
// bucket's requests in the table (and the live feed adds only those).
const formatFor = (metric) => metric === "cost_usd" ? (v) => "$" + usd(v)
  : metric === "overhead" ? (v) => num(v, 3) + " ms" : (v) => num(v);
// Answers can arrive out of order: only the latest request draws.
const drawn = { traffic: 0, spend: 0 };
async function refreshTraffic() {
  const q = new URLSearchParams(new FormData(document.getElementById("traffic-controls")));
  const seq = ++drawn.traffic;
  const series = await api("/api/series?" + q);
  if (seq !== drawn.traffic) return;
  const draw = series.metric === "overhead" ? lineChart : stackedChart;
  draw(document.getElementById("chart-traffic"), series, formatFor(series.metric), (b) => setBucket(b.start));
}
function setBucket(start) {
  document.getElementById("filters").elements.namedItem("bucket").value = start || "";
  const chip = document.getElementById("bucket-filter");
  chip.hidden = !start;
  chip.querySelector("span").textContent = start ? `only ${start.replace("T", " ")} (UTC)` : "";
  refreshLive().catch(() => {});
}
async function showLive() {
  await Promise.all([refreshLive(), refreshTraffic()]);
}

async function refreshChart() {
  const f = new FormData(document.getElementById("chart-controls"));
  const q = new URLSearchParams(f);
  const seq = ++drawn.spend;
  const series = await api("/api/series?" + q);
  if (seq !== drawn.spend) return;
  const format = formatFor(series.metric);
  stackedChart(document.getElementById("chart-spend"), series, format, (b) => {
    document.getElementById("chart-note").textContent = `${b.start} (UTC): ${format(b.total)} ${series.metric === "cost_usd" ? "" : series.metric}`;
    table(document.getElementById("chart-detail"), [[series.by], [series.metric, "num"]],
      Object.entries(b.parts).sort((a, c) => c[1] - a[1]).map(([p, v]) => el("tr", {}, el("td", {}, p), el("td", { class: "num" }, format(v)))));
  });
}

async function refreshSpend() {
  refreshChart().catch(() => {});
  const s = await api("/api/spend");
  const t = s.total || {};
  document.getElementById("spend-total").replaceChildren(
    el("div", { class: "card", id: "total-requests" }, el("b", {}, num(t.requests)), "requests"),
    el("div", { class: "card", id: "total-tokens" }, el("b", {}, num((t.input_tokens || 0) + (t.output_tokens || 0))), "tokens"),
    el("div", { class: "card", id: "total-cost" }, el("b", {}, "$" + usd(t.cost_usd)), "spend"));
  table(document.getElementById("spend-budgets"),
    [["budget"], ["scope"], ["period"], ["limit $", "num"], ["spent $", "num"], ["remaining $", "num"]],
    s.budgets.map((b) => el("tr", {}, el("td", {}, b.name),
      el("td", {}, [b.team && "team " + b.team, b.provider, b.model].filter(Boolean).join(", ") || "all"),
      el("td", {}, b.period), el("td", { class: "num" }, usd(b.limit_usd)),
      el("td", { class: "num" }, usd6(b.spent_usd)),
      el("td", { class: b.remaining_usd < 0 ? "num block" : "num" }, usd6(b.remaining_usd)))));
  table(document.getElementById("spend-team"), totalsHead, totalsRows(s.by_team));
  table(document.getElementById("spend-provider"), totalsHead, totalsRows(s.by_provider));
  table(document.getElementById("spend-model"), totalsHead, totalsRows(s.by_model));
  table(document.getElementById("spend-callers"), totalsHead,
    totalsRows(Object.fromEntries(s.top_callers.map((c) => [c.caller, c.totals]))));
  table(document.getElementById("spend-hours"), totalsHead, totalsRows(s.by_hour));
}

async function refreshViolations() {
  const range = new FormData(document.getElementById("violations-controls")).get("range");
  api("/api/series?metric=violations&range=" + encodeURIComponent(range))
    .then((s) => stackedChart(document.getElementById("chart-violations"), s, (v) => num(v)))
    .catch(() => {});
  const v = await api("/api/violations");
  table(document.getElementById("violations-rules"), [["rule"], ["requests", "num"], ["detectors"]],
    Object.entries(v.by_rule).map(([rule, x]) => el("tr", {}, el("td", {}, rule),
      el("td", { class: "num" }, num(x.requests)),
      el("td", {}, Object.entries(x.detectors).map(([d, n]) => `${d} ×${n}`).join(", ")))));
  table(document.getElementById("violations-hours"), [["hour"], ["block", "num"], ["redact", "num"], ["alert", "num"]],
    Object.entries(v.by_hour).map(([h, x]) => el("tr", {}, el("td", {}, h),
      el("td", { class: "num" }, num(x.block)), el("td", { class: "num" }, num(x.redact)), el("td", { class: "num" }, num(x.alert)))));
  table(document.getElementById("violations-recent"),
    [["time"], ["provider"], ["model"], ["action"], ["rules"], ["caller"]],
    v.recent.map((r) => {
      const tr = el("tr", {}, el("td", {}, (r.ts || "").slice(0, 19)), el("td", {}, r.provider || ""),
        el("td", {}, r.model || ""), el("td", { class: r.policy.action }, r.policy.action || ""),
        el("td", {}, (r.policy.rules || []).join(", ")), el("td", {}, (r.caller || {}).exe || (r.caller || {}).addr || ""));
      // Drill-down: the whole record (findings by detector, never the matched text).
      tr.addEventListener("click", () => {
        const pre = document.getElementById("violation-record");
        pre.hidden = false;
        pre.textContent = JSON.stringify(r, null, 2);
      });
      return tr;
    }));
}

async function refreshTools() {
  const t = await api("/api/tools");
  const list = (m) => Object.entries(m).sort((a, b) => b[1] - a[1]).map(([k, n]) => `${k} ×${n}`).join(", ");
  table(document.getElementById("tools-table"),
    [["tool"], ["offered", "num"], ["called", "num"], ["blocked", "num"], ["teams"], ["callers"]],
    t.tools.map(({ tool, use: u }) => el("tr", {}, el("td", {}, tool),
      el("td", { class: "num" }, num(u.offered)), el("td", { class: "num" }, num(u.called)),
      el("td", { class: u.blocked ? "num block" : "num" }, num(u.blocked)),
      el("td", {}, list(u.teams)), el("td", {}, u.callers.join(", ")))));
}

async function refreshPolicy() {
  const p = await api("/api/policy");
  const summary = document.getElementById("policy-summary");
  if (p.fleet) {
    summary.textContent = "The fleet console: each host enforces its own policy; open that host's console to see it.";
    document.getElementById("policy-rules").replaceChildren();
  } else if (!p.active) {
    summary.textContent = "No policy is loaded: every request is allowed.";
    document.getElementById("policy-rules").replaceChildren();
  } else {
    summary.textContent = `Mode ${p.active.mode}; bodies policy cannot read: ${p.active.on_unparseable}; file ${p.file || "(inline in the config)"}` +
      (p.editable ? ". Rules are evaluated top to bottom: the first matching block or allow decides." : "");
  }
  document.getElementById("rule-add").hidden = true;
  if (p.fleet || !p.active) {
    // nothing more to list
  } else if (!renderRules(p)) {
    table(document.getElementById("policy-rules"), [["rule"], ["action"], ["direction"], ["detectors"], ["shadow"]],
      p.active.rules.map((r) => el("tr", {}, el("td", {}, r.name), el("td", { class: r.action }, r.action),
        el("td", {}, r.direction), el("td", {}, r.detectors.join(", ")), el("td", {}, r.shadow ? "yes" : ""))));
  }
  document.getElementById("policy-yaml").textContent = p.yaml || "";
  const candidate = document.getElementById("replay").candidate;
  if (!candidate.value) candidate.value = p.yaml || "version: 1\nrules: []\n";
  const editor = document.getElementById("policy-editor");
  editor.hidden = !p.editable;
  document.getElementById("policy-yaml").hidden = p.editable;
  if (p.editable) editor.yaml.value = p.yaml || "";
  document.getElementById("policy-edit-note").textContent = p.editable
    ? "Saving checks the policy as `leash policy check` does, then replaces the file; the previous policy stays if it is invalid."
    : "Read-only (admin.allow_policy_edit is off, or the policy is inline in the config).";
  table(document.getElementById("policy-history"), [["time"], ["trigger"], ["result"]],
    (p.history || []).map((h) => el("tr", {}, el("td", {}, h.ts), el("td", {}, h.trigger),
      el("td", { class: h.ok ? "" : "block" }, h.ok ? "loaded" : "refused: " + h.error))));
}

// Replay: the candidate against the recorded traffic, changes per rule
// and team with example record ids.
async function runReplay(ev) {
  ev.preventDefault();
  const f = new FormData(ev.target);
  const summary = document.getElementById("replay-summary");
  const changes = document.getElementById("replay-changes");
  summary.textContent = "replaying…";
  try {
    const r = await api("/api/policy/replay?since=" + encodeURIComponent(f.get("since") || ""), {
      method: "POST", headers: { "content-type": "application/yaml" }, body: f.get("candidate") });
    summary.textContent = `Replayed ${num(r.records)} requests (${num(r.with_content)} with captured content, ${num(r.metadata_only)} on metadata only)` +
      (r.truncated ? " — only the first ones: narrow the window" : "") +
      (r.changes.length ? "." : ": no request would be treated differently.");
    const kv = (o) => Object.entries(o || {}).map(([k, v]) => `${k} (${v})`).join(", ");
    table(changes, [["live"], ["candidate"], ["requests", "num"], ["rules"], ["teams"], ["examples"]],
      r.changes.map((c) => el("tr", {}, el("td", { class: c.from }, c.from), el("td", { class: c.to }, c.to),
        el("td", { class: "num" }, num(c.count)), el("td", {}, kv(c.rules)), el("td", {}, kv(c.teams)),
        el("td", {}, c.examples.join(" ")))));
  } catch (e) {
    summary.textContent = "not replayed: " + e.message;
    changes.replaceChildren();
  }
}

async function savePolicy(ev) {
  ev.preventDefault();
  const out = document.getElementById("policy-save-result");
  try {
    await api("/api/policy", { method: "PUT", headers: { "content-type": "application/yaml" }, body: ev.target.yaml.value });
    await refreshPolicy();
    out.textContent = "saved and loaded";
  } catch (e) { out.textContent = "not saved: " + e.message; }
}

async function runPlayground(ev) {
  ev.preventDefault();
  const f = new FormData(ev.target);
  const provider = f.get("provider");
  const prompt = f.get("prompt");
  const body = provider === "anthropic"
    ? { model: "claude-sonnet-4", max_tokens: 100, messages: [{ role: "user", content: prompt }] }
    : provider === "google"
      ? { contents: [{ role: "user", parts: [{ text: prompt }] }] }
      : { model: "gpt-4o-mini", messages: [{ role: "user", content: prompt }] };
  const out = document.getElementById("playground-result");
  try {
    const d = await api("/api/policy/test", { method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ provider, endpoint: f.get("endpoint"), body }) });
    out.textContent = JSON.stringify(d, null, 2);
  } catch (e) { out.textContent = "error: " + e.message; }
}

// Virtual keys: team, limits, spend and last use — never a key.
const when = (secs) => (secs ? new Date(secs * 1000).toISOString().slice(0, 19).replace("T", " ") : "");
async function refreshKeys() {
  const k = await api("/api/keys");
  document.getElementById("keys-note").textContent = k.enabled
    ? "Keys are made with `leash keys create`; the secret is shown once and never stored. Revoking holds within a second."
    : k.note;
  const limit = (v, unit) => (v == null ? "" : `${num(v)} ${unit}`);
  table(document.getElementById("keys-table"),
    [["id"], ["team"], ["models"], ["routes"], ["rate"], ["tokens"], ["budget $", "num"], ["spent $", "num"],
      ["last used (UTC)"], ["expires (UTC)"], ["state"], [""]],
    k.keys.map((key) => {
      const button = el("button", { type: "button", "data-revoke": key.id }, "Revoke");
      button.disabled = key.state !== "active";
      button.addEventListener("click", async () => {
        if (!confirm(`Revoke key ${key.id} (team ${key.team})? Applications using it stop working.`)) return;
        const out = document.getElementById("keys-result");
        try {
          await api(`/api/keys/${encodeURIComponent(key.id)}/revoke`, { method: "POST" });
          out.textContent = `revoked ${key.id}`;
          await refreshKeys();
        } catch (e) { out.textContent = "not revoked: " + e.message; }
      });
      return el("tr", { "data-key": key.id }, el("td", {}, key.id), el("td", {}, key.team),
        el("td", {}, key.models.join(", ") || "any"), el("td", {}, key.routes.join(", ") || "any"),
        el("td", {}, limit(key.rate_per_min, "/min")), el("td", {}, limit(key.tokens_per_min, "/min")),
        el("td", { class: "num" }, key.budget_usd == null ? "" : `${usd(key.budget_usd)}/${key.budget_period}`),
        el("td", { class: "num" }, usd6(key.spent_usd)), el("td", {}, when(key.last_used)),
        el("td", {}, when(key.expires)), el("td", { class: key.state === "active" ? "" : "block" }, key.state),
        el("td", {}, button));
    }));
}

async function refreshInterception() {
  const i = await api("/api/interception");
  document.getElementById("interception").textContent = JSON.stringify(i, null, 2);
}

const pages = { live: showLive, spend: refreshSpend, violations: refreshViolations, tools: refreshTools, policy: refreshPolicy, keys: refreshKeys, interception: refreshInterception };
async function show(name) {
  const page = pages[name] ? name : "live";
  current = page;
  for (const s of document.querySelectorAll(".page")) s.hidden = s.id !== "page-" + page;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === page);
  // Marked loaded only by its own load: a slower load of the page shown
  // before must not mark this one before its data is in.
  try { await pages[page](); if (current === page) document.body.dataset.loaded = page; }
  catch (e) { document.getElementById("status").textContent = "error: " + e.message; }
}
window.addEventListener("hashchange", () => show(location.hash.slice(1)));
document.getElementById("filters").addEventListener("input", () => refreshLive().catch(() => {}));
document.getElementById("playground").addEventListener("submit", runPlayground);
document.getElementById("policy-editor").addEventListener("submit", savePolicy);
document.getElementById("replay").addEventListener("submit", runReplay);
document.getElementById("chart-controls").addEventListener("change", () => refreshChart().catch(() => {}));
document.getElementById("traffic-controls").addEventListener("change", () => refreshTraffic().catch(() => {}));
document.getElementById("violations-controls").addEventListener("change", () => refreshViolations().catch(() => {}));
document.querySelector("#bucket-filter button").addEventListener("click", () => setBucket(null));
show(location.hash.slice(1));
follow();
