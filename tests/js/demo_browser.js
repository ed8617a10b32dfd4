// The demo in headless Chromium (Debian's /usr/bin/chromium via playwright-core), driven
// by tests/it/demo.rs:
//
//   node demo_browser.js http://127.0.0.1:PORT SCREENSHOT_DIR
//
// Two people log in, meet in #general (presence), see each other type, chat (markup stays
// text), hit the closed room, a too-long message, a name with a bidi override, a too-long
// name and a bad token (the login page's open-login notice is read; a CSP violation in the
// console fails the run); a third gets the room's history; the dashboard's numbers move.
// Then it prints "RESTART", waits for "RESTARTED" on stdin (the test restarted the
// server), checks that both pages came back by themselves and keep chatting, and prints
// one JSON line of results.
// Every wait is bounded; a failure prints "ERROR <step>: <why>" and exits 1.
'use strict';
const { chromium } = require('playwright-core');
const readline = require('readline');
const path = require('path');

const base = process.argv[2];
const shots = process.argv[3];
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const T = 15_000;
let step = 'start';
const results = {};
const pages = {};

function fail(msg) {
  console.log(`ERROR ${step}: ${msg}`);
  process.exit(1);
}
setTimeout(() => fail('overall timeout (120 s)'), 120_000).unref();

// A CSP violation (e.g. connect-src refusing the page's own WebSocket) fails the run.
function watchCsp(page, name) {
  page.on('console', (m) => {
    if (/Content Security Policy/i.test(m.text())) fail(`CSP violation (${name}): ${m.text()}`);
  });
}

async function login(browser, name) {
  const ctx = await browser.newContext({ viewport: { width: 1200, height: 760 } });
  const page = await ctx.newPage();
  page.on('pageerror', (e) => fail(`page error (${name}): ${e}`));
  watchCsp(page, name);
  // the extensions the server answered in each WebSocket handshake (Chromium offers
  // permessage-deflate; the demo turns compression on)
  const cdp = await ctx.newCDPSession(page);
  await cdp.send('Network.enable');
  cdp.on('Network.webSocketHandshakeResponseReceived', (e) => {
    const h = e.response.headers || {};
    const ext = h['Sec-WebSocket-Extensions'] || h['sec-websocket-extensions'] || '';
    (results.wsExtensions = results.wsExtensions || {})[name] = ext;
  });
  await page.goto(base + '/');
  await page.fill('#name', name);
  await page.click('#login-button');
  return page;
}

const text = (page, sel) => page.locator(sel).textContent({ timeout: T });
const waitText = (page, sel, needle) =>
  page.waitForFunction(
    ([s, n]) => { const e = document.querySelector(s); return e && e.textContent.includes(n); },
    [sel, needle],
    { timeout: T },
  );
const waitState = (page, state) =>
  page.waitForFunction((st) => document.getElementById('state').dataset.state === st, state, { timeout: 30_000 });

