// The live page's traffic chart in headless Chromium: for each metric of
// the last hour, what every bar (or point) plots; then a click on the
// newest bucket with traffic, which must list exactly that bucket's
// requests in the table below, and the chip that clears it. Prints what
// it saw for the Rust test to compare with the API and the records.
//
// usage: node charts.mjs <admin base URL> <screenshot dir> <login URL>
import { withConsole } from "./browser.mjs";

const [base, shots, login] = process.argv.slice(2);
await withConsole(base, async (page, out, { cells, open }) => {
  await page.goto(login);
  await open("live");
  const plotted = () => page.$$eval("#chart-traffic .bar", (bars) => bars.map((b) => ({
    start: b.dataset.start,
    total: Number(b.dataset.total),
    parts: Object.fromEntries([...b.querySelectorAll("[data-part]")].map((s) => [s.dataset.part, Number(s.dataset.value)])),
  })));
  // Each metric of the last hour, as drawn.
  await page.waitForFunction(() => document.querySelectorAll("#chart-traffic .bar").length === 60);
  out.metrics = { requests: await plotted() };
  for (const metric of ["errors", "blocked", "redacted", "overhead"]) {
    await page.evaluate(() => { document.getElementById("chart-traffic").replaceChildren(); });
    await page.selectOption('#traffic-controls [name="metric"]', metric);
    await page.waitForFunction((m) => document.querySelectorAll(`#chart-traffic svg[aria-label="${m} hour"] .bar`).length === 60, metric);
    out.metrics[metric] = await plotted();
  }
  await page.screenshot({ path: `${shots}/traffic-latency.png` });
  await page.evaluate(() => { document.getElementById("chart-traffic").replaceChildren(); });
  await page.selectOption('#traffic-controls [name="metric"]', "requests");
  await page.waitForFunction(() => document.querySelectorAll("#chart-traffic .bar").length === 60);
  const bars = await plotted();
  out.all_rows = (await cells("#live-table tbody tr")).length;
  // Click-to-filter: first the oldest minute, which had no traffic (the
  // table empties), then the newest minute with traffic.
  out.empty_total = bars[0].total;
  await page.locator("#chart-traffic .bar").nth(0).locator("rect.hit").click({ force: true });
  await page.waitForSelector("#live-none:not([hidden])", { timeout: 10000 });
  out.empty_rows = (await cells("#live-table tbody tr")).length;
  out.picked = bars.map((b) => b.total > 0).lastIndexOf(true);
  await page.locator("#chart-traffic .bar").nth(out.picked).locator("rect.hit").click({ force: true });
  await page.waitForSelector("#bucket-filter:not([hidden])");
  await page.waitForFunction((n) => document.querySelectorAll("#live-table tbody tr").length === n, bars[out.picked].total, { timeout: 10000 });
  out.picked_start = bars[out.picked].start;
  out.filtered_ids = await page.$$eval("#live-table tbody tr", (rows) => rows.map((r) => r.dataset.id));
  out.chip = await page.textContent("#bucket-filter");
  await page.screenshot({ path: `${shots}/traffic.png` });
  await page.click("#bucket-filter button");
  await page.waitForFunction((n) => document.querySelectorAll("#live-table tbody tr").length === n, out.all_rows, { timeout: 10000 });
  out.cleared_rows = (await cells("#live-table tbody tr")).length;
});
