// The live page of a console with no traffic yet: it says what to do next
// (the empty state); with traffic, the rows instead. Prints what it saw.
//
// usage: node empty.mjs <admin base URL> <screenshot dir> <login URL>
import { withConsole } from "./browser.mjs";

const [base, shots, login] = process.argv.slice(2);
await withConsole(base, async (page, out, { cells, open }) => {
  await page.goto(login);
  await open("live");
  await page.waitForFunction(() => document.getElementById("status").textContent.includes("requests shown"));
  out.empty_visible = await page.isVisible("#live-empty");
  out.empty_text = await page.textContent("#live-empty");
  out.rows = await cells("#live-table tbody tr");
  await page.screenshot({ path: `${shots}/empty.png` });
});
