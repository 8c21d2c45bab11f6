// Drives the dashboard in a real headless Chromium, as a person would: a wrong token is
// refused, a read-only token sees the sleeping service but may not wake it, the operate token
// wakes it with a click, and the card follows the wake through the live stream until awake.
//
//   node tests/browser/dashboard.mjs API_URL TOKEN SCREENSHOT_PATH [READ_ONLY_TOKEN]
//
// The service is the first one the API lists; it must be asleep. Exits 0 when every step
// passed, 1 with the step that failed (and a screenshot next to SCREENSHOT_PATH) otherwise.
// tests/dashboard.rs runs it against a gateway it starts.

import { chromium } from 'playwright-core';

const [apiUrl, token, screenshot, readToken] = process.argv.slice(2);
if (!apiUrl || !token || !screenshot) {
  console.error('usage: node dashboard.mjs API_URL TOKEN SCREENSHOT_PATH [READ_ONLY_TOKEN]');
  process.exit(2);
}
// Generous: the machine may be busy; a passing run never waits this long.
const DEADLINE = 20_000;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

let step = 'starting';
const log = [];
const note = (line) => { console.log('dashboard: ' + line); };

/** The first service, asked of the API directly, so the script needs no name. */
async function firstService() {
  const res = await fetch(new URL('/api/v1/services', apiUrl), {
    headers: { Authorization: 'Bearer ' + token },
  });
  if (!res.ok) throw new Error(`GET /api/v1/services answered ${res.status}: ${await res.text()}`);
  const list = await res.json();
  if (!Array.isArray(list) || list.length === 0) throw new Error('the gateway has no service');
  return list[0];
}

async function main(browser) {
  step = 'reading the services from the API';
  const service = await firstService();
  const name = service.name;
  if (service.state !== 'asleep') throw new Error(`service \`${name}\` is ${service.state}, not asleep`);
  note(`service \`${name}\` is asleep`);

  const context = await browser.newContext({ viewport: { width: 1280, height: 860 }, colorScheme: 'dark' });
  context.setDefaultTimeout(DEADLINE);
  const page = await context.newPage();
  page.on('console', (m) => log.push(`console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => log.push(`page error: ${e.message}`));
  // The page is self-contained: anything it asks of another host is a bug.
  const foreign = [];
  page.on('request', (r) => {
    const url = new URL(r.url());
    if (!['http:', 'https:', 'ws:', 'wss:'].includes(url.protocol)) return;
    if (url.host !== new URL(apiUrl).host) foreign.push(r.url());
  });
  const id = (testid) => page.getByTestId(testid);
  const card = page.locator(`[data-testid="card-${name}"]`);

  step = 'opening the page';
  const response = await page.goto(new URL('/', apiUrl).href);
  if (!response || response.status() !== 200) throw new Error(`GET / answered ${response && response.status()}`);
  const type = response.headers()['content-type'] || '';
  if (!type.startsWith('text/html')) throw new Error(`GET / is ${type}, not text/html`);

  step = 'refusing a wrong token';
  await id('token-input').fill('not-a-token-of-this-gateway');
  await id('token-save').click();
  await id('token-error').filter({ hasText: /not accepted/ }).waitFor();
  note('a wrong token is refused: ' + (await id('token-error').textContent()));

  if (readToken) {
    step = 'signing in with the read-only token';
    await id('token-input').fill(readToken);
    await id('token-save').click();
    await card.and(page.locator('[data-state="asleep"]')).waitFor();

    step = 'seeing Wake and Sleep greyed out for the read-only token';
    await id(`hint-${name}`).filter({ hasText: /role/ }).waitFor();
    if (!(await id(`wake-${name}`).isDisabled())) throw new Error('Wake is enabled for a read-only token');
    if (!(await id(`sleep-${name}`).isDisabled())) throw new Error('Sleep is enabled for a read-only token');
    note('the read-only token gets: ' + (await id(`hint-${name}`).textContent()));

    step = 'changing the token';
    await id('token-change').click();
  }

  step = 'signing in with the operate token';
  await id('token-input').fill(token);
  await id('token-save').click();
  // The page checks the token against the API before it keeps it: wait for that.
  await page
    .waitForFunction((t) => localStorage.getItem('wakegate.token') === t, token, { timeout: 15000 })
    .catch(() => { throw new Error('the token was not kept in localStorage'); });

  step = `seeing \`${name}\` asleep`;
  await card.and(page.locator('[data-state="asleep"]')).waitFor();
  const badge = (await id(`state-${name}`).textContent()).trim();
  if (badge !== 'asleep') throw new Error(`the state badge says "${badge}"`);
  const mode = (await id(`sleep-mode-${name}`).textContent()).trim();
  if (mode !== 'stopped') throw new Error(`the sleep mode under the badge says "${mode}"`);
  await id('live').and(page.locator('[data-status="live"]')).waitFor();
  note(`the card shows \`${name}\` asleep and the live stream is open`);

  step = `clicking Wake on \`${name}\``;
  await id(`wake-${name}`).click();

  // The POST answers "waking" at most; everything after it can only come through the stream.
  step = 'seeing the wake progress live';
  await id(`steps-${name}`).locator('li', { hasText: /accept connections/ }).waitFor();
  note('progress shown: ' + (await id(`steps-${name}`).innerText()).replace(/\s+/g, ' '));

  step = `seeing \`${name}\` awake through the live stream`;
  await card.and(page.locator('[data-state="awake"]')).waitFor();
  await id(`events-${name}`).locator('li[data-kind="transition"]', { hasText: /awake/ }).waitFor();
  await id(`idle-${name}`).filter({ hasText: /\d+[sm]/ }).waitFor();
  const after = (await id(`state-${name}`).textContent()).trim();
  if (after !== 'awake') throw new Error(`the state badge says "${after}"`);
  if (await id(`sleep-mode-${name}`).isVisible()) throw new Error('a sleep mode is shown while awake');
  note(`the card shows \`${name}\` awake; sleeps in ${await id(`idle-${name}`).textContent()}`);

  step = 'taking the screenshots';
  await page.screenshot({ path: screenshot, fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  const phone = screenshot.replace(/(\.png)?$/, '-phone.png');
  await page.screenshot({ path: phone, fullPage: true });
  note(`screenshots: ${screenshot}, ${phone}`);

  step = 'checking what the page did besides';
  if (foreign.length) throw new Error('the page asked other hosts: ' + foreign.join(', '));
  const errors = log.filter((l) => l.startsWith('page error') || /Content Security Policy/i.test(l));
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
  console.error(`dashboard: FAILED while ${step}: ${e && e.message ? e.message.split('\n')[0] : e}`);
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
