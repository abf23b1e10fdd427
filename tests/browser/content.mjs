// The live page's record view in headless Chromium: clicks the newest
// record, then its "Show captured content" button, and prints what the
// page showed.
//
// usage: node content.mjs <admin base URL> <screenshot dir> <login URL>
import { withConsole } from "./browser.mjs";

const [base, shots, login] = process.argv.slice(2);
await withConsole(base, async (page, out, { open }) => {
  await page.goto(login);
  await open("live");
  await page.waitForFunction(() => document.querySelectorAll("#live-table tbody tr").length > 0);
  await page.click("#live-table tbody tr");
  await page.waitForSelector("#record-content:not([hidden])", { timeout: 10000 });
  out.button = await page.textContent("#record-content");
  await page.click("#record-content");
  await page.waitForFunction(() => document.querySelector("#record-content-body").textContent.includes("record"), null, { timeout: 10000 });
  out.content = JSON.parse(await page.textContent("#record-content-body"));
  await page.screenshot({ path: `${shots}/content.png`, fullPage: true });
});
