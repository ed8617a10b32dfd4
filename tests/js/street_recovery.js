// street.js (client/street.js) against a fake server speaking the channel history protocol
// (issue 13): positions, recovery after a reconnect, duplicates, gaps, a failed recovery,
// an epoch change, leave.
//
//   node street_recovery.js     runs the cases in order on one client; prints one JSON line
//                               (what the app and the server saw), or "ERROR ..." and exit 1
// Every wait is bounded.
'use strict';
const path = require('path');
const WebSocket = require('ws');
const { WebSocketServer } = WebSocket;
const Street = require(path.join(__dirname, '..', '..', 'client', 'street.js'));

function fail(msg) {
  console.log(`ERROR ${msg}`);
  process.exit(1);
}
setTimeout(() => fail('overall timeout (20 s)'), 20_000).unref();
const WAIT_MS = 3000;

let step = 'start';
function check(cond, what) {
  if (!cond) fail(`${step}: ${what}`);
}
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

// ---- the fake server: each connection's client frames, read in order with a timeout ----
const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
const conns = [];
let connWaiter = null;
wss.on('connection', (ws) => {
  const c = { ws, frames: [], waiter: null };
  ws.on('message', (data) => {
    const f = JSON.parse(String(data));
    if (c.waiter) { const w = c.waiter; c.waiter = null; w(f); } else c.frames.push(f);
  });
  conns.push(c);
  if (connWaiter) { const w = connWaiter; connWaiter = null; w(c); }
});

function timeout(what) {
  return new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), WAIT_MS));
}
function nextConn(n) {
  if (conns.length >= n) return Promise.resolve(conns[n - 1]);
  return Promise.race([new Promise((r) => { connWaiter = r; }), timeout(`connection ${n}`)]);
}
function nextFrame(c) {
  if (c.frames.length) return Promise.resolve(c.frames.shift());
  return Promise.race([new Promise((r) => { c.waiter = r; }), timeout('a frame from the client')]);
}
function send(c, type, payload, extra) {
  c.ws.send(JSON.stringify(Object.assign({ type, payload, ts: Date.now() }, extra || {})));
}
function publish(c, n) {
  send(c, 'msg', { n, channel: 'ignored-for-positions' }, { channel: 'room', offset: n });
}

// ---- the app: what street.js delivers ----
const app = { delivered: [], joined: [], plain: [] };
function waitFor(pred, what) {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    (function poll() {
      if (pred()) return resolve();
      if (Date.now() - t0 > WAIT_MS) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(poll, 5);
    })();
  });
}

