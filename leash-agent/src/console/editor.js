// Leash console: the rule editor. Every change (a rule added or edited in
// the form, moved, disabled, deleted) is first previewed — the YAML diff
// and what `leash policy check` says — and saved only on "Save": the
// server checks it again, writes the file atomically and loads it.
"use strict";

let editorState = null;   // {base, rules, catalog} from /api/policy
let pendingEdit = null;   // the change being previewed
let editingIndex = null;  // the rule the form edits (null: a new rule)

const list = (s) => (s || "").split(",").map((x) => x.trim()).filter(Boolean);
const joined = (a) => (a || []).join(", ");

function ruleSummary(r) {
  const m = r.match || {};
  const parts = [];
  if (m.detectors) parts.push("detectors: " + joined(m.detectors));
  for (const k of ["team", "provider", "model", "endpoint"]) if (m[k]) parts.push(`${k}: ${joined(m[k])}`);
  if (m.caller) parts.push("caller: " + Object.entries(m.caller).map(([k, v]) => `${k} ${joined(v)}`).join("; "));
  for (const k of ["offered", "called", "arguments"]) if (m.tool && m.tool[k]) parts.push(`tool ${k}: ${joined(m.tool[k])}`);
  if (m.direction && m.direction !== "request") parts.push("direction: " + m.direction);
  return parts.join(" · ") || "every request";
}

// The rules as written in the file, with their controls.
function renderRules(p) {
  const node = document.getElementById("policy-rules");
  if (!p.editor || !p.editable) return false;
  editorState = p.editor;
  const rules = editorState.rules;
  table(node, [["#"], ["rule"], ["action"], ["matches"], ["mode"], ["state"], [""]],
    rules.map((r, i) => {
      const button = (label, edit, attrs = {}) => {
        const b = el("button", Object.assign({ type: "button" }, attrs), label);
        b.addEventListener("click", () => (typeof edit === "function" ? edit() : previewEdit(edit)));
        return b;
      };
      const enabled = r.enabled !== false;
      const controls = el("td", { class: "rule-controls" },
        button("↑", { op: "move", from: i, to: i - 1 }, { "data-up": r.name, title: "evaluate earlier" }),
        button("↓", { op: "move", from: i, to: i + 1 }, { "data-down": r.name, title: "evaluate later" }),
        button("Edit", () => openForm(i), { "data-edit": r.name }),
        button(enabled ? "Disable" : "Enable", { op: "enable", index: i, enabled: !enabled }, { "data-toggle": r.name }),
        button("Delete", { op: "delete", index: i }, { "data-delete": r.name }));
      controls.children[0].disabled = i === 0;
      controls.children[1].disabled = i === rules.length - 1;
      return el("tr", { "data-rule": r.name, class: enabled ? "" : "disabled" },
        el("td", { class: "num" }, String(i + 1)), el("td", {}, r.name), el("td", { class: r.action }, r.action),
        el("td", {}, ruleSummary(r)), el("td", {}, r.mode || "policy's"), el("td", {}, enabled ? "on" : "disabled"), controls);
    }));
  document.getElementById("rule-add").hidden = false;
  return true;
}

// The form: detectors as checkboxes grouped by kind.
function openForm(index) {
  editingIndex = index;
  const form = document.getElementById("rule-form");
  const r = index == null ? { action: "block", match: {} } : editorState.rules[index];
  const m = r.match || {};
  const c = m.caller || {};
  const set = (n, v) => { form.elements.namedItem(n).value = v ?? ""; };
  form.reset();
  set("name", r.name);
  set("action", r.action || "block");
  set("mode", r.mode);
  set("direction", m.direction || "request");
  set("route", r.route);
  for (const k of ["team", "provider", "model", "endpoint"]) set(k, joined(m[k]));
  for (const k of ["exe", "user", "cgroup", "uid"]) set("caller_" + k, joined(c[k]));
  for (const k of ["offered", "called", "arguments"]) set("tool_" + k, joined((m.tool || {})[k]));
  set("tags", joined(r.tags));
  set("set_model", r.set_model);
  set("max_tokens", r.max_tokens);
  set("system_prepend", r.system_prepend);
  const chosen = new Set(m.detectors || []);
  const boxes = document.getElementById("rule-detectors");
  boxes.replaceChildren(...editorState.catalog.filter((g) => g.names.length).map((g) => {
    const items = g.names.map((n) => el("label", { class: "check" },
      Object.assign(el("input", { type: "checkbox", name: "detector", value: n }), { checked: chosen.has(n) }), n));
    const set = el("fieldset", { "data-group": g.group }, el("legend", {}, g.group), ...items);
    return g.names.length > 12 ? el("details", {}, el("summary", {}, `${g.group} (${g.names.length})`), set) : set;
  }));
  document.getElementById("rule-form-title").textContent = index == null ? "New rule" : `Edit rule ${r.name}`;
  form.hidden = false;
  showFields();
  formChanged();
}

