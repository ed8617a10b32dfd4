// Headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core) imports the
// client package's ES module from the demo (/street.mjs), connects with getToken and makes
// a request: the demo's in-band token refresh (street:auth). Prints one JSON line.
//   node client_browser.mjs http://127.0.0.1:PORT/ TOKEN
import { chromium } from 'playwright-core';

const [url, token] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const fail = (msg) => { console.log(`ERROR ${msg}`); process.exit(1); };
setTimeout(() => fail('overall timeout (60 s)'), 60_000).unref();

try {
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(url + 'health');
  const out = await page.evaluate(async (token) => {
    const { default: Street, StreetAckError } = await import('/street.mjs');
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    let calls = 0;
    const s = new Street(proto + '//' + location.host + '/ws', {
      getToken: async () => { calls += 1; return token; },
    });
    const welcome = await new Promise((resolve) => s.on('welcome', resolve));
    const refreshed = await s.emitWithAck('street:auth', { token }, { timeout: 5000 });
    let refused = null;
    try { await s.emitWithAck('street:auth', { token: 'forged' }, { timeout: 5000 }); } catch (e) { refused = { name: e.name, code: e.code, message: e.message }; }
    s.close();
    return { member: welcome.memberId, calls, refreshed, refused, factory: typeof StreetAckError };
  }, token);
  out.errors = errors;
  await browser.close();
  console.log(JSON.stringify(out));
  process.exit(0);
} catch (e) {
  fail(e && e.stack || e);
}
