// A Node `ws` client that connects and then waits: the test freezes it with SIGSTOP, so it
// neither reads nor answers pings. Prints "open" once connected.
const WebSocket = require('ws');
const ws = new WebSocket(`ws://127.0.0.1:${process.argv[2]}/ws`);
ws.on('open', () => console.log('open'));
ws.on('error', () => {});
setInterval(() => {}, 1000);
