// street.js (client/street.js) driven from Node with the `ws` package, for the Rust tests.
//
//   node street_client.js reconnect URL N    N clients; prints "READY N" once all are open,
//                                            then, after the server restarted, one JSON line:
//                                            close codes/reasons and how the reconnects spread
//   node street_client.js wire URL           echo and broadcast through street.js, then one
//                                            JSON line (used against @streetjs/websocket)
//   node street_client.js backoff URL N      one client against a server that keeps closing
//                                            it; after N scheduled reconnects, one JSON line:
//                                            each one's {attempt, delayMs, code, reason}
//   node street_client.js lifecycle URL      one client; when the server sends `done`, one
//                                            JSON line: the lifecycle events it saw and the
//                                            server events by type
// Every wait is bounded; failures print "ERROR ..." and exit 1.
'use strict';
const path = require('path');
const WebSocket = require('ws');
const Street = require(path.join(__dirname, '..', '..', 'client', 'street.js'));

const [mode, url, nArg] = process.argv.slice(2);
function fail(msg) {
  console.log(`ERROR ${msg}`);
  process.exit(1);
}
setTimeout(() => fail('overall timeout (60 s)'), 60_000).unref();

function pct(sorted, q) {
  if (!sorted.length) return 0;
  return sorted[Math.round((sorted.length - 1) * q)];
}

if (mode === 'reconnect') {
  const n = Number(nArg);
  const clients = [];
  let open = 0;
  let ready = false;
  const closes = [];
  const backs = [];
  let firstClose = null;
  for (let i = 0; i < n; i++) {
    const c = new Street(url, { WebSocket, minDelay: 1000 });
    c.onLifecycle('state', ({ state }) => {
      if (state === 'open') {
        if (!ready) {
          open += 1;
          if (open === n) {
            ready = true;
            console.log(`READY ${n}`);
          }
        } else {
          backs.push(Date.now() - firstClose);
          if (backs.length === n) report();
        }
      }
    });
    c.onLifecycle('close', ({ code, reason }) => {
      if (!ready) return;
      if (firstClose === null) firstClose = Date.now();
      closes.push({ code, reason });
    });
    clients.push(c);
  }
  function report() {
    backs.sort((a, b) => a - b);
    const buckets = new Map();
    for (const b of backs) buckets.set(Math.floor(b / 100), (buckets.get(Math.floor(b / 100)) || 0) + 1);
    const codes = {};
    for (const c of closes) codes[`${c.code} ${c.reason}`] = (codes[`${c.code} ${c.reason}`] || 0) + 1;
    console.log(JSON.stringify({
      connections: n,
      closes: codes,
      reconnected: backs.length,
      back_min_ms: pct(backs, 0),
      back_p10_ms: pct(backs, 0.1),
      back_p50_ms: pct(backs, 0.5),
      back_p90_ms: pct(backs, 0.9),
      back_max_ms: pct(backs, 1),
      peak_reconnects_per_100ms: Math.max(...buckets.values()),
    }));
    for (const c of clients) c.close();
    setTimeout(() => process.exit(0), 100);
  }
} else if (mode === 'wire') {
  const a = new Street(url, { WebSocket });
  const b = new Street(url, { WebSocket });
  const got = { echo: null, broadcastA: null, broadcastB: null, states: [] };
  a.onLifecycle('state', ({ state }) => got.states.push(state));
  let opened = 0;
  const onOpen = () => {
    opened += 1;
    if (opened === 2) {
      a.emit('echo', { hello: 'world' });
      a.emit('broadcast', [1, 'two']);
    }
  };
  a.onLifecycle('open', onOpen);
  b.onLifecycle('open', onOpen);
  a.on('echo', (p, env) => { got.echo = { p, ts: typeof env.ts }; maybeDone(); });
  a.on('broadcast', (p) => { got.broadcastA = p; maybeDone(); });
  b.on('broadcast', (p) => { got.broadcastB = p; maybeDone(); });
  function maybeDone() {
    if (got.echo && got.broadcastA && got.broadcastB) {
      console.log(JSON.stringify(got));
      a.close();
      b.close();
      setTimeout(() => process.exit(0), 100);
    }
  }
} else if (mode === 'backoff') {
  // deterministic waits (random = 0.5): attempt k waits 0.5 * 50 * 2^k ms
  const n = Number(nArg);
  const c = new Street(url, { WebSocket, minDelay: 50, maxDelay: 60_000, stableAfterMs: 300, random: () => 0.5 });
  const reconnects = [];
  let done = false;
  c.onLifecycle('state', ({ state, attempt, delayMs, code, reason }) => {
    if (done) return;
    if (state === 'closed') fail(`stopped reconnecting after ${code} ${reason}`);
    if (state !== 'reconnecting' || delayMs === undefined) return;
    reconnects.push({ attempt, delayMs, code, reason });
    if (reconnects.length === n) {
      done = true;
      console.log(JSON.stringify({ reconnects }));
      c.close();
      setTimeout(() => process.exit(0), 100);
    }
  });
} else if (mode === 'lifecycle') {
  const c = new Street(url, { WebSocket });
  const got = { states: [], opens: 0, closes: 0, errors: 0, server: {}, any: [] };
  c.onLifecycle('state', ({ state }) => got.states.push(state));
  c.onLifecycle('open', () => { got.opens += 1; });
  c.onLifecycle('close', () => { got.closes += 1; });
  c.onLifecycle('error', () => { got.errors += 1; });
  for (const t of ['state', 'open', 'close', 'error']) c.on(t, (p) => { got.server[t] = p; });
  c.on('*', (t) => got.any.push(t));
  try { c.onLifecycle('chat', () => {}); got.unknownLifecycle = 'accepted'; } catch (e) { got.unknownLifecycle = e.name; }
  c.on('done', () => {
    console.log(JSON.stringify(got));
    c.close();
    setTimeout(() => process.exit(0), 100);
  });
} else {
  fail(`unknown mode ${mode}`);
}
