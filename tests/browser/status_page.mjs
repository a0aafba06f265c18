// Drives mailpin's status page (GET / on the admin listener) in headless
// Chromium through playwright-core: loads the page, enters the admin
// token, checks the backend rows, drains one backend with its button
// (accepting the confirmation), waits until the page shows it drained,
// and saves a screenshot. Run by tests/admin_status_page.rs, which then
// checks the API. Prints one JSON line with what it saw.
//
// Environment: MAILPIN_URL, MAILPIN_TOKEN, MAILPIN_BACKEND (to drain),
// MAILPIN_EXPECT_ROWS, MAILPIN_SCREENSHOT (PNG path), MAILPIN_PROFILE (a
// fresh Chromium profile directory), MAILPIN_NODE_MODULES (where
// playwright-core is installed), MAILPIN_CHROMIUM (the browser).
import { createRequire } from "node:module";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const require = createRequire(env("MAILPIN_NODE_MODULES") + "/");
const { chromium } = require("playwright-core");

const WAIT = { timeout: 20000 };
const backend = env("MAILPIN_BACKEND");
const expectRows = Number(env("MAILPIN_EXPECT_ROWS"));

const context = await chromium.launchPersistentContext(env("MAILPIN_PROFILE"), {
  executablePath: env("MAILPIN_CHROMIUM"),
  headless: true,
  viewport: { width: 1360, height: 900 },
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const seen = { consoleErrors: [] };
try {
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(WAIT.timeout);
  // The 401s before the token is entered are expected; anything else is not.
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().includes("status of 401")) seen.consoleErrors.push(m.text());
  });
  page.on("pageerror", (e) => seen.consoleErrors.push(String(e)));
  await page.goto(env("MAILPIN_URL"), { waitUntil: "domcontentloaded" });

  // Without the token the page says it needs one.
  await page.waitForSelector("#notice.error", WAIT);
  seen.noticeWithoutToken = await page.textContent("#notice");
  await page.fill("#token", env("MAILPIN_TOKEN"));
  await page.click("#token-save");

  await page.waitForFunction(
    (n) => document.querySelectorAll("#backends tr.backend").length === n, expectRows, WAIT);
  seen.rows = await page.$$eval("#backends tr.backend", (rows) => rows.map((r) => ({
    name: r.querySelector('[data-field="name"]').textContent,
    admin: r.querySelector('[data-field="admin"]').textContent,
    health: r.querySelector('[data-field="health"]').textContent,
    sessions: r.querySelector('[data-field="sessions"]').textContent,
  })));

  page.once("dialog", async (dialog) => {
    seen.dialog = { type: dialog.type(), message: dialog.message() };
    await dialog.accept();
  });
  await page.click(`button[data-action="drain"][data-backend="${backend}"]`);
  await page.waitForFunction(
    (name) => {
      const row = document.querySelector(`#backends tr.backend[data-backend="${name}"]`);
      return row && row.querySelector('[data-field="admin"]').textContent === "drain";
    }, backend, WAIT);
  seen.adminAfter = "drain";
  await page.waitForFunction(
    (name) => [...document.querySelectorAll("#events tr.event")]
      .some((tr) => tr.textContent.includes(name) && tr.textContent.includes("up -> drain")),
    backend, WAIT);
  seen.eventShown = true;
  // A user name made of markup (kicked by the test before) shows as text.
  seen.markup = await page.evaluate(() => ({
    elements: document.querySelectorAll("#events img, #events script").length,
    ran: window.pwned === 1,
    shownAsText: [...document.querySelectorAll("#events td")].some((td) => td.textContent.includes("<img")),
  }));
  seen.chartLines = await page.$$eval("svg.chart polyline", (l) => l.length);
  await page.screenshot({ path: env("MAILPIN_SCREENSHOT"), fullPage: true });
  seen.screenshot = env("MAILPIN_SCREENSHOT");
} finally {
  await context.close();
}
console.log(JSON.stringify(seen));
