// Drives the Cairn console in Debian's Chromium with playwright-core (which
// starts the system browser through executablePath; it never downloads one).
// Run by crates/cairn/tests/console.rs against a real `cairn serve`:
//   CAIRN_URL           the console's origin, under a real host name
//   CAIRN_HOST_RULES    Chromium's --host-resolver-rules mapping that name to 127.0.0.1
//   CHROMIUM            the browser executable
//   PLAYWRIGHT_CORE     the playwright-core package directory
//   SCREENSHOTS         where the screenshots of the main views go
// Exits 0 when every check holds; prints what failed otherwise.
import { createRequire } from "node:module";
import { mkdirSync } from "node:fs";
import assert from "node:assert/strict";

const require = createRequire(import.meta.url);
const { chromium } = require(process.env.PLAYWRIGHT_CORE);
const base = process.env.CAIRN_URL;
const shots = process.env.SCREENSHOTS;
mkdirSync(shots, { recursive: true });

const DOC = `# Refund policy

Refunds are accepted within thirty days of delivery, for any reason.
The money goes back to the original payment method within five working days.
`;
const ANSWER = "Refunds are accepted within thirty days of delivery, so you can still return it.";

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM,
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    `--host-resolver-rules=${process.env.CAIRN_HOST_RULES}`,
  ],
});
const problems = [];
try {
  const page = await browser.newPage({ viewport: { width: 1360, height: 900 } });
  page.setDefaultTimeout(30_000);
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    // A refused script or style (CSP) or a failed request shows up here.
    if (m.type() === "error") problems.push(`console error: ${m.text()}`);
  });
  const shot = (name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });

  // The page, with its Content-Security-Policy.
  const response = await page.goto(`${base}/console`);
  assert.equal(response.status(), 200);
  const csp = response.headers()["content-security-policy"];
  assert.match(csp, /script-src 'self'/);
  assert.match(csp, /frame-ancestors 'none'/);

  // Sign in: in development mode the token is filled in.
  await page.getByLabel("Access token").waitFor();
  await page.waitForFunction(() => document.getElementById("token").value.length > 20);
  assert.ok(await page.locator("#dev-hint").isVisible());
  await shot("01-sign-in");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Conversations" }).waitFor();

  // Every form control has a label (accessibility), checked in the page.
  const unlabelled = await page.evaluate(() =>
    [...document.querySelectorAll("input, textarea, select")]
      .filter((e) => e.type !== "hidden" && !(e.labels && e.labels.length) && !e.getAttribute("aria-label"))
      .map((e) => e.id || e.name),
  );
  assert.deepEqual(unlabelled, []);

  // Upload a document; watch the progress bar and the job status.
  await page.getByRole("link", { name: "Documents" }).click();
  await page.getByRole("heading", { name: "Documents" }).waitFor();
  await page.getByLabel(/Document file/).setInputFiles({
    name: "refunds.md",
    mimeType: "text/markdown",
    buffer: Buffer.from(DOC),
  });
  await page.getByLabel("Title (optional)").fill("Refund policy");
  await page.getByRole("button", { name: "Upload" }).click();
  const row = page.locator("tr[data-document]", { hasText: "Refund policy" });
  await row.locator('[data-status="done"]').waitFor({ timeout: 60_000 });
  assert.equal(await page.locator("#upload-progress").evaluate((p) => p.value), 100);
  await shot("02-documents");

  // Ask a question; the answer streams in.
  await page.getByRole("link", { name: "Conversations" }).click();
  await page.getByRole("button", { name: "New conversation" }).click();
  await page.waitForURL(/#\/conversations\/.+/);
  const url = page.url();
  await page.getByRole("textbox", { name: "Message" }).fill("Can I still get a refund for my order?");
  await page.getByRole("button", { name: "Send" }).click();
  const streaming = page.locator(".msg.streaming");
  await page.waitForFunction(() => {
    const m = document.querySelector(".msg.streaming");
    return m && m.textContent.includes("Refunds are");
  });
  await shot("03-streaming");

  // Reload mid-stream: the stream resumes from the stored events.
  await page.reload();
  assert.equal(page.url(), url);
  await streaming.waitFor({ state: "visible" });
  const partial = await streaming.textContent();
  assert.ok(!partial.includes("return it."), `the reload happened mid-stream: ${partial}`);
  const answer = page.locator(".msg.assistant:not(.streaming)");
  await answer.waitFor({ timeout: 30_000 });
  const text = await answer.textContent();
  assert.ok(text.includes(ANSWER), text);
  assert.equal(text.split("thirty days").length - 1, 1, `no repeated deltas: ${text}`);

  // The citation links to the document.
  const citation = answer.locator("a.citation");
  assert.equal(await citation.textContent(), "Refund policy");
  assert.match(await citation.getAttribute("href"), /^#\/documents\/.+/);

  // The step timeline: every step once, in order, with the tool call and result.
  await page.getByRole("button", { name: "Show steps" }).click();
  assert.equal(await page.getByRole("button", { name: "Hide steps" }).getAttribute("aria-expanded"), "true");
  const steps = await page.locator("#timeline li.step").evaluateAll((ls) =>
    ls.map((l) => ({ id: l.dataset.eventId, kind: l.dataset.kind, text: l.textContent })),
  );
  const ids = steps.map((s) => s.id);
  assert.equal(new Set(ids).size, ids.length, `duplicated steps: ${JSON.stringify(steps)}`);
  assert.deepEqual(
    steps.map((s) => s.kind).filter((k) => k !== "insights.updated"),
    ["turn.started", "tool.called", "tool.completed", "answer.completed"],
  );
  const call = steps.find((s) => s.kind === "tool.called");
  assert.ok(call.text.includes("search_knowledge") && call.text.includes("refund"), call.text);
  assert.ok(steps.find((s) => s.kind === "tool.completed").text.includes("thirty days"));
  assert.ok(steps.find((s) => s.kind === "answer.completed").text.includes("test-model"));
  await shot("04-conversation-steps");

  // Search the conversation list.
  await page.getByLabel("Search conversations").fill("no such conversation");
  await page.getByText("No conversation matches.").waitFor();
  await page.getByLabel("Search conversations").fill("");

  // The citation opens the document.
  await citation.click();
  await page.locator("tr.selected", { hasText: "Refund policy" }).waitFor();

  // Tools with their health, and alerts.
  await page.getByRole("link", { name: "Tools" }).click();
  await page.locator("#tool-list", { hasText: "search_knowledge" }).waitFor();
  await shot("05-tools");
  await page.getByRole("link", { name: "Alerts" }).click();
  await page.locator("#alert-list li").first().waitFor();
  await shot("06-alerts");

  // Narrow screens get one column.
  await page.setViewportSize({ width: 420, height: 900 });
  await page.goto(url);
  await page.reload();
  await page.locator(".msg.assistant").first().waitFor();
  // Keyboard: on a fresh page the skip link is the first stop.
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.textContent), "Skip to content");
  const cols = await page.locator("#view-conversations").evaluate((e) => getComputedStyle(e).gridTemplateColumns.split(" ").length);
  assert.equal(cols, 1);
  await shot("07-narrow");

  // Sign out forgets the token.
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
} catch (e) {
  problems.push(e.stack || String(e));
} finally {
  await browser.close();
}
if (problems.length) {
  console.error(problems.join("\n"));
  process.exit(1);
}
console.log(`console checks passed; screenshots in ${shots}`);
