// street.mjs: the ES module build of street.js, made by build.mjs. Do not edit: edit
// street.js and run `node build.mjs`.
const module = { exports: {} };
/*!
 * street.js — the browser client for street (and any @streetjs/websocket server: same wire).
 *
 *   const street = new Street('ws://localhost:3000/ws', { query: { token } });
 *   street.on('chat', (payload, envelope) => render(payload));
 *   street.onLifecycle('state', ({ state, attempt, delayMs }) => showBanner(state));
 *   street.join('general');            // re-joined by itself after every reconnect
 *   street.emit('chat', { channel: 'general', text: 'hi' });
 *
 * Wire: every text frame is {"type": string, "payload": any, "ts": epoch-ms}.
 *
 * Two kinds of listeners, kept apart so that the server (or a room member it relays) cannot
 * fake the connection's lifecycle:
 *   - on(type, fn) / once / off: the server's events, by envelope `type`; fn(payload, envelope).
 *     Every type is delivered, including ones named 'state', 'open', 'close' or 'error':
 *     those are ordinary server events here. on('*', fn) gets fn(type, payload, envelope)
 *     for every server event.
 *   - onLifecycle(name, fn) / offLifecycle: the client's own events, never from the wire:
 *       'state' ({state, attempt, delayMs?, code?, reason?}), 'open' (), 'close' ({code, reason}),
 *       'error' ({kind: 'malformed' | 'not_an_envelope', data}), 'expired' ({graceMs}),
 *       'token' ({state: 'refreshed' | 'failed', error?}). Other names throw.
 *
 * Reconnect: exponential backoff with full jitter — attempt k waits a random time in
 * [0, min(maxDelay, minDelay * 2^k)) — so a crowd that lost its server at the same instant
 * comes back spread out instead of in one burst. A close reason ending in "retry=MS" (street's
 * `reconnect_hint`) is honoured: the wait is then at least MS plus a random part of up to MS
 * (or the backoff's wait, when that is longer).
 * The attempt counter goes back to 0 only once a connection has stayed open for
 * stableAfterMs (default 5000): a server that accepts and then closes at once (4008 slow
 * consumer, 1008 rate limit) sees the waits grow instead of a reconnect every 0–500 ms.
 * Close codes that mean "do not come back as you are" stop reconnecting: 4001
 * (unauthorized), 4003 (forbidden) and 1002/1003/1007/1009 (the client is broken); so does a
 * URL the WebSocket constructor refuses. Then, as after close(), requests waiting for a reply
 * fail with 'closed' and new ones are refused; connect() starts again.
 * 1008 (policy: street's rate limit and first-message timeout) and 4008 (slow consumer)
 * are retried with backoff.
 *
 * States ('state' lifecycle event): connecting → open → reconnecting → open … → closed.
 * Messages emitted while not open wait in a bounded queue (maxQueue, default 100; the
 * oldest is dropped beyond it) and are sent on the next open.
 *
 * Channels with history (positions and recovery): a publication in such a channel carries
 * top-level `channel` and `offset` (consecutive from 1). For each joined channel the client
 * keeps its position {epoch, offset} (position(channel)): set by `room:joined` when it has
 * an `epoch` (recovered: true keeps the offset the client asked from, the replay advances
 * it; otherwise it becomes the reply's {epoch, offset}, also for the server's unsolicited
 * room:joined after a channel lost its past), and advanced by each publication delivered.
 *   - Every (re)connect joins each channel `since` its position when one is known
 *     (join(channel, {since: {epoch, offset}}) may supply one), else plainly.
 *   - offset <= position: a duplicate, dropped (stats.duplicates). offset = position + 1:
 *     delivered. offset > position + 1: a gap (stats.gaps) — not delivered; the client
 *     re-joins `since` its position and drops that channel's publications until the
 *     `room:joined` reply (the replay re-sends them; a room:error for it also ends the wait).
 *   - `room:joined` reaches on() listeners as any server event: recovered !== true means
 *     nothing was replayed and the app should reload that channel's state.
 *   - leave(channel) forgets the position.
 *   - A join refused with reason "history unavailable" (the server's broker is down) is
 *     sent again after the reconnect backoff's wait, growing with each refusal.
 *   - history(channel, {limit, timeout}) asks for the channel's newest publications (the
 *     request 'room:history'): a Promise of {channel, epoch, offset, publications,
 *     truncated?} (envelopes, oldest first; truncated: true when older ones did not fit
 *     the server's answer). To open a channel with its recent past and no gap: show
 *     those, then join(channel, {since: {epoch, offset}}); what came in between is replayed.
 *
 * Requests with a reply (street's acknowledgements; the wire is `street::ws::ack`'s):
 *   - emitWithAck(type, payload, {timeout}) (timeout: ms; not a number ≥ 0: the default)
 *     sends {type, payload, ts, id} and returns a
 *     Promise of the server's result (its on_request handler). It rejects with a
 *     StreetAckError whose `code` is the server's ('rejected', 'no_handler', 'bad_payload',
 *     'timeout', 'internal') or the client's own: 'timeout' (no reply within `timeout`,
 *     default ackTimeoutMs = 10000), 'too_many' (maxPendingAcks, default 100, wait already),
 *     'disconnected' (the connection carrying it ended: it may or may not have been
 *     handled), 'closed' (close() was called). A request made while not open waits in the
 *     queue like any emit and goes out on the next open.
 *   - onRequest(type, fn) answers the server's requests (Socket::emit_with_ack): fn(payload)
 *     returns the result or a Promise of it; a throw or a rejection is an error reply
 *     ({code: err.code || 'rejected', message}), a result JSON cannot encode is 'internal'.
 *     A request without a handler is answered 'no_handler'. offRequest(type) removes it.
 *   - Replies travel as the event 'street:reply'; street.js consumes them: on() listeners
 *     never see them.
 *
 * Tokens that expire (street's Socket::set_expiry):
 *   - options.getToken: a function returning the token (or a Promise of it), called before
 *     every (re)connect; the token goes into the URL as query[tokenParam] (default 'token').
 *     One that fails, or does not settle within tokenTimeoutMs (default 10000; a getToken
 *     that may wait for the user, a login popup say, wants a longer one), counts as a
 *     failed attempt: the 'token' lifecycle event says 'failed' and the reconnect backs off
 *     (and calls getToken again).
 *     So a client reconnecting an hour later comes back with a fresh token, not the one it
 *     was built with.
 *   - When the server says the connection's token expired ('street:expired', {graceMs}),
 *     a client with getToken refreshes in-band: refreshToken() gets a new token and sends
 *     it as the request 'street:auth' {token} (the server's on_request handler checks it
 *     and moves the expiry). The 'expired' lifecycle event tells the app either way.
 *     A connection not refreshed in time is closed with 4010: with getToken, a reconnect
 *     (with a new token); without, final.
 *
 * Binary messages: sendBinary(data) (an ArrayBuffer, a typed array or a Blob) sends one
 * binary frame (queued like emit while not open); onBinary(fn) gets every binary frame
 * from the server as an ArrayBuffer (the server's Socket::send_binary). offBinary(fn).
 *
 * Liveness: a server with WsOptions::ping_envelopes sends 'street:ping' {intervalMs} at
 * each heartbeat (browsers answer WebSocket pings without telling the page). From the first
 * one on, a connection on which nothing arrives for two intervals is given up: closed and
 * reconnected (the 'close' lifecycle event says code 4000, reason 'liveness timeout').
 * 'street:ping' never reaches on() listeners.
 *
 * No dependencies. In Node pass { WebSocket: require('ws') }; as an ES module, import
 * street.mjs (see client/README.md).
 */
