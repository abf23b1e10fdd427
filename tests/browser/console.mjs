// Loads every console page in headless Chromium (Debian's, driven by
// playwright-core), saves a screenshot of each, runs the policy
// playground, and prints what the pages show as JSON for the Rust test to
// check against the audit records.
//
// usage: node console.mjs <admin base URL> <screenshot dir> <gateway base URL> <login URL>
// env: LEASH_TEST_PLAYWRIGHT (node_modules with playwright-core),
//      LEASH_TEST_CHROMIUM (the browser, default /usr/bin/chromium)
import { withConsole } from "./browser.mjs";

const [base, shots, gateway, login] = process.argv.slice(2);
await withConsole(base, async (page, out, { cells, open }) => {
  // The one-time URL of `leash console` opens a session (a cookie): no
  // token is typed or stored in the page.
  await page.goto(login);
  out.logged_in = page.url();
  await open("live");
  await page.waitForFunction(() => document.querySelectorAll("#live-table tbody tr").length > 0);
  out.live = await cells("#live-table tbody tr");
  await page.click("#live-table tbody tr");
  out.record = JSON.parse(await page.textContent("#record"));
  out.card = await page.textContent("#record-card");
  out.raw_open = await page.evaluate(() => document.getElementById("record-raw").open);
  // The record's trace: its id, the tracing UI's link (admin.trace_url),
  // and the records of that trace alone.
  out.trace_text = await page.textContent("#record-trace");
  out.trace_link = await page.getAttribute("#trace-link", "href");
  await page.click("#trace-records");
  await page.waitForFunction(() => document.querySelectorAll("#live-table tbody tr").length === 1);
  out.trace_rows = await cells("#live-table tbody tr");
  await page.fill('#filters [name="trace_id"]', "");
  await page.waitForFunction((n) => document.querySelectorAll("#live-table tbody tr").length === n, out.live.length);
  // A request made now shows up without a reload (the live feed).
  await page.waitForSelector('body[data-live="connected"]', { timeout: 10000 });
  const before = out.live.length;
  const resp = await fetch(`${gateway}/v1/openai/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: "Bearer sk-test" },
    body: JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: "live?" }] }),
  });
  out.live_status = resp.status;
  await page.waitForFunction((n) => document.querySelectorAll("#live-table tbody tr").length > n, before, { timeout: 10000 });
  out.live_after = await cells("#live-table tbody tr");
  await page.screenshot({ path: `${shots}/live.png` });

  await open("spend");
  // The chart: one bar per hour of the last day; each bar's segments add up
  // to its total; a click lists that hour's breakdown below.
  await page.waitForFunction(() => document.querySelectorAll("#chart-spend .bar").length === 24);
  out.chart = await page.$$eval("#chart-spend .bar", (bars) => bars.map((b) => ({
    start: b.dataset.start,
    total: Number(b.dataset.total),
    segments: [...b.querySelectorAll("rect.seg")].reduce((s, r) => s + Number(r.dataset.value), 0),
    titles: [...b.querySelectorAll("rect.seg title")].map((t) => t.textContent),
  })));
  // The latest hour with traffic (the run may straddle an hour).
  out.chart_clicked = out.chart.map((b) => b.total > 0).lastIndexOf(true);
  await page.locator("#chart-spend .bar").nth(out.chart_clicked).locator("rect.hit").click({ force: true });
  await page.waitForFunction(() => document.querySelectorAll("#chart-detail tbody tr").length > 0);
  out.chart_detail = await cells("#chart-detail tbody tr");
  out.spend = {
    requests: await page.textContent("#total-requests b"),
    tokens: await page.textContent("#total-tokens b"),
    cost: await page.textContent("#total-cost b"),
    by_team: await cells("#spend-team tbody tr"),
    budgets: await cells("#spend-budgets tbody tr"),
    by_model: await cells("#spend-model tbody tr"),
  };
  await page.screenshot({ path: `${shots}/spend.png`, fullPage: true });

  await open("violations");
  out.violations = await cells("#violations-rules tbody tr");
  await page.click("#violations-recent tbody tr");
  out.violation = JSON.parse(await page.textContent("#violation-record"));
  await page.screenshot({ path: `${shots}/violations.png`, fullPage: true });

  await open("policy");
  out.rules = await cells("#policy-rules tbody tr");
  await page.fill("#playground textarea", "my key is AKIAZ7QX3PLM9V2KD4RT");
  await page.click("#playground button");
  await page.waitForFunction(() => document.querySelector("#playground-result").textContent.includes("action"));
  out.playground = JSON.parse(await page.textContent("#playground-result"));
  // Replay a candidate that blocks the research team.
  await page.fill("#replay textarea", "version: 1\nrules:\n  - { name: no-research, match: { team: [research] }, action: block }\n");
  await page.click("#replay button");
  await page.waitForFunction(() => document.querySelector("#replay-summary").textContent.startsWith("Replayed"));
  out.replay_summary = await page.textContent("#replay-summary");
  out.replay_rows = await cells("#replay-changes tbody tr");
  await page.screenshot({ path: `${shots}/policy.png`, fullPage: true });

  await open("interception");
  out.interception = JSON.parse(await page.textContent("#interception"));
  await page.screenshot({ path: `${shots}/interception.png` });
});
