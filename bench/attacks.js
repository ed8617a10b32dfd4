// The three measured attacks of issue 11, against a running demo (`cargo run --release`).
// Loopback only; every step is bounded in count and time. Node's `ws` from tests/js:
//
//   NODE_PATH=tests/js/node_modules node bench/attacks.js sse-flood    PORT [N=10100]
//   NODE_PATH=tests/js/node_modules node bench/attacks.js room-burst   PORT
//   NODE_PATH=tests/js/node_modules node bench/attacks.js typing-flood PORT DEMO_PID
//
// sse-flood: 127.0.0.2 opens N SSE streams (GET /api/metrics/stream) and never reads them;
//   then 127.0.0.1 asks for /health. Prints the attacker's statuses and the victim's answer.
// room-burst: "mallory" publishes 20 × 400 KB to #general back to back; "reader" reads at
//   about 1.5 MB/s. Prints what the reader got and whether it was closed (4008).
// typing-flood: 20 members send `typing: true` as fast as their rate limit allows for 4 s.
//   Prints the demo's RSS before and after.
'use strict';
const net = require('net');
const fs = require('fs');
const crypto = require('crypto');
const WebSocket = require('ws');

const [cmd, portArg, extra] = process.argv.slice(2);
const port = Number(portArg || 3000);
const HOST = '127.0.0.1';

