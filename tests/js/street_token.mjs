// getToken and in-band refresh against a real street server whose connections expire
// (tests/it/street_js.rs starts it). Prints one JSON line.
// Usage: node street_token.mjs ws://HOST:PORT/ws
import WebSocket from 'ws';
import Street from 'street-client';

const url = process.argv[2];
const out = { tokens: [], welcomes: [], lifecycle: [], closes: [] };
// 1st: connect; 2nd: a refresh the server refuses (then 4010, a reconnect); 3rd: that
// reconnect; 4th: a refresh it takes
const script = ['t1', 'bad', 't3', 't4'];
let n = 0;
try {
  const s = new Street(url, {
    WebSocket,
    minDelay: 50,
    maxDelay: 200,
    getToken: async () => {
      const t = script[Math.min(n, script.length - 1)];
      n += 1;
      out.tokens.push(t);
      return t;
    },
  });
  for (const name of ['expired', 'token']) {
    s.onLifecycle(name, (i) => out.lifecycle.push(name + ':' + (i.state || 'warned')));
  }
  s.onLifecycle('close', (i) => out.closes.push(i.code));
  await new Promise((resolve, reject) => {
    s.on('welcome', (p) => out.welcomes.push(p.token));
    s.onLifecycle('token', (i) => { if (i.state === 'refreshed') resolve(); });
    setTimeout(() => reject(new Error('no refresh in 10 s: ' + JSON.stringify(out))), 10000);
  });
  out.ping = await s.emitWithAck('ping', null);
  console.log(JSON.stringify(out)); // (close() below is a close of its own)
  s.close();
  process.exit(0);
} catch (e) {
  console.log('ERROR ' + (e && e.stack || e));
  process.exit(1);
}
