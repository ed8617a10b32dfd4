// The baseline peer for side-by-side runs: @streetjs/websocket 1.0.0 on Node, wired as
// shared/bench/contract.md says (its README's wiring). scripts/bench-compare installs the
// package into a cache folder outside the repository and runs this file from there; the
// tests run it from tests/js (street.js against StreetJS, tests/it/street_js.rs).
//   node streetjs-server.mjs --addr 127.0.0.1:9101
// Only the /ws envelope endpoint: StreetJS's attach() destroys upgrades on any other path,
// so the raw /echo endpoint of the contract cannot share its server (conformance runs
// target street only).
import http from 'node:http';
import { StreetWebSocketServer } from '@streetjs/websocket';

const args = process.argv.slice(2);
const flag = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const addr = flag('--addr', `127.0.0.1:${process.env.PORT ?? 9101}`);
const [host, port] = [addr.slice(0, addr.lastIndexOf(':')), Number(addr.slice(addr.lastIndexOf(':') + 1))];

const server = http.createServer((_req, res) => { res.writeHead(404); res.end(); });
const wss = new StreetWebSocketServer({
  path: '/ws',
  heartbeatIntervalMs: Number(flag('--heartbeat-ms', 30000)),
  maxConnections: Number(flag('--max-connections', 100000)),
});
wss.attach(server, (socket) => {
  socket.on('echo', (p) => socket.emit('echo', p));
  socket.on('broadcast', (p) => wss.broadcast('broadcast', p));
});
server.listen({ host, port, backlog: 511 }, () => console.log(`listening on ${host}:${port}`));
process.on('SIGTERM', async () => {
  await wss.close();
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
});
