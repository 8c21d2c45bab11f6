// Opens the dashboard of each gateway given, in a real headless Chromium, and checks that the
// card of SERVICE names the gateway that drives it, as a person comparing the gateways would.
//
//   node tests/browser/owner.mjs SERVICE OWNER API_URL [API_URL ...]
//
// The APIs are open (no tokens). Exits 0 when every page says "driven by OWNER", 1 with what a
// page showed instead (and a screenshot in the working directory) otherwise.
// tests/gateways/dashboard.rs runs it against two gateways sharing a PostgreSQL store.

import { chromium } from 'playwright-core';

const [service, owner, ...apis] = process.argv.slice(2);
if (!service || !owner || apis.length === 0) {
  console.error('usage: node owner.mjs SERVICE OWNER API_URL [API_URL ...]');
  process.exit(2);
}
// Generous: the machine may be busy; a passing run never waits this long.
const DEADLINE = 20_000;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
let page;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  context.setDefaultTimeout(DEADLINE);
  for (const api of apis) {
    page = await context.newPage();
    const response = await page.goto(new URL('/', api).href);
    if (!response || response.status() !== 200) throw new Error(`${api}: GET / answered ${response && response.status()}`);
    const sub = page.getByTestId(`sub-${service}`);
    await sub
      .filter({ hasText: `driven by ${owner}` })
      .waitFor()
      .catch(async () => {
        throw new Error(`${api}: the card of \`${service}\` says "${(await sub.textContent().catch(() => '(no card)'))}", not "driven by ${owner}"`);
      });
    console.log(`owner: ${api}: ${(await sub.textContent()).trim()}`);
    await page.close();
    page = null;
  }
  await context.close();
} catch (e) {
  console.error(`owner: FAILED: ${e && e.message ? e.message.split('\n')[0] : e}`);
  if (page) await page.screenshot({ path: 'owner-failure.png', fullPage: true }).catch(() => {});
  process.exitCode = 1;
} finally {
  await browser.close();
}
