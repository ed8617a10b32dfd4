// Node `ws` with permessage-deflate against a street server with compression on.
// Usage: node deflate.js PORT N. N clients connect offering permessage-deflate (ws's
// default offer); the first sends a large JSON echo (ws compresses it: the server inflates
// it), then a ~1 KB chat-like broadcast that all N receive. Prints one JSON line.
const WebSocket = require('ws');
const { isDeepStrictEqual } = require('util');
const [port, n] = [process.argv[2], +process.argv[3]];
const out = { clients: n };
const timer = setTimeout(() => { out.timeout = true; finish(); }, 15000);
function finish() { clearTimeout(timer); console.log(JSON.stringify(out)); process.exit(0); }
function open() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, { perMessageDeflate: true });
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  });
}
const next = (ws) => new Promise((resolve) => ws.once('message', (d) => resolve(d.toString())));
(async () => {
  const all = [];
  for (let i = 0; i < n; i++) all.push(await open());
  out.extensions = all[0].extensions;
  const big = { rows: Array.from({ length: 400 }, (_, i) => ({ id: i, user: 'user' + (i % 7), text: 'hello from the street' })) };
  all[0].send(JSON.stringify({ type: 'echo', payload: big, ts: Date.now() }));
  const echo = JSON.parse(await next(all[0]));
  out.echoOk = isDeepStrictEqual(echo.payload, big);
  out.echoBytes = JSON.stringify(big).length;
  const chat = { room: 'general', from: 'ana', text: 'lorem ipsum dolor sit amet '.repeat(30), at: 1700000000000 };
  const before = all.map((ws) => ws._socket.bytesRead);
  const got = all.map((ws) => next(ws));
  all[0].send(JSON.stringify({ type: 'broadcast', payload: chat, ts: Date.now() }));
  const msgs = (await Promise.all(got)).map((t) => JSON.parse(t));
  out.broadcastOk = msgs.every((m) => m.type === 'broadcast' && isDeepStrictEqual(m.payload, chat));
  out.broadcastLen = msgs[0] ? JSON.stringify(msgs[0]).length : 0;
  out.maxWireBytes = Math.max(...all.map((ws, i) => ws._socket.bytesRead - before[i]));
  all.forEach((ws) => ws.close(1000));
  finish();
})().catch((e) => { out.error = String(e); finish(); });
