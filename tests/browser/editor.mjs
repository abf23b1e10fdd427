// The rule editor in headless Chromium against a gateway: each change is
// made with the page's own controls, previewed (the YAML diff and the
// check), saved, and then tried with a real request through the gateway.
// Prints what it saw, for the Rust test to check.
//
// usage: node editor.mjs <admin base URL> <screenshot dir> <login URL> <gateway base URL>
import { withConsole } from "./browser.mjs";

const [base, shots, login, gateway] = process.argv.slice(2);

// A chat request through the gateway (offering the tools named): its HTTP
// status.
async function chat(text, team, tools) {
  const headers = { "content-type": "application/json", authorization: "Bearer sk-test" };
  if (team) headers["x-leash-team"] = team;
  const body = { model: "gpt-4o-mini", messages: [{ role: "user", content: text }] };
  if (tools) body.tools = tools.map((name) => ({ type: "function", function: { name, parameters: { type: "object" } } }));
  const resp = await fetch(`${gateway}/v1/openai/chat/completions`, {
    method: "POST", headers, body: JSON.stringify(body),
  });
  return resp.status;
}

await withConsole(base, async (page, out, { cells, open }) => {
  await page.goto(login);
  await open("policy");
  const rules = () => page.$$eval("#policy-rules tr[data-rule]", (rows) => rows.map((r) => r.dataset.rule));
  // Waits for the preview of the change just made; returns what it says.
  const preview = async (state) => {
    await page.waitForSelector(`#rule-preview[data-state="${state}"]`, { timeout: 10000 });
    return { check: await page.textContent("#rule-check"), diff: await page.textContent("#rule-diff") };
  };
  // Saves the previewed change; waits until the page shows the new file.
  const save = async () => {
    const before = await page.textContent("#policy-save-result");
    await page.click("#rule-save");
    await page.waitForFunction((b) => {
      const t = document.getElementById("policy-save-result").textContent;
      return t !== b && t.length > 0;
    }, before, { timeout: 10000 });
    await page.waitForSelector("#rule-preview", { state: "hidden" });
    return page.textContent("#policy-save-result");
  };
  out.rules_before = await rules();

  // 1. A new rule made in the form (with a new pattern detector), enforced
  // on the next request; the same request before it is the control.
  out.ticket_before = await chat("see ticket TCK-123456");
  await page.click("#rule-add");
  await page.fill('#rule-form [name="name"]', "no-tickets");
  await page.selectOption('#rule-form [name="action"]', "block");
  await page.fill('#rule-form [name="pattern_name"]', "ticket_id");
  await page.fill('#rule-form [name="pattern_regex"]', "TCK-[0-9]{6}");
  out.add_preview = await preview("ready");
  await page.screenshot({ path: `${shots}/policy-editor.png`, fullPage: true });
  out.add_saved = await save();
  out.rules_after_add = await rules();
  out.ticket_after = await chat("see ticket TCK-123456");

  // 2. Reordering two rules changes the outcome: support's allow before
  // the email block lets support's request through.
  out.support_before = await chat("mail bob@example.com", "support");
  await page.click('button[data-up="allow-support"]');
  out.move_preview = await preview("ready");
  out.move_saved = await save();
  out.rules_after_move = await rules();
  out.support_after = await chat("mail bob@example.com", "support");
  out.others_after = await chat("mail bob@example.com");

  // 3. An invalid rule is refused with its reason; nothing is saved.
  await page.click("#rule-add");
  await page.fill('#rule-form [name="name"]', "mask-nothing");
  await page.selectOption('#rule-form [name="action"]', "redact");
  out.invalid = await preview("refused");
  out.invalid_save_disabled = await page.isDisabled("#rule-save");
  await page.fill('#rule-form [name="pattern_name"]', "broken");
  await page.fill('#rule-form [name="pattern_regex"]', "TCK-(");
  await page.waitForFunction(() => document.getElementById("rule-check").textContent.includes("regex"), null, { timeout: 10000 });
  out.invalid_regex = await page.textContent("#rule-check");
  await page.click("#rule-cancel");

  // 4. Disabling a rule keeps it in the file, out of force.
  await page.click('button[data-toggle="no-tickets"]');
  out.disable_preview = await preview("ready");
  out.disable_saved = await save();
  out.ticket_disabled = await chat("see ticket TCK-123456");
  // 5. A tool rule made in the form: a request offering `shell` is
  // refused; the same request before it is the control.
  out.shell_before = await chat("run ls", null, ["shell"]);
  await page.click("#rule-add");
  await page.fill('#rule-form [name="name"]', "no-shell");
  await page.selectOption('#rule-form [name="action"]', "block");
  await page.fill('#rule-form [name="tool_offered"]', "shell*");
  out.tool_preview = await preview("ready");
  out.tool_saved = await save();
  out.shell_after = await chat("run ls", null, ["shell"]);
  out.weather_after = await chat("weather?", null, ["get_weather"]);

  out.states = await cells("#policy-rules tr[data-rule]");
  out.history = await cells("#policy-history tbody tr");
});
