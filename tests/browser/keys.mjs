// The keys page in headless Chromium: lists the keys, revokes one with its
// button (confirming the dialog), and prints the rows before and after and
// the page's HTML (searched for secrets by the Rust test).
//
// usage: node keys.mjs <admin base URL> <screenshot dir> <login URL> <key id to revoke>
import { withConsole } from "./browser.mjs";

const [base, shots, login, revoke] = process.argv.slice(2);
await withConsole(base, async (page, out, { cells, open }) => {
  page.on("dialog", (d) => d.accept());
  await page.goto(login);
  await open("keys");
  out.before = await cells("#keys-table tbody tr");
  await page.click(`button[data-revoke="${revoke}"]`);
  await page.waitForFunction((id) => {
    const row = document.querySelector(`tr[data-key="${id}"]`);
    return row && row.children[10].textContent === "revoked";
  }, revoke, { timeout: 10000 });
  out.after = await cells("#keys-table tbody tr");
  out.result = await page.textContent("#keys-result");
  out.html = await page.content();
  await page.screenshot({ path: `${shots}/keys.png`, fullPage: true });
});