(function (root) {
  'use strict';

  var TERMINAL = { 1002: 1, 1003: 1, 1007: 1, 1009: 1, 4001: 1, 4003: 1 };
  var REPLY = 'street:reply';

  /** The error a request's Promise rejects with: `code` says why. */
  function StreetAckError(code, message) {
    var e = new Error(message || code);
    e.name = 'StreetAckError';
    e.code = code;
    return e;
  }
  var LIFECYCLE = { state: 1, open: 1, close: 1, error: 1, expired: 1, token: 1 };
  var EXPIRED = 'street:expired';
  var PING = 'street:ping';

  /** A delay for setTimeout: a number of ms in its range, else `fallback`. */
  function clampMs(ms, fallback) {
    if (typeof ms !== 'number' || !(ms >= 0)) return fallback;
    return Math.min(ms, 2147483647);
  }

  /** Whether every WebSocket sends this close: 1000 or 3000-4999, 123 bytes of reason. */
  function sendableClose(code, reason) {
    var bytes = typeof TextEncoder === 'function'
      ? new TextEncoder().encode(reason).length : reason.length * 3;
    return (code === 1000 || (code >= 3000 && code <= 4999)) && bytes <= 123;
  }

  function errorText(e) {
    return String(e && e.message || e);
  }

  function call(fn, a, b, c) {
    try { fn(a, b, c); } catch (e) { setTimeout(function () { throw e; }); }
  }

  function Street(url, options) {
    if (!(this instanceof Street)) return new Street(url, options);
    var o = options || {};
    this.url = url;
    this.query = o.query ? Object.assign({}, o.query) : null; // tokens go in: not the caller's
    this.protocols = o.protocols;
    this.WebSocket = o.WebSocket || root.WebSocket;
    this.minDelay = o.minDelay != null ? o.minDelay : 500;
    this.maxDelay = o.maxDelay != null ? o.maxDelay : 15000;
    this.maxQueue = o.maxQueue != null ? o.maxQueue : 100;
    this.stableAfterMs = o.stableAfterMs != null ? o.stableAfterMs : 5000;
    this.ackTimeoutMs = o.ackTimeoutMs != null ? o.ackTimeoutMs : 10000;
    this.maxPendingAcks = o.maxPendingAcks != null ? o.maxPendingAcks : 100;
    this.getToken = o.getToken || null;
    this.tokenParam = o.tokenParam || 'token';
    this.tokenTimeoutMs = o.tokenTimeoutMs != null ? o.tokenTimeoutMs : 10000;
    this.nextAckId = 0;
    this.acks = new Map();      // id -> {resolve, reject, timer, sent}: requests awaiting a reply
    this.responders = new Map(); // type -> fn: answers to the server's requests
    this.binary = new Set();    // onBinary listeners
    this.livenessMs = 0;        // 2 x the server's street:ping interval, once it sent one
    this.livenessTimer = null;
    this.tokenTimer = null;     // the deadline of a getToken in progress
    this.random = o.random || Math.random;
    this.state = 'idle';
    this.attempt = 0;
    this.rooms = new Set();
    this.positions = new Map(); // channel -> {epoch, offset}, for channels with history
    this.resync = new Map();    // channel -> the `since` of a join whose room:joined is awaited
    this.joinRetry = new Map(); // channel -> {n, timer}: joins refused "history unavailable"
    this.stats = { gaps: 0, duplicates: 0 };
    this.listeners = new Map();
    this.lifecycle = new Map();
    this.queue = [];
    this.ws = null;
    this.timer = null;
    this.stableTimer = null;
    this.stopped = false;
    this.lastClose = null;
    // connect on the next tick, so listeners added right after `new` see 'connecting'
    var self = this;
    if (o.autoConnect !== false) setTimeout(function () { if (self.state === 'idle') self.connect(); }, 0);
  }

  Street.prototype.on = function (type, fn) {
    var set = this.listeners.get(type);
    if (!set) this.listeners.set(type, (set = new Set()));
    set.add(fn);
    return this;
  };

  Street.prototype.off = function (type, fn) {
    var set = this.listeners.get(type);
    if (set) {
      if (fn) set.forEach(function (l) { if (l === fn || l.listener === fn) set.delete(l); });
      else set.clear();
    }
    return this;
  };

  Street.prototype.once = function (type, fn) {
    var self = this;
    function wrapper(a, b, c) {
      self.off(type, wrapper);
      fn(a, b, c);
    }
    wrapper.listener = fn; // off(type, fn) removes it too
    return this.on(type, wrapper);
  };

  /** Listen to the client's own lifecycle: 'state', 'open', 'close', 'error', 'expired' or 'token'. */
  Street.prototype.onLifecycle = function (name, fn) {
    if (!LIFECYCLE[name]) throw new TypeError('street.js: no lifecycle event ' + JSON.stringify(name));
    var set = this.lifecycle.get(name);
    if (!set) this.lifecycle.set(name, (set = new Set()));
    set.add(fn);
    return this;
  };

  Street.prototype.offLifecycle = function (name, fn) {
    var set = this.lifecycle.get(name);
    if (set) {
      if (fn) set.delete(fn);
      else set.clear();
    }
    return this;
  };

  /** A server event (from the wire) to the on() listeners. */
  Street.prototype.dispatch = function (type, payload, envelope) {
    var set = this.listeners.get(type);
    if (set) set.forEach(function (fn) { call(fn, payload, envelope); });
    var any = this.listeners.get('*');
    if (any) any.forEach(function (fn) { call(fn, type, payload, envelope); });
  };

  /** A lifecycle event (never from the wire) to the onLifecycle() listeners. */
  Street.prototype.emitLifecycle = function (name, info) {
    var set = this.lifecycle.get(name);
    if (set) set.forEach(function (fn) { call(fn, info); });
  };

  Street.prototype.setState = function (state, extra) {
    this.state = state;
    var info = { state: state, attempt: this.attempt };
    if (extra) for (var k in extra) info[k] = extra[k];
    this.emitLifecycle('state', info);
  };

  Street.prototype.fullUrl = function () {
    if (!this.query) return this.url;
    var q = [];
    for (var k in this.query) {
      if (this.query[k] != null) q.push(encodeURIComponent(k) + '=' + encodeURIComponent(this.query[k]));
    }
    return this.url + (this.url.indexOf('?') >= 0 ? '&' : '?') + q.join('&');
  };

  /** Open the connection (done by the constructor unless autoConnect is false). */
  Street.prototype.connect = function () {
    var self = this;
    if (this.ws) return; // open or opening already
    this.stopped = false;
    clearTimeout(this.timer);
    this.setState(this.attempt === 0 ? 'connecting' : 'reconnecting', { attempt: this.attempt });
    if (!this.getToken) { this.open(); return; }
    // a fresh token for every (re)connect
    var attempt = this.attempt;
    var settled = false;
    // only the first outcome of this attempt counts: the token, a failure, or the deadline
    function outcome(token, error) {
      if (settled) return;
      settled = true;
      clearTimeout(deadline);
      if (self.stopped || self.attempt !== attempt || self.ws) return;
      if (error === undefined) {
        self.query = self.query || {};
        self.query[self.tokenParam] = token;
        self.open();
        return;
      }
      self.emitLifecycle('token', { state: 'failed', error: error });
      self.scheduleReconnect(1006, 'getToken failed');
    }
    var deadline = setTimeout(function () {
      outcome(null, 'getToken did not settle within ' + self.tokenTimeoutMs + ' ms');
    }, clampMs(this.tokenTimeoutMs, 10000));
    this.tokenTimer = deadline;
    var got;
    try { got = Promise.resolve(this.getToken()); } catch (e) { got = Promise.reject(e); }
    got.then(function (token) { outcome(token); }, function (e) { outcome(null, errorText(e)); });
  };

  Street.prototype.open = function () {
    var self = this;
    var ws;
    // each server says its own interval (or none)
    this.livenessMs = 0;
    clearTimeout(this.livenessTimer);
    try {
      ws = new this.WebSocket(this.fullUrl(), this.protocols);
    } catch (e) {
      // a bad URL or protocol stays bad: retrying it is pointless
      if (e && e.name === 'SyntaxError') this.final(1006, errorText(e));
      else this.scheduleReconnect(1006, errorText(e));
      return;
    }
    this.ws = ws;
    try { ws.binaryType = 'arraybuffer'; } catch (e) { /* not every implementation has it */ }
    ws.onopen = function () {
      if (self.ws !== ws) return;
      // the backoff starts over only once this connection has stayed up for a while
      clearTimeout(self.stableTimer);
      self.stableTimer = setTimeout(function () { if (self.ws === ws) self.attempt = 0; }, self.stableAfterMs);
      // rooms first, then what waited in the queue, then the app hears of it: what its
      // 'open' listeners send goes after all that
      self.state = 'open';
      self.resync.clear();
      self.rooms.forEach(function (channel) { self.sendJoin(channel); });
      var q = self.queue;
      self.queue = [];
      q.forEach(function (m) {
        ws.send(m.frame || m);
        if (m.ackId != null && self.acks.has(m.ackId)) self.acks.get(m.ackId).sent = true;
      });
      self.setState('open');
      // (a 'state' listener may have closed it already)
      if (self.ws === ws) self.emitLifecycle('open', null);
    };
    ws.onmessage = function (ev) {
      if (self.ws !== ws) return;
      self.alive(ws);
      if (typeof ev.data !== 'string') {
        var data = ev.data;
        // Node's ws may still hand a Buffer: give the app an ArrayBuffer either way
        if (data && !(data instanceof ArrayBuffer) && data.buffer instanceof ArrayBuffer) {
          data = data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength);
        }
        self.binary.forEach(function (fn) { call(fn, data); });
        return;
      }
      var env;
      try { env = JSON.parse(ev.data); } catch (e) { self.emitLifecycle('error', { kind: 'malformed', data: ev.data }); return; }
      if (!env || typeof env.type !== 'string') { self.emitLifecycle('error', { kind: 'not_an_envelope', data: env }); return; }
      if (env.type === REPLY) { self.settle(env.payload); return; }
      if (env.type === EXPIRED) { self.expired(env.payload); return; }
      if (env.type === PING) {
        var ms = env.payload && env.payload.intervalMs;
        if (typeof ms === 'number' && ms > 0) { self.livenessMs = clampMs(2 * ms, 0); self.alive(ws); }
        return;
      }
      if (typeof env.id === 'number') { self.answer(env); return; }
      if (!self.track(env)) return;
      self.dispatch(env.type, env.payload === undefined ? null : env.payload, env);
    };
    ws.onclose = function (ev) {
      if (self.ws !== ws) return;
      self.ended(ev.code, ev.reason);
    };
    ws.onerror = function () { /* a close event follows */ };
  };

  /** Something arrived on `ws`: with a known interval, give it two more before giving up. */
  Street.prototype.alive = function (ws) {
    var self = this;
    if (!this.livenessMs) return;
    clearTimeout(this.livenessTimer);
    this.livenessTimer = setTimeout(function () {
      if (self.ws !== ws) return;
      // a dead connection may never fire onclose: let go of it now, and reconnect
      try { ws.close(4000, 'liveness timeout'); } catch (e) { /* already closing */ }
      self.ended(4000, 'liveness timeout');
    }, this.livenessMs);
  };

  /** The connection ended (closed, or given up): tell, then reconnect unless final. */
  Street.prototype.ended = function (code, reason) {
    this.ws = null;
    clearTimeout(this.livenessTimer);
    clearTimeout(this.stableTimer);
    this.lastClose = { code: code, reason: reason };
    // what went out on this connection will get no reply now
    this.failAcks('disconnected', function (a) { return a.sent; });
    this.emitLifecycle('close', { code: code, reason: reason });
    if (this.stopped || TERMINAL[code] || (code === 4010 && !this.getToken)) {
      this.final(code, reason);
      return;
    }
    this.scheduleReconnect(code, reason);
  };

  /** No more reconnects (close(), or a final close code): nothing waits any longer. */
  Street.prototype.halt = function () {
    this.stopped = true;
    clearTimeout(this.timer);
    clearTimeout(this.livenessTimer);
    clearTimeout(this.stableTimer);
    clearTimeout(this.tokenTimer);
    this.joinRetry.forEach(function (r) { clearTimeout(r.timer); });
    this.joinRetry.clear();
    this.failAcks('closed');
  };

  Street.prototype.final = function (code, reason) {
    this.halt();
    this.setState('closed', { code: code, reason: reason });
  };

  /** Send one binary frame: true when sent now, false when queued for the next open. */
  Street.prototype.sendBinary = function (data) {
    if (this.ws && this.state === 'open') {
      this.ws.send(data);
      return true;
    }
    this.queue.push({ frame: data });
    if (this.queue.length > this.maxQueue) this.queue.shift();
    return false;
  };

  /** Binary frames from the server, as ArrayBuffers. */
  Street.prototype.onBinary = function (fn) {
    this.binary.add(fn);
    return this;
  };

  Street.prototype.offBinary = function (fn) {
    if (fn) this.binary.delete(fn);
    else this.binary.clear();
    return this;
  };

  /** room:join for a joined channel, `since` its position when one is known. */
  Street.prototype.sendJoin = function (channel) {
    var pos = this.positions.get(channel);
    if (!pos) {
      this.resync.delete(channel);
      return this.send('room:join', { channel: channel });
    }
    var since = { epoch: pos.epoch, offset: pos.offset };
    this.resync.set(channel, since);
    return this.send('room:join', { channel: channel, since: { epoch: since.epoch, offset: since.offset } });
  };

  /** Positions, duplicates and gaps; false when the envelope must not be delivered. */
  Street.prototype.track = function (env) {
    var p = env.payload;
    if (env.type === 'room:joined' && p && typeof p.channel === 'string' && this.rooms.has(p.channel)) {
      var ch = p.channel;
      var retry = this.joinRetry.get(ch);
      if (retry) { clearTimeout(retry.timer); this.joinRetry.delete(ch); }
      // an unsolicited room:joined (no members: the channel lost its past) answers no join
      var since = Array.isArray(p.members) ? this.resync.get(ch) : undefined;
      if (Array.isArray(p.members)) this.resync.delete(ch);
      if (typeof p.epoch === 'string' && typeof p.offset === 'number') {
        if (p.recovered !== true) this.positions.set(ch, { epoch: p.epoch, offset: p.offset });
        // recovered: the replay goes on from the offset asked for, and advances it
        else if (since) this.positions.set(ch, { epoch: p.epoch, offset: since.offset });
        else if (this.positions.has(ch)) this.positions.get(ch).epoch = p.epoch;
        // (a `since` the client did not send itself: unknown, so no position until the next join)
      } else if (Array.isArray(p.members)) {
        this.positions.delete(ch); // a channel without history
      }
      return true;
    }
    if (env.type === 'room:error' && p && p.action === 'join' && typeof p.channel === 'string') {
      this.resync.delete(p.channel);
      // the server could not reach its history (its broker is down): try again, backing off
      if (p.reason === 'history unavailable' && this.rooms.has(p.channel)) this.retryJoin(p.channel);
      return true;
    }
    var channel = env.channel;
    if (typeof channel !== 'string' || typeof env.offset !== 'number' || !this.rooms.has(channel)) return true;
    if (this.resync.has(channel)) return false; // the room:joined reply and its replay are coming
    var pos = this.positions.get(channel);
    if (!pos) return true;
    if (env.offset <= pos.offset) { this.stats.duplicates += 1; return false; }
    if (env.offset === pos.offset + 1) { pos.offset = env.offset; return true; }
    // a gap: the server dropped something; ask again from where we are
    this.stats.gaps += 1;
    this.sendJoin(channel);
    return false;
  };

  /** Join `channel` again after a refusal the server may get over, with backoff. */
  Street.prototype.retryJoin = function (channel) {
    var self = this;
    var r = this.joinRetry.get(channel) || { n: 0, timer: null };
    clearTimeout(r.timer);
    var delay = Math.round(this.backoff(r.n));
    r.n += 1;
    r.timer = setTimeout(function () {
      if (!self.stopped && self.rooms.has(channel) && self.state === 'open') self.sendJoin(channel);
    }, delay);
    this.joinRetry.set(channel, r);
  };

  /** The last position {epoch, offset} known in a joined channel with history, or null. */
  Street.prototype.position = function (channel) {
    var pos = this.positions.get(channel);
    return pos ? { epoch: pos.epoch, offset: pos.offset } : null;
  };

  /** The delay before reconnect attempt `attempt` (0-based), in ms. */
  Street.prototype.backoff = function (attempt, reason) {
    var range = Math.min(this.maxDelay, this.minDelay * Math.pow(2, Math.min(attempt, 20)));
    var wait = this.random() * range;
    var m = /retry=(\d+)/.exec(reason || '');
    if (m) {
      var hint = Math.min(Number(m[1]), 600000);
      return Math.max(hint + this.random() * hint, wait);
    }
    return wait;
  };

  Street.prototype.scheduleReconnect = function (code, reason) {
    var self = this;
    var delay = Math.round(this.backoff(this.attempt, reason));
    this.attempt += 1;
    this.setState('reconnecting', { code: code, reason: reason, delayMs: delay });
    this.timer = setTimeout(function () { if (!self.stopped) self.connect(); }, delay);
  };

  Street.prototype.send = function (type, payload, ackId) {
    var env = { type: type, payload: payload === undefined ? null : payload, ts: Date.now() };
    if (ackId != null) env.id = ackId;
    var frame = JSON.stringify(env);
    if (this.ws && this.state === 'open') {
      this.ws.send(frame);
      return true;
    }
    this.queue.push(ackId != null ? { frame: frame, ackId: ackId } : frame);
    if (this.queue.length > this.maxQueue) {
      var dropped = this.queue.shift();
      if (dropped && dropped.ackId != null) this.failAck(dropped.ackId, 'too_many', 'dropped from the full send queue');
    }
    return false;
  };

  /**
   * Send a request and get the server's answer: a Promise of its result, rejected with a
   * StreetAckError (see the header for the codes). options.timeout: ms (ackTimeoutMs).
   */
  Street.prototype.emitWithAck = function (type, payload, options) {
    var self = this;
    var timeout = clampMs(options && options.timeout, clampMs(this.ackTimeoutMs, 10000));
    if (this.acks.size >= this.maxPendingAcks) {
      return Promise.reject(StreetAckError('too_many', this.maxPendingAcks + ' requests wait already'));
    }
    if (this.stopped) return Promise.reject(StreetAckError('closed', 'the client is closed'));
    var id = ++this.nextAckId;
    return new Promise(function (resolve, reject) {
      var entry = { resolve: resolve, reject: reject, sent: false, timer: null };
      entry.timer = setTimeout(function () {
        self.failAck(id, 'timeout', 'no reply within ' + timeout + ' ms');
      }, timeout);
      self.acks.set(id, entry);
      entry.sent = self.send(type, payload, id);
    });
  };

  /** Answer the server's requests for `type` (its emit_with_ack) with fn(payload). */
  Street.prototype.onRequest = function (type, fn) {
    this.responders.set(type, fn);
    return this;
  };

  Street.prototype.offRequest = function (type) {
    this.responders.delete(type);
    return this;
  };

  /** The server says the token expired: refresh in-band when we can get another. */
  Street.prototype.expired = function (p) {
    this.emitLifecycle('expired', { graceMs: p && typeof p.graceMs === 'number' ? p.graceMs : null });
    if (this.getToken) this.refreshToken().catch(function () { /* told through 'token' */ });
  };

  /**
   * Get a new token (getToken) and hand it to the server on the open connection: the
   * request 'street:auth' {token}. A Promise of the server's answer; the 'token' lifecycle
   * event says 'refreshed' or 'failed'.
   */
  Street.prototype.refreshToken = function () {
    var self = this;
    if (!this.getToken) return Promise.reject(StreetAckError('no_token', 'no getToken option'));
    return Promise.resolve().then(function () { return self.getToken(); }).then(function (token) {
      self.query = self.query || {};
      self.query[self.tokenParam] = token;
      return self.emitWithAck('street:auth', { token: token });
    }).then(function (result) {
      self.emitLifecycle('token', { state: 'refreshed' });
      return result;
    }, function (e) {
      self.emitLifecycle('token', { state: 'failed', error: errorText(e) });
      throw e;
    });
  };

  /** A reply from the server to one of our requests. */
  Street.prototype.settle = function (p) {
    if (!p || typeof p.id !== 'number') return;
    var a = this.acks.get(p.id);
    if (!a) return; // late (timed out) or never asked
    this.acks.delete(p.id);
    clearTimeout(a.timer);
    if (p.error) a.reject(StreetAckError(String(p.error.code || 'rejected'), String(p.error.message || '')));
    else a.resolve(p.result === undefined ? null : p.result);
  };

  Street.prototype.failAck = function (id, code, message) {
    var a = this.acks.get(id);
    if (!a) return;
    this.acks.delete(id);
    // still in the send queue: it must not go out after the app was told it failed
    if (!a.sent) this.queue = this.queue.filter(function (m) { return !m || m.ackId !== id; });
    clearTimeout(a.timer);
    a.reject(StreetAckError(code, message));
  };

  Street.prototype.failAcks = function (code, which) {
    var self = this;
    Array.from(this.acks.keys()).forEach(function (id) {
      if (!which || which(self.acks.get(id))) self.failAck(id, code, 'the request got no reply: ' + code);
    });
  };

  /** A request from the server: its handler's answer back as street:reply. */
  Street.prototype.answer = function (env) {
    var self = this;
    var id = env.id;
    var ws = this.ws;
    var fn = this.responders.get(env.type);
    // on the connection that asked, or not at all: ids are that connection's
    function reply(body) {
      if (self.ws !== ws || self.state !== 'open') return;
      body.id = id;
      var frame;
      try {
        frame = JSON.stringify({ type: REPLY, payload: body, ts: Date.now() });
      } catch (e) { // a BigInt, a cycle: the server is told, not left to time out
        var error = { code: 'internal', message: 'the result is not JSON: ' + errorText(e) };
        frame = JSON.stringify({ type: REPLY, payload: { id: id, error: error }, ts: Date.now() });
      }
      ws.send(frame);
    }
    if (!fn) { reply({ error: { code: 'no_handler', message: 'no handler answers ' + JSON.stringify(env.type) } }); return; }
    var out;
    try { out = fn(env.payload === undefined ? null : env.payload); } catch (e) { out = Promise.reject(e); }
    Promise.resolve(out).then(function (result) {
      reply({ result: result === undefined ? null : result });
    }, function (e) {
      reply({ error: { code: String(e && e.code || 'rejected'), message: errorText(e) } });
    });
  };

  /** Send {type, payload, ts}. Returns true when sent now, false when queued for the next open. */
  Street.prototype.emit = function (type, payload) {
    return this.send(type, payload);
  };

  /**
   * Join a room (street's rooms client protocol); kept and re-joined after reconnects, `since`
   * the last position in channels with history. options.since {epoch, offset}: a position
   * the app already has (e.g. stored), to recover from.
   */
  Street.prototype.join = function (channel, options) {
    if (this.rooms.has(channel)) return;
    var since = options && options.since;
    if (since && typeof since.epoch === 'string' && typeof since.offset === 'number') {
      this.positions.set(channel, { epoch: since.epoch, offset: since.offset });
    }
    this.rooms.add(channel);
    if (this.state === 'open') this.sendJoin(channel);
  };

  /**
   * The newest publications of a channel with history: a Promise of {channel, epoch,
   * offset, publications}, rejected with a StreetAckError ('rejected' with the server's
   * reason: forbidden, rate limit, no history, history unavailable). options.limit: at
   * most this many (the server caps it at the history's size); options.timeout as for
   * emitWithAck.
   */
  Street.prototype.history = function (channel, options) {
    var o = options || {};
    var payload = { channel: channel };
    if (o.limit != null) payload.limit = o.limit;
    return this.emitWithAck('room:history', payload, { timeout: o.timeout });
  };

  /** Leave a room, and forget its position. */
  Street.prototype.leave = function (channel) {
    if (!this.rooms.delete(channel)) return;
    this.positions.delete(channel);
    this.resync.delete(channel);
    var retry = this.joinRetry.get(channel);
    if (retry) { clearTimeout(retry.timer); this.joinRetry.delete(channel); }
    if (this.state === 'open') this.send('room:leave', { channel: channel });
  };

  /**
   * Close for good (no reconnect). Done at once: the 'close' lifecycle event and the
   * 'closed' state do not wait for the server's answer (a dead connection may never give one).
   * A code other than 1000 or 3000-4999, or a reason over 123 bytes, is sent as 1000.
   */
  Street.prototype.close = function (code, reason) {
    var ws = this.ws;
    if (this.stopped && !ws && this.state === 'closed') return; // closed already
    this.halt();
    if (!ws) { this.setState('closed', {}); return; }
    code = code || 1000;
    reason = reason || '';
    // a code or reason a WebSocket refuses (browsers send 1000 and 3000-4999, and 123 bytes
    // of reason) would leave it open and unseen: close with 1000 instead
    if (!sendableClose(code, reason)) { code = 1000; reason = ''; }
    try { ws.close(code, reason); } catch (e) { /* closing already */ }
    this.ended(code, reason);
  };

  Street.StreetAckError = StreetAckError;
  Street.Street = Street;
  Street.default = Street;
  if (typeof module === 'object' && module.exports) module.exports = Street;
  else root.Street = Street;
})(typeof globalThis !== 'undefined' ? globalThis : typeof self !== 'undefined' ? self : this);

const Street = module.exports;
const StreetAckError = Street.StreetAckError;
export { Street, StreetAckError };
export default Street;