function rssKb(pid) {
  const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

function httpStatus(localAddress, path, timeoutMs, keepOpen) {
  return new Promise((resolve) => {
    const s = net.connect({ host: HOST, port, localAddress });
    let buf = '';
    const done = (v) => { clearTimeout(t); if (!keepOpen) s.destroy(); else s.pause(); resolve({ status: v, socket: s }); };
    const t = setTimeout(() => done('timeout'), timeoutMs);
    s.on('connect', () => s.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n`));
    s.on('data', (d) => { buf += d; const m = /^HTTP\/1\.1 (\d+)/.exec(buf); if (m) done(Number(m[1])); });
    s.on('error', (e) => done(e.code || 'error'));
    s.on('close', () => done(buf ? buf.slice(0, 12) : 'closed'));
  });
}

async function login(name) {
  const r = await fetch(`http://${HOST}:${port}/api/login`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name }),
  });
  const j = await r.json();
  if (!j.token) throw new Error(`login ${name}: ${JSON.stringify(j)}`);
  return j.token;
}

function open(token, opts) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${HOST}:${port}/ws?token=${token}`, opts);
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  });
}

const send = (ws, type, payload) => ws.send(JSON.stringify({ type, payload }));

async function sseFlood() {
  const n = Number(extra || 10100);
  const counts = {};
  const held = [];
  const t0 = Date.now();
  for (let i = 0; i < n; i += 200) {
    const batch = [];
    for (let j = i; j < Math.min(n, i + 200); j++) batch.push(httpStatus('127.0.0.2', '/api/metrics/stream', 5000, true));
    for (const r of await Promise.all(batch)) { counts[r.status] = (counts[r.status] || 0) + 1; held.push(r.socket); }
  }
  const t1 = Date.now();
  const victim = await httpStatus('127.0.0.1', '/health', 5000, false);
  console.log(JSON.stringify({ attack: 'sse-flood', streams: n, attackerStatuses: counts, openMs: t1 - t0,
    victimHealth: victim.status, victimMs: Date.now() - t1 }));
  held.forEach((s) => s.destroy());
}

// A raw WebSocket reader that takes in about `rate` bytes a second: returns the socket (with
// `ready`, `join()`) and a promise of what it got and the close code it saw.
function slowReader(token, rate) {
  const s = net.connect({ host: HOST, port });
  const key = crypto.randomBytes(16).toString('base64');
  let got = 0; let budget = rate / 10; let closeCode = null; let pending = Buffer.alloc(0); let head = true;
  s.on('connect', () => s.write(`GET /ws?token=${token} HTTP/1.1\r\nHost: ${HOST}:${port}\r\nUpgrade: websocket\r\n` +
    `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`));
  s.ready = new Promise((r) => s.once('data', r));
  s.on('data', (d) => {
    got += d.length; budget -= d.length;
    pending = Buffer.concat([pending, d]);
    if (head) { const i = pending.indexOf('\r\n\r\n'); if (i < 0) return; pending = pending.slice(i + 4); head = false; }
    // walk whole frames, remembering a close frame's code
    for (;;) {
      if (pending.length < 2) break;
      let len = pending[1] & 0x7f; let off = 2;
      if (len === 126) { if (pending.length < 4) break; len = pending.readUInt16BE(2); off = 4; }
      else if (len === 127) { if (pending.length < 10) break; len = Number(pending.readBigUInt64BE(2)); off = 10; }
      if (pending.length < off + len) break;
      if ((pending[0] & 0x0f) === 8 && len >= 2) closeCode = pending.readUInt16BE(off);
      pending = pending.slice(off + len);
    }
    if (budget <= 0) s.pause();
  });
  const tick = setInterval(() => { budget = rate / 10; s.resume(); }, 100);
  const result = new Promise((resolve) => s.on('close', () => { clearInterval(tick); resolve({ got, closeCode }); }));
  s.join = () => {
    const m = Buffer.from(JSON.stringify({ type: 'room:join', payload: { channel: 'general' } }));
    const mask = crypto.randomBytes(4);
    s.write(Buffer.concat([Buffer.from([0x81, 0x80 | m.length]), mask, Buffer.from(m.map((b, i) => b ^ mask[i % 4]))]));
  };
  return { reader: s, result };
}

async function roomBurst() {
  const [tm, tr] = [await login('mallory'), await login('reader')];
  const { reader, result } = slowReader(tr, 1.5e6);
  await reader.ready;
  reader.join();
  const mallory = await open(tm);
  const errors = {};
  mallory.on('message', (m) => { const e = JSON.parse(m); if (e.type === 'room:error') errors[e.payload.reason] = (errors[e.payload.reason] || 0) + 1; });
  send(mallory, 'room:join', { channel: 'general' });
  await new Promise((r) => setTimeout(r, 500));
  const big = 'x'.repeat(400_000);
  for (let i = 0; i < 20; i++) send(mallory, 'room:publish', { channel: 'general', event: 'message', payload: big });
  const outcome = await Promise.race([result, new Promise((r) => setTimeout(() => r(null), 15000))]);
  console.log(JSON.stringify({ attack: 'room-burst', published: '20 x 400 KB', readerGotBytes: outcome ? outcome.got : null,
    readerClose: outcome ? outcome.closeCode : 'still open after 15 s', publisherErrors: errors }));
  reader.destroy();
  mallory.close();
}

async function typingFlood() {
  const pid = Number(extra);
  const members = [];
  for (let i = 0; i < 20; i++) {
    const ws = await open(await login(`typist${i}`));
    send(ws, 'room:join', { channel: 'general' });
    members.push(ws);
  }
  await new Promise((r) => setTimeout(r, 1000));
  const before = rssKb(pid);
  const end = Date.now() + 4000;
  let sent = 0;
  await Promise.all(members.map(async (ws) => {
    while (Date.now() < end && ws.readyState === WebSocket.OPEN) {
      for (let k = 0; k < 80; k++) { send(ws, 'typing', { channel: 'general', typing: true }); sent++; }
      await new Promise((r) => setTimeout(r, 100)); // 800/s: under the 1 000/s rate limit
    }
  }));
  const after = rssKb(pid);
  console.log(JSON.stringify({ attack: 'typing-flood', members: 20, messages: sent, rssBeforeKb: before, rssAfterKb: after, growthKb: after - before }));
  members.forEach((ws) => ws.close());
}

const run = { 'sse-flood': sseFlood, 'room-burst': roomBurst, 'typing-flood': typingFlood }[cmd];
if (!run) { console.error('usage: attacks.js sse-flood|room-burst|typing-flood PORT [N|PID]'); process.exit(2); }
run().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