async function main() {
  await new Promise((r) => wss.on('listening', r));
  const url = `ws://127.0.0.1:${wss.address().port}/ws`;
  const street = new Street(url, { WebSocket, minDelay: 20, maxDelay: 50, random: () => 0.5 });
  street.on('msg', (p) => app.delivered.push(p.n));
  street.on('plain', (p) => app.plain.push(p));
  street.on('room:joined', (p) => app.joined.push(p));
  street.join('room');
  const out = {};

  step = 'a. first join';
  let c = await nextConn(1);
  let f = await nextFrame(c);
  check(f.type === 'room:join' && same(f.payload, { channel: 'room' }), `plain join expected, got ${JSON.stringify(f)}`);
  send(c, 'room:joined', { channel: 'room', members: ['me'], epoch: 'e1', offset: 3 });
  publish(c, 4);
  publish(c, 5);
  // no top-level channel/offset: delivered as is, no position involved
  send(c, 'plain', { channel: 'room', offset: 99 });
  await waitFor(() => app.delivered.length === 2 && app.plain.length === 1, 'publications 4, 5');
  check(same(street.position('room'), { epoch: 'e1', offset: 5 }), `position ${JSON.stringify(street.position('room'))}`);

  step = 'a. reconnect and recover';
  c.ws.close(1012, 'restart');
  c = await nextConn(2);
  f = await nextFrame(c);
  check(f.type === 'room:join' && same(f.payload, { channel: 'room', since: { epoch: 'e1', offset: 5 } }),
    `join since e1/5 expected, got ${JSON.stringify(f)}`);
  send(c, 'room:joined', { channel: 'room', members: ['me'], epoch: 'e1', offset: 7, recovered: true });
  publish(c, 6);
  publish(c, 7);
  await waitFor(() => app.delivered.length === 4, 'the replay 6, 7');
  check(same(app.delivered, [4, 5, 6, 7]), `delivered ${app.delivered}`);
  check(app.joined[1].recovered === true, 'the app sees recovered: true');
  out.afterRecovery = app.delivered.slice();

  step = 'b. duplicates around the rejoin';
  publish(c, 5);
  publish(c, 7);
  publish(c, 8);
  await waitFor(() => app.delivered.length === 5, 'publication 8');
  check(same(app.delivered, [4, 5, 6, 7, 8]), `delivered ${app.delivered}`);
  check(street.stats.duplicates === 2, `duplicates ${street.stats.duplicates}`);
  out.duplicates = street.stats.duplicates;

  step = 'c. gap';
  publish(c, 10);
  f = await nextFrame(c);
  check(f.type === 'room:join' && same(f.payload, { channel: 'room', since: { epoch: 'e1', offset: 8 } }),
    `join since e1/8 expected, got ${JSON.stringify(f)}`);
  check(street.stats.gaps === 1, `gaps ${street.stats.gaps}`);
  publish(c, 11); // live, in flight before the reply: dropped, the replay brings it
  send(c, 'room:joined', { channel: 'room', members: ['me'], epoch: 'e1', offset: 11, recovered: true });
  publish(c, 9);
  publish(c, 10);
  publish(c, 11);
  publish(c, 12);
  await waitFor(() => app.delivered.length === 9, 'the replay 9, 10, 11 and 12');
  check(same(app.delivered, [4, 5, 6, 7, 8, 9, 10, 11, 12]), `delivered ${app.delivered}`);
  check(street.stats.gaps === 1, `gaps ${street.stats.gaps}`);
  out.gaps = street.stats.gaps;

  step = 'd. recovery fails';
  c.ws.close(1012, 'restart');
  c = await nextConn(3);
  f = await nextFrame(c);
  check(f.type === 'room:join' && same(f.payload, { channel: 'room', since: { epoch: 'e1', offset: 12 } }),
    `join since e1/12 expected, got ${JSON.stringify(f)}`);
  send(c, 'room:joined', { channel: 'room', members: ['me'], epoch: 'e2', offset: 20, recovered: false });
  await waitFor(() => app.joined.length === 4, 'room:joined');
  check(app.joined[3].recovered === false, 'the app sees recovered: false');
  check(same(street.position('room'), { epoch: 'e2', offset: 20 }), `position ${JSON.stringify(street.position('room'))}`);
  publish(c, 21);
  await waitFor(() => app.delivered.length === 10, 'publication 21');
  check(app.delivered[9] === 21, `delivered ${app.delivered}`);

  step = 'd. the channel loses its past live';
  send(c, 'room:joined', { channel: 'room', epoch: 'e3', offset: 0, recovered: false });
  publish(c, 1);
  await waitFor(() => app.delivered.length === 11, 'publication 1 of epoch e3');
  check(app.joined.length === 5 && app.joined[4].recovered === false, 'the app sees the unsolicited room:joined');
  check(same(street.position('room'), { epoch: 'e3', offset: 1 }), `position ${JSON.stringify(street.position('room'))}`);
  out.position = street.position('room');

  step = 'e. leave forgets the position';
  street.leave('room');
  f = await nextFrame(c);
  check(f.type === 'room:leave' && same(f.payload, { channel: 'room' }), `leave expected, got ${JSON.stringify(f)}`);
  check(street.position('room') === null, 'no position after leave');
  street.join('room');
  f = await nextFrame(c);
  check(f.type === 'room:join' && same(f.payload, { channel: 'room' }), `plain join expected, got ${JSON.stringify(f)}`);
  out.rejoin = f.payload;

  step = 'f. a join refused "history unavailable" is tried again';
  send(c, 'room:error', { channel: 'room', action: 'join', reason: 'history unavailable' });
  f = await nextFrame(c);
  check(f.type === 'room:join' && f.payload.channel === 'room', `a retried join expected, got ${JSON.stringify(f)}`);
  out.retriedJoin = f.payload;

  step = 'join with a known position';
  street.join('other', { since: { epoch: 'x', offset: 2 } });
  f = await nextFrame(c);
  check(f.type === 'room:join' && same(f.payload, { channel: 'other', since: { epoch: 'x', offset: 2 } }),
    `join since x/2 expected, got ${JSON.stringify(f)}`);

  out.delivered = app.delivered;
  out.recovered = app.joined.map((j) => (j.recovered === undefined ? null : j.recovered));
  out.connections = conns.length;
  console.log(JSON.stringify(out));
  street.close();
  wss.close();
  setTimeout(() => process.exit(0), 50);
}

main().catch((e) => fail(`${step}: ${e.message}`));
