// Node `ws` client against a street server: proves an existing StreetJS-style client
// works unchanged. Usage: node interop.js PORT. Prints one JSON line with what it saw.
const WebSocket = require('ws');
const port = process.argv[2];
const url = `ws://127.0.0.1:${port}/ws`;
const out = {};
const timer = setTimeout(() => { out.timeout = true; finish(); }, 8000);
function finish() { clearTimeout(timer); console.log(JSON.stringify(out)); process.exit(0); }
function open(u = url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(u);
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  });
}
function next(ws) {
  return new Promise((resolve) => ws.once('message', (d) => resolve(JSON.parse(d.toString()))));
}
function closed(ws) {
  return new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
}
(async () => {
  const a = await open();
  const b = await open();
  // emit: the @streetjs/websocket client shape {type, payload, ts}
  a.send(JSON.stringify({ type: 'echo', payload: { text: 'héllo', n: 1 }, ts: Date.now() }));
  out.echo = await next(a);
  // broadcast reaches both
  const pa = next(a), pb = next(b);
  b.send(JSON.stringify({ type: 'broadcast', payload: 'to all', ts: Date.now() }));
  out.broadcastA = await pa;
  out.broadcastB = await pb;
  // third connection is over the cap of 2
  const c = new WebSocket(url);
  out.overCap = await closed(c);
  a.close(1000); b.close(1000);
  await Promise.all([closed(a), closed(b)]);
  finish();
})().catch((e) => { out.error = String(e); finish(); });
