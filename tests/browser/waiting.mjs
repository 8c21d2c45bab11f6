// Opens a sleeping site through wakegate's http listener in a real headless Chromium, as a
// visitor would: the waiting page names the service and follows the wake live, then the
// browser lands on the app by itself — nobody clicks or reloads.
//
//   node tests/browser/waiting.mjs SITE_URL SERVICE_NAME APP_TEXT SCREENSHOT_PATH
//
// Exits 0 when every step passed, 1 with the step that failed (and a screenshot next to
// SCREENSHOT_PATH) otherwise. tests/http.rs runs it against a gateway it starts.

import { chromium } from 'playwright-core';

const [siteUrl, name, appText, screenshot] = process.argv.slice(2);
if (!siteUrl || !name || !appText || !screenshot) {
  console.error('usage: node waiting.mjs SITE_URL SERVICE_NAME APP_TEXT SCREENSHOT_PATH');
  process.exit(2);
}
// Generous: the machine may be busy; a passing run never waits this long.
const DEADLINE = 30_000;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

let step = 'starting';
const log = [];
const note = (line) => { console.log('waiting: ' + line); };

async function main(browser) {
  const context = await browser.newContext({ viewport: { width: 1024, height: 700 } });
  context.setDefaultTimeout(DEADLINE);
  const page = await context.newPage();
  page.on('console', (m) => log.push(`console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => log.push(`page error: ${e.message}`));
  // The page is self-contained: anything it asks of another host is a bug.
  const foreign = [];
  page.on('request', (r) => {
    const url = new URL(r.url());
    if (['http:', 'https:'].includes(url.protocol) && url.host !== new URL(siteUrl).host) foreign.push(r.url());
  });
  const states = [];
  let appAt = null;
  page.on('response', (r) => {
    if (new URL(r.url()).pathname !== new URL(siteUrl).pathname) return;
    states.push(r.status());
    if (r.status() === 200 && appAt === null) appAt = Date.now();
  });

  step = 'opening the sleeping site';
  const response = await page.goto(siteUrl);
  if (!response || response.status() !== 503) throw new Error(`the first answer is ${response && response.status()}, not the waiting page's 503`);
  const type = response.headers()['content-type'] || '';
  if (!type.startsWith('text/html')) throw new Error(`the waiting page is ${type}, not text/html`);

  step = 'reading the waiting page';
  const title = await page.title();
  if (!title.includes(name)) throw new Error(`the title "${title}" does not name the service`);
  await page.locator('#service', { hasText: name }).waitFor();
  note(`waiting page: "${title}"`);

  step = 'seeing the wake progress live';
  await page.locator('#wakegate[data-state="waking"]').waitFor();
  const message = (await page.locator('#message').textContent()).trim();
  note(`progress: "${message}"`);
  await page.screenshot({ path: screenshot, fullPage: true });

  step = 'landing on the app by itself';
  await page.getByText(appText).waitFor();
  const url = page.url();
  if (url !== siteUrl) throw new Error(`the browser ended on ${url}, not ${siteUrl}`);
  note(`landed on the app at ${url}; answers seen for the page: ${states.join(', ')}`);
  // For the test, which knows when the service became awake: the app's answer arrived then.
  console.log(`app-answered-at-ms ${appAt}`);
  const app = screenshot.replace(/(\.png)?$/, '-app.png');
  await page.screenshot({ path: app, fullPage: true });
  note(`screenshots: ${screenshot}, ${app}`);

  step = 'checking what the page did besides';
  if (foreign.length) throw new Error('the page asked other hosts: ' + foreign.join(', '));
  const errors = log.filter((l) => l.startsWith('page error'));
  if (errors.length) throw new Error('the page threw: ' + errors.join('; '));
  await context.close();
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
try {
  await main(browser);
  note('ok');
} catch (e) {
  console.error(`waiting: FAILED while ${step}: ${e && e.message ? e.message.split('\n')[0] : e}`);
  for (const line of log) console.error('  ' + line);
  for (const context of browser.contexts()) {
    for (const page of context.pages()) {
      const path = screenshot.replace(/(\.png)?$/, '-failure.png');
      await page.screenshot({ path, fullPage: true }).then(() => console.error('  screenshot of the failure: ' + path), () => {});
    }
  }
  process.exitCode = 1;
} finally {
  await browser.close();
}
