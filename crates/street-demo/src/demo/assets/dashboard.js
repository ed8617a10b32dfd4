// The demo dashboard: one SSE event a second (`metrics`), numbers and a 60 s chart.
(function () {
  'use strict';
  var $ = function (id) { return document.getElementById(id); };
  var points = []; // {in, out, conn}
  var es = new EventSource('/api/metrics/stream');
  window.streetSamples = 0;

  function setState(state, text) { $('state').dataset.state = state; $('state').textContent = text; }
  es.addEventListener('open', function () { setState('open', 'live'); });
  es.addEventListener('error', function () { setState('reconnecting', 'reconnecting…'); });
  es.addEventListener('metrics', function (e) {
    var m = JSON.parse(e.data);
    window.streetSamples += 1;
    window.streetMaxIn = Math.max(window.streetMaxIn || 0, m.messagesInPerSec);
    $('node').textContent = 'node ' + m.node;
    $('m-connections').textContent = m.connections;
    $('m-peak').textContent = m.peakConnections;
    $('m-in').textContent = m.messagesInPerSec;
    $('m-out').textContent = m.messagesOutPerSec;
    $('m-fanout').textContent = m.fanouts > 0 ? m.fanoutAvgMs.toFixed(3) : '–';
    $('m-rss').textContent = m.rssBytes ? (m.rssBytes / 1048576).toFixed(1) : '–';
    $('m-chat').textContent = m.chatMessages;
    $('m-rooms').textContent = m.rooms;
    $('m-sse').textContent = m.sseStreams;
    var r = m.rejected;
    $('m-rejected').textContent = r.capacity + r.origin + r.auth + r.rate;
    $('m-rejected-detail').textContent = 'rejected: capacity ' + r.capacity + ' · origin ' + r.origin +
      ' · auth ' + r.auth + ' · rate ' + r.rate + ' · slow ' + r.slowConsumer + ' · reaped ' + r.heartbeat;
    points.push({ in: m.messagesInPerSec, out: m.messagesOutPerSec, conn: m.connections });
    if (points.length > 60) points.shift();
    draw();
  });

  function draw() {
    var c = $('chart');
    var g = c.getContext('2d');
    var w = c.width, h = c.height, pad = 24;
    g.clearRect(0, 0, w, h);
    g.strokeStyle = '#e3e6ec';
    g.lineWidth = 1;
    for (var i = 0; i <= 4; i++) {
      var y = pad + (h - 2 * pad) * i / 4;
      g.beginPath(); g.moveTo(pad, y); g.lineTo(w - pad, y); g.stroke();
    }
    var max = 1;
    points.forEach(function (p) { max = Math.max(max, p.in, p.out, p.conn); });
    g.fillStyle = '#6b7385';
    g.font = '12px system-ui';
    g.fillText(String(max), 2, pad - 6);
    [['in', '#2f6fed'], ['out', '#1f9d55'], ['conn', '#c98a00']].forEach(function (s) {
      g.strokeStyle = s[1];
      g.lineWidth = 2;
      g.beginPath();
      points.forEach(function (p, i) {
        var x = pad + (w - 2 * pad) * (i + 60 - points.length) / 59;
        var y = h - pad - (h - 2 * pad) * p[s[0]] / max;
        if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
      });
      g.stroke();
    });
  }
})();
