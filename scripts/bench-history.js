// room:history (the rooms client protocol) against examples/cluster --history-size 200: one
// client fills the room with 200 publications of 100 bytes, then C connections make N
// requests each for the newest LIMIT, one after another; prints one JSON line.
// Usage: node scripts/bench-history.js ws://HOST:PORT/ws [C] [N] [LIMIT] (scripts/bench-history)
const WebSocket = require(require('path').join(__dirname, '../tests/js/node_modules/ws'));
const [url, C = 24, N = 30, LIMIT = 50] = process.argv.slice(2);
const open = (u) => new Promise((res, rej) => { const w = new WebSocket(u); w.on('open', () => res(w)); w.on('error', rej); });
function ask(w, id, payload) {
  return new Promise((res) => {
    const on = (m) => { const e = JSON.parse(String(m)); if (e.type === 'street:reply' && e.payload.id === id) { w.off('message', on); res(e.payload); } };
    w.on('message', on);
    w.send(JSON.stringify({ type: 'room:history', payload, ts: Date.now(), id }));
  });
}
(async () => {
  const p = await open(url + '?member=pub');
  for (let i = 0; i < 200; i++) p.send(JSON.stringify({ type: 'publish', payload: { channel: 'bench', payload: 'x'.repeat(100) } }));
  for (let id = 1; ; id++) { const r = await ask(p, id, { channel: 'bench', limit: 1 }); if (r.result && r.result.offset >= 200) break; await new Promise((r) => setTimeout(r, 20)); }
  const conns = await Promise.all(Array.from({ length: +C }, (_, i) => open(url + '?member=c' + i)));
  const lat = []; let refused = 0; let pubs = 0;
  const t0 = process.hrtime.bigint();
  await Promise.all(conns.map(async (w) => {
    for (let id = 1; id <= +N; id++) {
      const s = process.hrtime.bigint();
      const r = await ask(w, id, { channel: 'bench', limit: +LIMIT });
      lat.push(Number(process.hrtime.bigint() - s) / 1e6);
      if (r.error) refused++; else pubs += r.result.publications.length;
    }
  }));
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  lat.sort((a, b) => a - b);
  const q = (x) => lat[Math.min(lat.length - 1, Math.floor(x * lat.length))].toFixed(2);
  console.log(JSON.stringify({ requests: lat.length, perSec: Math.round(lat.length / secs), p50ms: q(0.5), p99ms: q(0.99), refused, avgPublications: pubs / Math.max(1, lat.length - refused) }));
  process.exit(0);
})().catch((e) => { console.log('ERROR', e); process.exit(1); });
