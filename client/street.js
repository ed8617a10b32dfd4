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
 *       'error' ({kind: 'malformed' | 'not_an_envelope', data}). Other names throw.
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
 * (unauthorized), 4003 (forbidden) and 1002/1003/1007/1009 (the client is broken).
 * 1008 (policy: street's rate limit and first-message timeout) and 4008 (slow consumer)
 * are retried with backoff.
 *
 * States ('state' lifecycle event): connecting → open → reconnecting → open … → closed.
 * Messages emitted while not open wait in a bounded queue (maxQueue, default 100; the
 * oldest is dropped beyond it) and are sent on the next open.
 *
 * No dependencies. In Node pass { WebSocket: require('ws') }.
 */
(function (root) {
  'use strict';

  var TERMINAL = { 1002: 1, 1003: 1, 1007: 1, 1009: 1, 4001: 1, 4003: 1 };
  var LIFECYCLE = { state: 1, open: 1, close: 1, error: 1 };

  function call(fn, a, b, c) {
    try { fn(a, b, c); } catch (e) { setTimeout(function () { throw e; }); }
  }

  function Street(url, options) {
    if (!(this instanceof Street)) return new Street(url, options);
    var o = options || {};
    this.url = url;
    this.query = o.query || null;
    this.protocols = o.protocols;
    this.WebSocket = o.WebSocket || root.WebSocket;
    this.minDelay = o.minDelay != null ? o.minDelay : 500;
    this.maxDelay = o.maxDelay != null ? o.maxDelay : 15000;
    this.maxQueue = o.maxQueue != null ? o.maxQueue : 100;
    this.stableAfterMs = o.stableAfterMs != null ? o.stableAfterMs : 5000;
    this.random = o.random || Math.random;
    this.state = 'idle';
    this.attempt = 0;
    this.rooms = new Set();
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
      if (fn) set.delete(fn);
      else set.clear();
    }
    return this;
  };

  Street.prototype.once = function (type, fn) {
    var self = this;
    function wrapper(a, b) {
      self.off(type, wrapper);
      fn(a, b);
    }
    return this.on(type, wrapper);
  };

  /** Listen to the client's own lifecycle: 'state', 'open', 'close' or 'error'. */
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
    this.stopped = false;
    clearTimeout(this.timer);
    this.setState(this.attempt === 0 ? 'connecting' : 'reconnecting', { attempt: this.attempt });
    var ws;
    try {
      ws = new this.WebSocket(this.fullUrl(), this.protocols);
    } catch (e) {
      this.scheduleReconnect(1006, String(e && e.message || e));
      return;
    }
    this.ws = ws;
    ws.onopen = function () {
      if (self.ws !== ws) return;
      // the backoff starts over only once this connection has stayed up for a while
      clearTimeout(self.stableTimer);
      self.stableTimer = setTimeout(function () { if (self.ws === ws) self.attempt = 0; }, self.stableAfterMs);
      self.setState('open');
      self.emitLifecycle('open', null);
      // rooms first, then what waited in the queue
      self.rooms.forEach(function (channel) { self.send('room:join', { channel: channel }); });
      var q = self.queue;
      self.queue = [];
      q.forEach(function (m) { ws.send(m); });
    };
    ws.onmessage = function (ev) {
      if (self.ws !== ws || typeof ev.data !== 'string') return;
      var env;
      try { env = JSON.parse(ev.data); } catch (e) { self.emitLifecycle('error', { kind: 'malformed', data: ev.data }); return; }
      if (!env || typeof env.type !== 'string') { self.emitLifecycle('error', { kind: 'not_an_envelope', data: env }); return; }
      self.dispatch(env.type, env.payload === undefined ? null : env.payload, env);
    };
    ws.onclose = function (ev) {
      if (self.ws !== ws) return;
      self.ws = null;
      clearTimeout(self.stableTimer);
      self.lastClose = { code: ev.code, reason: ev.reason };
      self.emitLifecycle('close', { code: ev.code, reason: ev.reason });
      if (self.stopped) { self.setState('closed', { code: ev.code, reason: ev.reason }); return; }
      if (TERMINAL[ev.code]) { self.setState('closed', { code: ev.code, reason: ev.reason }); return; }
      self.scheduleReconnect(ev.code, ev.reason);
    };
    ws.onerror = function () { /* a close event follows */ };
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

  Street.prototype.send = function (type, payload) {
    var frame = JSON.stringify({ type: type, payload: payload === undefined ? null : payload, ts: Date.now() });
    if (this.ws && this.state === 'open') {
      this.ws.send(frame);
      return true;
    }
    this.queue.push(frame);
    if (this.queue.length > this.maxQueue) this.queue.shift();
    return false;
  };

  /** Send {type, payload, ts}. Returns true when sent now, false when queued for the next open. */
  Street.prototype.emit = function (type, payload) {
    return this.send(type, payload);
  };

  /** Join a room (street's rooms client protocol); kept and re-joined after reconnects. */
  Street.prototype.join = function (channel) {
    if (this.rooms.has(channel)) return;
    this.rooms.add(channel);
    if (this.state === 'open') this.send('room:join', { channel: channel });
  };

  /** Leave a room. */
  Street.prototype.leave = function (channel) {
    if (!this.rooms.delete(channel)) return;
    if (this.state === 'open') this.send('room:leave', { channel: channel });
  };

  /** Close for good (no reconnect). */
  Street.prototype.close = function (code, reason) {
    this.stopped = true;
    clearTimeout(this.timer);
    clearTimeout(this.stableTimer);
    if (this.ws) this.ws.close(code || 1000, reason || '');
    else this.setState('closed', {});
  };

  if (typeof module === 'object' && module.exports) module.exports = Street;
  else root.Street = Street;
})(typeof self !== 'undefined' ? self : this);
