// The demo chat across a server restart, in headless Chromium (Debian's /usr/bin/chromium
// via playwright-core), driven by tests/it/demo.rs over stdin/stdout:
//
//   node demo_recovery.js http://127.0.0.1:PORT
//
// Ana logs in (the page joins #general and asks for its history: the first join), says
// something, and the script prints "READY". The test stops the demo and writes "DOWN";
// once Ana's page is reconnecting the script takes her browser offline (her reconnects
// fail) and prints "OFFLINE". The test starts the demo again, Bo (a plain WebSocket client
// of the test) publishes into #general, and the test writes "PUBLISHED". Ana was away for
// all of it: the script waits for one of her reconnect attempts to fail while offline and
// records her states and frames meanwhile (no 'open', no frame). It brings her back
// online, waits until her page shows Bo's messages and prints "RECOVERED"; the test has
// Bo say one more thing live and writes "LIVE"; the script waits for it and prints one
// JSON line: what Ana's page shows and what went over her WebSockets.
// Every wait is bounded; a failure prints "ERROR <step>: <why>" and exits 1.
'use strict';
const { chromium } = require('playwright-core');
const readline = require('readline');

const base = process.argv[2];
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const T = 15_000;
let step = 'start';
let page = null;

function fail(msg) {
  console.log(`ERROR ${step}: ${msg}`);
  process.exit(1);
}
setTimeout(() => fail('overall timeout (90 s)'), 90_000).unref();

const rl = readline.createInterface({ input: process.stdin });
const lines = [];
let waiting = null;
rl.on('line', (l) => {
  if (waiting) { const w = waiting; waiting = null; w(l.trim()); } else lines.push(l.trim());
});
async function expectLine(want) {
  const line = lines.length ? lines.shift() : await new Promise((resolve) => { waiting = resolve; });
  if (line !== want) fail(`expected ${want} on stdin, got ${JSON.stringify(line)}`);
}

// Every WebSocket of Ana's page, with the frames it sent and received.
const sockets = [];
let away = false;
let receivedWhileAway = 0;
function watchSockets(p) {
  p.on('websocket', (ws) => {
    const s = { url: ws.url(), sent: [], received: [], closed: false };
    sockets.push(s);
    const parse = (f) => { try { return JSON.parse(String(f.payload)); } catch (_) { return { raw: String(f.payload) }; } };
    ws.on('framesent', (f) => s.sent.push(parse(f)));
    ws.on('framereceived', (f) => {
      if (away) receivedWhileAway += 1;
      s.received.push(parse(f));
    });
    ws.on('close', () => { s.closed = true; });
  });
}

const waitText = (sel, needle) =>
  page.waitForFunction(
    ([s, n]) => { const e = document.querySelector(s); return e && e.textContent.includes(n); },
    [sel, needle],
    { timeout: T },
  );
const waitState = (state, timeout) =>
  page.waitForFunction((st) => document.getElementById('state').dataset.state === st, state, { timeout: timeout || T });
const shown = () => page.$$eval('#messages li.msg', (lis) =>
  lis.map((li) => [li.querySelector('.who').textContent, li.querySelector('.text').textContent]));

(async () => {
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  const results = {};

  step = 'Ana logs in and is in #general';
  const ctx = await browser.newContext({ viewport: { width: 1200, height: 760 } });
  page = await ctx.newPage();
  page.on('pageerror', (e) => fail(`page error: ${e}`));
  watchSockets(page);
  await page.goto(base + '/');
  await page.fill('#name', 'Ana');
  await page.click('#login-button');
  await waitState('open');
  await waitText('#presence', 'Ana (you)');
  await page.fill('#text', 'before the restart');
  await page.click('#send');
  await waitText('#messages', 'before the restart');
  // every state the page goes through from here on
  await page.evaluate(() => {
    window.streetStates = [];
    const el = document.getElementById('state');
    new MutationObserver(() => window.streetStates.push(el.dataset.state))
      .observe(el, { attributes: true, attributeFilter: ['data-state'] });
  });
  console.log('READY');

  step = 'the demo stops; Ana goes offline';
  await expectLine('DOWN');
  await waitState('reconnecting');
  await ctx.setOffline(true);
  away = true;
  await page.evaluate(() => { window.streetStates = []; });
  const socketsBefore = sockets.length;
  console.log('OFFLINE');

  step = 'Bo publishes while Ana is away';
  await expectLine('PUBLISHED');
  // and one reconnect attempt at least failed while offline (connect, then the next wait:
  // two 'reconnecting' states), so her staying away is the browser's doing, not timing
  await page.waitForFunction(() => window.streetStates.length >= 2, null, { timeout: T });
  results.statesWhileAway = await page.evaluate(() => window.streetStates.slice());
  results.stateWhenPublished = await page.locator('#state').getAttribute('data-state');
  results.receivedWhileAway = receivedWhileAway;
  results.shownWhileAway = await shown();
  away = false;

  step = 'Ana comes back and recovers';
  await ctx.setOffline(false);
  await waitState('open', 30_000);
  await page.waitForFunction(
    () => Array.from(document.querySelectorAll('#messages li.msg .text')).some((e) => e.textContent === 'missed 5'),
    null,
    { timeout: T },
  );
  console.log('RECOVERED');

  step = 'Bo says one more thing, live';
  await expectLine('LIVE');
  await page.waitForFunction(
    () => Array.from(document.querySelectorAll('#messages li.msg .text')).some((e) => e.textContent === 'live after recovery'),
    null,
    { timeout: T },
  );
  // anything that would arrive late (a duplicate, a history answer) has had its chance
  await page.waitForTimeout(300);

  results.shown = await shown();
  // the first socket (before the restart) and the one that recovered (the last that got a welcome)
  const welcomed = sockets.filter((s) => s.received.some((m) => m.type === 'welcome'));
  results.welcomedSockets = welcomed.length;
  results.socketsWhileAway = sockets.length - socketsBefore;
  const summary = (s) => ({
    joins: s.sent.filter((m) => m.type === 'room:join').map((m) => m.payload),
    historyAsked: s.sent.filter((m) => m.type === 'room:history').length,
    historyAnswers: s.received.filter((m) => m.type === 'street:reply' && m.payload &&
      m.payload.result && Array.isArray(m.payload.result.publications)).length,
    joined: s.received.filter((m) => m.type === 'room:joined').map((m) => m.payload),
    chat: s.received.filter((m) => m.type === 'chat')
      .map((m) => ({ channel: m.channel, offset: m.offset, who: m.payload.memberId, text: m.payload.text })),
  });
  results.first = summary(welcomed[0]);
  results.recovered = summary(welcomed[welcomed.length - 1]);
  console.log(JSON.stringify(results));
  rl.close();
  await browser.close();
  process.exit(0);
})().catch(async (e) => {
  let seen = '';
  try {
    seen = ` | state=${await page.locator('#state').textContent({ timeout: 1000 })}` +
      ` messages=${JSON.stringify(await shown())}` +
      ` error=${await page.locator('#chat-error').textContent({ timeout: 1000 })}`;
  } catch (_) { /* no page yet */ }
  fail(String((e && e.message) || e).split('\n')[0] + seen);
});
