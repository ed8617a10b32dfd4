// Headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core) opens the SSE
// example's page and reports the ticks its EventSource received, across a server restart.
//
//   node sse_browser.js http://127.0.0.1:PORT/ [screenshot.png]
//
// Protocol with the Rust test (tests/it/sse.rs), one line each:
//   stdout "READY <n>"   after n >= 3 ticks arrived;
//   stdin  "RESTARTED"   once the server was stopped and started again;
//   stdout JSON          {ids, states, errors} after 3 more ticks; then it exits.
// Every wait is bounded; a failure prints "ERROR ..." and exits 1.
'use strict';
const { chromium } = require('playwright-core');
const readline = require('readline');

const url = process.argv[2];
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

function fail(msg) {
  console.log(`ERROR ${msg}`);
  process.exit(1);
}
setTimeout(() => fail('overall timeout (60 s)'), 60_000).unref();

(async () => {
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(url);
  await page.waitForFunction(() => window.streetTicks.length >= 3, null, { timeout: 15_000 });
  const before = await page.evaluate(() => window.streetTicks.length);
  console.log(`READY ${before}`);

  const rl = readline.createInterface({ input: process.stdin });
  const line = await new Promise((resolve) => rl.once('line', resolve));
  if (line.trim() !== 'RESTARTED') fail(`unexpected line ${line}`);
  // EventSource reconnects by itself (about 3 s in Chromium) with Last-Event-ID
  await page.waitForFunction((n) => window.streetTicks.length >= n + 3, before, { timeout: 30_000 });
  const ids = await page.evaluate(() => window.streetTicks.map((t) => t.id));
  const shown = await page.locator('#ticks li').first().getAttribute('data-id');
  const state = await page.locator('#state').textContent();
  if (process.argv[3]) await page.screenshot({ path: process.argv[3] });
  console.log(JSON.stringify({ ids, before, shown, state, errors }));
  rl.close();
  await browser.close();
  process.exit(0);
})().catch((e) => fail(String(e && e.stack || e)));