function showFields() {
  const form = document.getElementById("rule-form");
  const action = form.elements.namedItem("action").value;
  for (const n of form.querySelectorAll("[data-for]")) n.hidden = !n.dataset.for.split(" ").includes(action);
}

// The rule the form describes; fields the form does not show (headers,
// drop_fields...) are kept from the rule being edited.
function formRule() {
  const form = document.getElementById("rule-form");
  const base = editingIndex == null ? {} : structuredClone(editorState.rules[editingIndex]);
  const f = new FormData(form);
  const match = Object.assign(base.match || {}, {
    detectors: f.getAll("detector").concat(f.get("pattern_name") && f.get("pattern_regex") ? [f.get("pattern_name").trim()] : []),
    direction: f.get("direction") === "request" ? null : f.get("direction"),
    team: list(f.get("team")), provider: list(f.get("provider")), model: list(f.get("model")), endpoint: list(f.get("endpoint")),
    caller: Object.assign((base.match || {}).caller || {}, {
      exe: list(f.get("caller_exe")), user: list(f.get("caller_user")), cgroup: list(f.get("caller_cgroup")),
      uid: list(f.get("caller_uid")).map(Number),
    }),
  });
  const tool = { offered: list(f.get("tool_offered")), called: list(f.get("tool_called")), arguments: list(f.get("tool_arguments")) };
  match.tool = Object.values(tool).some((v) => v.length) ? tool : null;
  const action = f.get("action");
  const transform = action === "transform";
  return Object.assign(base, {
    name: f.get("name").trim(), action, mode: f.get("mode") || null, match,
    route: action === "route" ? f.get("route") : null,
    tags: list(f.get("tags")),
    set_model: transform ? f.get("set_model") : null,
    max_tokens: transform && f.get("max_tokens") ? Number(f.get("max_tokens")) : null,
    system_prepend: transform ? f.get("system_prepend") : null,
  });
}

let previewTimer = null;
function formChanged() {
  showFields();
  document.getElementById("rule-preview").dataset.state = "pending";
  clearTimeout(previewTimer);
  previewTimer = setTimeout(() => {
    const f = new FormData(document.getElementById("rule-form"));
    const detector = f.get("pattern_name") && f.get("pattern_regex")
      ? { name: f.get("pattern_name").trim(), regex: f.get("pattern_regex") } : null;
    const edit = editingIndex == null
      ? { op: "add", rule: formRule(), detector }
      : { op: "replace", index: editingIndex, rule: formRule(), detector };
    previewEdit(edit).catch(() => {});
  }, 200);
}

// Shows what `edit` would do to the file, and keeps it for "Save".
async function previewEdit(edit) {
  pendingEdit = edit;
  const panel = document.getElementById("rule-preview");
  panel.dataset.state = "pending";
  const check = document.getElementById("rule-check");
  const diff = document.getElementById("rule-diff");
  const save = document.getElementById("rule-save");
  panel.hidden = false;
  save.disabled = true;
  try {
    const r = await api("/api/policy/edit?preview", { method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ base: editorState.base, edit }) });
    if (pendingEdit !== edit) return;
    check.textContent = (r.check.ok ? `✓ ${r.summary}: the policy checks (${r.check.rules} active rules)` : `✗ refused: ${r.check.error}`) +
      (r.regenerated ? " — note: this file's layout cannot be edited in place, so saving rewrites it without its comments" : "");
    check.className = r.check.ok ? "ok" : "block";
    diff.replaceChildren(...r.diff.split("\n").map((l) => el("span", { class: /^\+(?!\+\+)/.test(l) ? "add" : /^-(?!--)/.test(l) ? "del" : "" }, l + "\n")));
    save.disabled = !r.check.ok;
  } catch (e) {
    if (pendingEdit !== edit) return;
    check.textContent = "✗ refused: " + e.message;
    check.className = "block";
    diff.replaceChildren();
  }
  panel.dataset.state = save.disabled ? "refused" : "ready";
}

async function saveEdit() {
  const out = document.getElementById("policy-save-result");
  try {
    const r = await api("/api/policy/edit", { method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ base: editorState.base, edit: pendingEdit }) });
    closeEditor();
    await refreshPolicy();
    out.textContent = `saved and loaded: ${r.saved.summary}` + (r.saved.regenerated ? " (the file was rewritten; comments were not kept)" : "");
  } catch (e) {
    out.textContent = "not saved: " + e.message;
  }
}

function closeEditor() {
  pendingEdit = null;
  clearTimeout(previewTimer);
  document.getElementById("rule-preview").dataset.state = "";
  document.getElementById("rule-form").hidden = true;
  document.getElementById("rule-preview").hidden = true;
}

document.getElementById("rule-add").addEventListener("click", () => openForm(null));
document.getElementById("rule-form").addEventListener("input", formChanged);
document.getElementById("rule-form").addEventListener("submit", (ev) => { ev.preventDefault(); saveEdit(); });
document.getElementById("rule-save").addEventListener("click", saveEdit);
document.getElementById("rule-cancel").addEventListener("click", closeEditor);