(async () => {
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });

  step = 'two people log in and see each other';
  const ana = await login(browser, 'Ana');
  pages.ana = ana;
  await waitState(ana, 'open');
  await waitText(ana, '#presence', 'Ana (you)');
  const bo = await login(browser, 'Bo');
  pages.bo = bo;
  await waitState(bo, 'open');
  await waitText(bo, '#presence', 'Ana');
  await waitText(ana, '#presence', 'Bo');
  results.presenceAna = await text(ana, '#presence');
  results.presenceBo = await text(bo, '#presence');
  results.me = await text(ana, '#me');

  step = 'typing';
  await bo.type('#text', 'hel');
  await waitText(ana, '#typing', 'Bo is typing');
  results.typing = await text(ana, '#typing');

  step = 'messages, markup stays text';
  const markup = '<img src=x onerror="window.pwned=1"><b>bold?</b>';
  await bo.fill('#text', markup);
  await bo.click('#send');
  await waitText(ana, '#messages', 'bold?');
  results.markupShown = await ana.locator('#messages li.msg .text').last().textContent();
  results.markupImgs = await ana.locator('#messages img').count();
  results.pwned = await ana.evaluate(() => window.pwned === undefined ? 'no' : 'yes');
  await waitText(ana, '#typing', ''); // the message cleared Bo's typing
  results.typingAfterSend = await text(ana, '#typing');
  await ana.fill('#text', 'hello from Ana');
  await ana.click('#send');
  await waitText(bo, '#messages', 'hello from Ana');
  results.boSaw = await bo.locator('#messages li.msg').last().textContent();

  step = 'a closed room';
  await ana.click('#rooms button[data-room="staff"]');
  await waitText(ana, '#chat-error', 'staff');
  results.closedRoom = await text(ana, '#chat-error');

  step = 'a too-long message';
  await ana.fill('#text', 'x'.repeat(1001));
  await ana.click('#send');
  await waitText(ana, '#chat-error', 'longer than');
  results.longMessage = await text(ana, '#chat-error');

  step = 'history for a latecomer';
  const cy = await login(browser, 'Cy');
  await waitText(cy, '#messages', 'hello from Ana');
  results.history = await cy.locator('#messages li.msg').count();
  await cy.context().close();

  step = 'a too-long name';
  const longName = await (await browser.newContext()).newPage();
  watchCsp(longName, 'longName');
  await longName.goto(base + '/');
  results.openNotice = await text(longName, '#open-notice');
  await longName.fill('#name', '\u202Egnp.exe');
  await longName.click('#login-button');
  await waitText(longName, '#login-error', 'invisible');
  results.bidiName = await text(longName, '#login-error');
  await longName.fill('#name', 'N'.repeat(40));
  await longName.click('#login-button');
  await waitText(longName, '#login-error', 'longer than');
  results.longName = await text(longName, '#login-error');

  step = 'a bad token';
  const badCtx = await browser.newContext();
  await badCtx.addInitScript(() => sessionStorage.setItem('street-token', 'not.a.token'));
  const bad = await badCtx.newPage();
  await bad.goto(base + '/');
  await waitText(bad, '#login-error', 'invalid or has expired');
  results.badToken = await text(bad, '#login-error');
  results.badTokenState = await bad.locator('#state').getAttribute('data-state');

  step = 'the dashboard moves';
  const dash = await ana.context().newPage();
  watchCsp(dash, 'dashboard');
  await dash.goto(base + '/dashboard');
  await dash.waitForFunction(() => window.streetSamples >= 1, null, { timeout: T });
  const chatBefore = Number(await text(dash, '#m-chat'));
  results.dashConnections = Number(await text(dash, '#m-connections'));
  for (let i = 0; i < 3; i++) {
    await ana.fill('#text', `dashboard ping ${i}`);
    await ana.click('#send');
  }
  await dash.waitForFunction((n) => Number(document.getElementById('m-chat').textContent) >= n + 3, chatBefore, { timeout: T });
  await dash.waitForFunction(() => window.streetMaxIn > 0, null, { timeout: T });
  results.dashMaxIn = await dash.evaluate(() => window.streetMaxIn);
  results.dashChat = [chatBefore, Number(await text(dash, '#m-chat'))];
  await ana.screenshot({ path: path.join(shots, 'chat.png') });
  // a little traffic for the chart while the dashboard collects a few samples
  const until = (await dash.evaluate(() => window.streetSamples)) + 4;
  for (let i = 0; i < 8; i++) {
    await bo.fill('#text', `chart ${i}`);
    await bo.click('#send');
    await bo.waitForTimeout(250);
  }
  await dash.waitForFunction((n) => window.streetSamples >= n, until, { timeout: T });
  await dash.screenshot({ path: path.join(shots, 'dashboard.png') });

  step = 'restart';
  console.log('RESTART');
  const rl = readline.createInterface({ input: process.stdin });
  const line = await new Promise((resolve) => rl.once('line', resolve));
  if (line.trim() !== 'RESTARTED') fail(`unexpected line ${line}`);
  const samplesBefore = await dash.evaluate(() => window.streetSamples);
  await waitState(ana, 'open');
  await waitState(bo, 'open');
  await waitText(ana, '#presence', 'Bo');
  await ana.fill('#text', 'after the restart');
  await ana.click('#send');
  await waitText(bo, '#messages', 'after the restart');
  results.afterRestart = await bo.locator('#messages li.msg').last().textContent();
  await dash.waitForFunction((n) => window.streetSamples > n, samplesBefore, { timeout: 30_000 });
  results.dashboardResumed = true;

  console.log(JSON.stringify(results));
  rl.close();
  await browser.close();
  process.exit(0);
})().catch(async (e) => {
  // what the pages showed, to tell why a wait timed out
  let seen = '';
  for (const [name, page] of Object.entries(pages)) {
    try {
      seen += ` | ${name}: state=${await page.locator('#state').textContent({ timeout: 1000 })}` +
        ` presence=${await page.locator('#presence').textContent({ timeout: 1000 })}` +
        ` error=${await page.locator('#chat-error').textContent({ timeout: 1000 })}`;
    } catch (_) { /* a page without those */ }
  }
  fail(String((e && e.message) || e).split('\n')[0] + seen);
});
