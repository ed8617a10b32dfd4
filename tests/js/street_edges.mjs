// The client package at its edges, against small `ws` servers started here: a final close
// fails what waits for a reply; a result JSON cannot encode is an error reply; the queue
// goes out before what 'open' listeners send; once() passes every argument and off()
// removes it; close() ends at once, even with a code the WebSocket refuses, and once; a
// getToken that never settles, and a bad URL; the caller's query object is left alone.
// Prints one JSON line.
// Usage: node street_edges.mjs
import WebSocket, { WebSocketServer } from 'ws';
import Street from 'street-client';

const out = {};
const quick = { WebSocket, minDelay: 10, maxDelay: 20 };

async function server(onConnection) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((r) => wss.on('listening', r));
  wss.on('connection', onConnection);
  return wss;
}
const urlOf = (wss) => 'ws://127.0.0.1:' + wss.address().port + '/';
const stateIs = (s, state) => new Promise((resolve) => {
  s.onLifecycle('state', (info) => { if (info.state === state) resolve(info); });
});
const code = (p) => p.then(() => 'resolved', (e) => e.code);

try {
  // 1. a final close (4001): the queued request fails 'closed', and so does a new one
  const refusing = await server((ws) => ws.close(4001, 'Unauthorized'));
  const f = new Street(urlOf(refusing), quick);
  const closed = stateIs(f, 'closed');
  const queued = code(f.emitWithAck('q', 1, { timeout: 5000 }));
  out.finalState = await closed;
  out.queuedAtFinal = await queued;
  out.afterFinal = await code(f.emitWithAck('q', 1, { timeout: 5000 }));
  refusing.close();

  // 2. a handler's result that JSON cannot encode: 'internal', not silence
  // 3. what waited goes out before what an 'open' listener sends
  const seen = [];
  let replied;
  const gotReply = new Promise((resolve) => { replied = resolve; });
  const talking = await server((ws) => {
    ws.on('message', (m) => {
      const env = JSON.parse(String(m));
      if (env.type === 'street:reply') replied(env.payload);
      else seen.push(env.type);
    });
    ws.send(JSON.stringify({ type: 'ask', payload: null, ts: Date.now(), id: 5 }));
    ws.send(JSON.stringify({ type: 'hello', payload: 1, ts: Date.now() }));
  });
  const t = new Street(urlOf(talking), quick);
  t.onRequest('ask', () => 10n);
  t.join('room');
  t.emit('queued', 1);
  t.onLifecycle('open', () => t.emit('from-open', 2));
  // 4. once('*') gets (type, payload, envelope); off(type, fn) removes a once listener
  const star = new Promise((resolve) => t.once('*', (type, payload, env) => resolve([type, payload, typeof env])));
  let removedCalled = false;
  const removed = () => { removedCalled = true; };
  t.once('hello', removed);
  t.off('hello', removed);
  out.bigint = await gotReply;
  out.onceStar = await star;
  out.removedOnceCalled = removedCalled;
  while (seen.length < 3) await new Promise((r) => setTimeout(r, 5));
  out.order = seen.slice(0, 3);

  // 5. close() ends at once, even when the server never answers the close
  const waiting = t.emitWithAck('never', null, { timeout: 5000 });
  const closeEvents = [];
  t.onLifecycle('close', (c) => closeEvents.push(c));
  t.close();
  out.closedAtOnce = { state: t.state, close: closeEvents[0] || null, request: await code(waiting) };
  talking.close();

  // 6. a getToken that never settles is a failed attempt; the reconnect backs off and asks again
  const silent = await server(() => {});
  let asked = 0;
  const h = new Street(urlOf(silent), { ...quick, tokenTimeoutMs: 100, getToken: () => { asked += 1; return new Promise(() => {}); } });
  const failed = new Promise((resolve) => h.onLifecycle('token', resolve));
  const again = stateIs(h, 'reconnecting');
  out.hungToken = await failed;
  await again;
  while (asked < 2) await new Promise((r) => setTimeout(r, 5));
  out.tokenAskedAgain = asked >= 2;
  h.close();
  silent.close();

  // 7. a URL the constructor refuses is final
  const bad = new Street('not a url', quick);
  const badClosed = await stateIs(bad, 'closed');
  out.badUrl = { state: bad.state, code: badClosed.code, final: /url/i.test(String(badClosed.reason)) };

  // 8. the token goes into the client's own query, not the caller's object
  const plain = await server(() => {});
  const query = { room: 'a' };
  const q = new Street(urlOf(plain), { ...quick, query, getToken: () => 'tok' });
  await stateIs(q, 'open');
  out.callerQuery = query;
  out.clientQuery = q.query;
  q.close();
  plain.close();

  // 9. close() with a code the WebSocket refuses still closes it (the server sees it go),
  // once; a 'state' listener that closes on open means no 'open' event after 'closed'
  let serverSawClose;
  const sawClose = new Promise((resolve) => { serverSawClose = resolve; });
  const watching = await server((ws) => ws.on('close', (code) => serverSawClose(code)));
  const r = new Street(urlOf(watching), quick);
  await stateIs(r, 'open');
  const closedStates = [];
  r.onLifecycle('state', (i) => { if (i.state === 'closed') closedStates.push(i); });
  r.close(1005, 'not a code one may send');
  r.close();
  out.refusedCode = { serverSawClose: await sawClose, state: r.state, closedStates: closedStates.length };
  const events = [];
  const o = new Street(urlOf(watching), quick);
  o.onLifecycle('state', (i) => { events.push('state:' + i.state); if (i.state === 'open') o.close(); });
  o.onLifecycle('open', () => events.push('open'));
  o.onLifecycle('close', () => events.push('close'));
  await stateIs(o, 'closed');
  out.closeInOpen = events;
  watching.close();

  console.log(JSON.stringify(out));
  process.exit(0);
} catch (e) {
  console.log('ERROR ' + (e && e.stack || e));
  process.exit(1);
}
