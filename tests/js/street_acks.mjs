// The client package against a real street server (tests/it/street_js.rs starts it): the
// ES module and the CommonJS build, requests both ways. Prints one JSON line: what it saw.
// Usage: node street_acks.mjs ws://HOST:PORT/ws
import { createRequire } from 'node:module';
import WebSocket from 'ws';
import Street, { StreetAckError } from '../../client/street.mjs';

const require = createRequire(import.meta.url);
const url = process.argv[2];
const out = {};

async function outcome(p) {
  try {
    return { result: await p };
  } catch (e) {
    return { code: e.code, name: e.name };
  }
}

function opened(s) {
  return new Promise((resolve) => s.onLifecycle('open', resolve));
}

try {
  const s = new Street(url, { WebSocket, ackTimeoutMs: 5000, maxPendingAcks: 3 });
  // a request made before the connection is open waits in the queue and goes out on open
  const early = s.emitWithAck('sum', [20, 22]);
  await opened(s);
  out.early = await outcome(early);
  out.sum = await outcome(s.emitWithAck('sum', [1, 2]));
  out.rejected = await outcome(s.emitWithAck('sum', [Number.MAX_SAFE_INTEGER * 1024, Number.MAX_SAFE_INTEGER * 1024]));
  out.noHandler = await outcome(s.emitWithAck('nobody', null));
  out.clientTimeout = await outcome(s.emitWithAck('slow', 1000, { timeout: 100 }));
  // three may wait; the fourth is refused at once
  const held = [1, 2, 3].map(() => s.emitWithAck('slow', 300));
  out.tooMany = await outcome(s.emitWithAck('slow', 1));
  out.held = (await Promise.all(held.map(outcome))).map((o) => o.result);
  // the server's requests: answered by onRequest (a value, a promise, a throw), or not
  s.onRequest('confirm', (q) => ({ sure: true, q }));
  s.onRequest('later', async (q) => q + '!');
  s.onRequest('refuse', () => { const e = new Error('no way'); e.code = 'denied'; throw e; });
  const seen = [];
  const done = new Promise((resolve) => {
    s.on('outcome', (p) => { seen.push(p); if (seen.length === 4) resolve(); });
  });
  for (const ask of ['confirm', 'later', 'refuse', 'unknown']) s.emit('please', { ask });
  await done;
  out.serverAsked = seen;
  // replies never reach on() listeners
  let leaked = 0;
  s.on('street:reply', () => { leaked += 1; });
  s.on('*', (type) => { if (type === 'street:reply') leaked += 1; });
  out.afterListeners = await outcome(s.emitWithAck('sum', [2, 3]));
  out.leaked = leaked;
  // close(): what still waits rejects with 'closed'
  const pending = s.emitWithAck('slow', 1000);
  s.close();
  out.closed = await outcome(pending);
  out.errorType = typeof StreetAckError;

  // the CommonJS build is the same client
  const Cjs = require('../../client/street.js');
  const c = new Cjs(url, { WebSocket });
  await opened(c);
  out.cjs = await outcome(c.emitWithAck('sum', [5, 5]));
  out.cjsDefault = Cjs.default === Cjs && Cjs.Street === Cjs;
  c.close();
  console.log(JSON.stringify(out));
  process.exit(0);
} catch (e) {
  console.log('ERROR ' + (e && e.stack || e));
  process.exit(1);
}
