// The client package's binary messages (against the real street server,
// tests/it/street_js.rs starts it) and its liveness timeout (against a server here that
// goes silent after one street:ping). Prints one JSON line.
// Usage: node street_details.mjs ws://HOST:PORT/ws
import WebSocket, { WebSocketServer } from 'ws';
import Street from 'street-client';

const url = process.argv[2];
const out = {};
try {
  // binary, both ways, through the server's raw echo
  const s = new Street(url, { WebSocket });
  const echoed = new Promise((resolve) => s.onBinary(resolve));
  s.sendBinary(new Uint8Array([1, 2, 3, 250]));
  const got = await echoed;
  out.binaryIsArrayBuffer = got instanceof ArrayBuffer;
  out.binary = Array.from(new Uint8Array(got));
  s.close();

  // liveness: one street:ping (100 ms), then silence, connection open
  const silent = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((r) => silent.on('listening', r));
  let connections = 0;
  silent.on('connection', (ws) => {
    connections += 1;
    if (connections === 1) ws.send(JSON.stringify({ type: 'street:ping', payload: { intervalMs: 100 }, ts: Date.now() }));
  });
  const started = Date.now();
  const l = new Street('ws://127.0.0.1:' + silent.address().port + '/', { WebSocket, minDelay: 10, maxDelay: 20 });
  const seen = [];
  l.on('street:ping', () => seen.push('leaked'));
  const closed = new Promise((resolve) => l.onLifecycle('close', resolve));
  const back = new Promise((resolve) => {
    l.onLifecycle('open', () => { if (connections >= 2) resolve(); });
  });
  out.close = await closed;
  out.gaveUpAfterMs = Date.now() - started;
  await back;
  out.connections = connections;
  out.leaked = seen.length;
  l.close();
  silent.close();
  console.log(JSON.stringify(out));
  process.exit(0);
} catch (e) {
  console.log('ERROR ' + (e && e.stack || e));
  process.exit(1);
}
