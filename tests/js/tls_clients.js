// Real TLS clients against a street app serving https:// and wss:// on one port, with a
// self-signed certificate the Rust test made (tests/it/tls.rs).
//
//   node tls_clients.js https://127.0.0.1:PORT/ CA.pem
//
// 1. Node `ws` trusting CA.pem: an echo over wss://; and without it, the certificate is
//    refused (so the test knows TLS was verified, not bypassed).
// 2. Headless Chromium (Debian's, via playwright-core; it cannot be told of CA.pem, so
//    --ignore-certificate-errors): the https:// page, then a WebSocket echo over wss://
//    and an EventSource over https:// from that page.
// Prints one JSON line; a failure prints "ERROR ..." and exits 1. Every wait is bounded.
'use strict';
const fs = require('fs');
const WebSocket = require('ws');
const { chromium } = require('playwright-core');

const base = process.argv[2];
const ca = fs.readFileSync(process.argv[3]);
const wsUrl = base.replace(/^https:/, 'wss:') + 'ws';
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

function fail(msg) {
  console.log(`ERROR ${msg}`);
  process.exit(1);
}
setTimeout(() => fail('overall timeout (45 s)'), 45_000).unref();

function nodeEcho(options) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(wsUrl, options);
    ws.on('open', () => ws.send(JSON.stringify({ type: 'echo', payload: 'from node' })));
    ws.on('message', (data) => {
      resolve(JSON.parse(String(data)).payload);
      ws.close(1000);
    });
    ws.on('error', reject);
  });
}

(async () => {
  const report = {};
  report.node = await nodeEcho({ ca });
  report.nodeWithoutCa = await nodeEcho({}).then(
    () => 'accepted',
    (e) => e.code || String(e),
  );
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--ignore-certificate-errors',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--no-first-run', '--disable-quic',
    ],
  });
  const page = await browser.newPage();
  const response = await page.goto(base);
  report.pageStatus = response.status();
  report.pageProtocol = await page.evaluate(() => location.protocol);
  report.browserWs = await page.evaluate(() => new Promise((resolve, reject) => {
    const ws = new WebSocket(`wss://${location.host}/ws`);
    ws.onopen = () => ws.send(JSON.stringify({ type: 'echo', payload: 'from chromium' }));
    ws.onmessage = (e) => { resolve(JSON.parse(e.data).payload); ws.close(1000); };
    ws.onerror = () => reject(new Error('websocket error'));
    setTimeout(() => reject(new Error('websocket timeout')), 10_000);
  }));
  report.browserSse = await page.evaluate(() => new Promise((resolve, reject) => {
    const es = new EventSource('/sse');
    es.addEventListener('tick', (e) => { resolve(e.data); es.close(); });
    setTimeout(() => reject(new Error('sse timeout')), 10_000);
  }));
  await browser.close();
  console.log(JSON.stringify(report));
  process.exit(0);
})().catch((e) => fail(String(e && e.stack || e)));
