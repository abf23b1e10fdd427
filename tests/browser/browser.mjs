// What every console browser script shares: Debian's Chromium driven by
// playwright-core (from LEASH_TEST_PLAYWRIGHT), a page that records its
// errors and every URL it loads, and the helpers to open a console page
// and read a table.
import { createRequire } from "node:module";

const require = createRequire(process.env.LEASH_TEST_PLAYWRIGHT + "/");
const { chromium } = require("playwright-core");

// Runs `body(page, out, helpers)` in a fresh browser; prints `out` as JSON.
export async function withConsole(base, body) {
  const browser = await chromium.launch({
    executablePath: process.env.LEASH_TEST_CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const out = { errors: [], requests: [] };
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    page.on("pageerror", (e) => out.errors.push(String(e)));
    page.on("console", (m) => { if (m.type() === "error") out.errors.push(m.text()); });
    // Everything the page loads must come from the admin listener itself.
    page.on("request", (r) => out.requests.push(r.url()));
    const cells = (sel) => page.$$eval(sel, (rows) => rows.map((r) => [...r.querySelectorAll("td")].map((td) => td.textContent)));
    const open = async (name) => {
      await page.goto(`${base}/console#${name}`);
      await page.waitForSelector(`body[data-loaded="${name}"]`, { timeout: 10000 });
    };
    await body(page, out, { cells, open });
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(out));
}
