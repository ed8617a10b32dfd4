// The demo chat page. Everything a user typed is put in the page with textContent, never
// as HTML, and the page's CSP allows no inline script.
(function () {
  'use strict';
  var $ = function (id) { return document.getElementById(id); };
  var street = null;
  var me = null;
  var current = 'general';
  var open = [];
  var closed = [];
  var messages = {};   // room -> [{id, memberId, text, ts}] or system lines
  var seen = {};       // room -> Set of message ids
  var presence = {};   // room -> Set of member ids
  var typing = {};     // room -> Set of member ids
  var typingSent = false;
  var typingTimer = null;
  var typingAt = 0;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }

  function setState(state, text) {
    $('state').dataset.state = state;
    $('state').textContent = text;
  }

  function showLogin(message) {
    $('login-view').hidden = false;
    $('chat-view').hidden = true;
    $('login-error').textContent = message || '';
    $('me').textContent = '';
  }

  function showChat() {
    $('login-view').hidden = true;
    $('chat-view').hidden = false;
  }

  function renderRooms() {
    var nav = $('rooms');
    nav.textContent = '';
    open.forEach(function (r) {
      var b = el('button', r === current ? 'active' : '', '# ' + r);
      b.type = 'button';
      b.dataset.room = r;
      b.onclick = function () { switchRoom(r); };
      nav.appendChild(b);
    });
    closed.forEach(function (r) {
      var b = el('button', 'closed', r + ' (closed)');
      b.type = 'button';
      b.dataset.room = r;
      // a closed room: ask anyway, the server says no (room:error), and we show it
      b.onclick = function () { street.emit('room:join', { channel: r }); };
      nav.appendChild(b);
    });
  }

  function renderMessages() {
    var ol = $('messages');
    ol.textContent = '';
    (messages[current] || []).forEach(function (m) {
      var li;
      if (m.system) {
        li = el('li', 'system', m.text);
      } else {
        li = el('li', 'msg');
        li.dataset.id = m.id;
        li.appendChild(el('span', 'who', m.memberId));
        li.appendChild(el('span', 'text', m.text));
        var t = el('time', '', new Date(m.ts).toLocaleTimeString());
        li.appendChild(t);
      }
      ol.appendChild(li);
    });
    ol.scrollTop = ol.scrollHeight;
    $('room-title').textContent = '# ' + current;
    $('text').placeholder = 'Message #' + current;
  }

  function renderPresence() {
    var ul = $('presence');
    ul.textContent = '';
    Array.from(presence[current] || []).sort().forEach(function (m) {
      ul.appendChild(el('li', '', m === me ? m + ' (you)' : m));
    });
  }

  function renderTyping() {
    var who = Array.from(typing[current] || []).filter(function (m) { return m !== me; }).sort();
    $('typing').textContent = who.length === 0 ? '' :
      who.join(', ') + (who.length === 1 ? ' is typing…' : ' are typing…');
  }

  function renderAll() { renderRooms(); renderMessages(); renderPresence(); renderTyping(); }

  // `older`: from the room's history, which may answer after live messages came: placed
  // by its time among them instead of at the end
  function addMessage(room, m, older) {
    seen[room] = seen[room] || new Set();
    if (m.id != null) {
      if (seen[room].has(m.id)) return;
      seen[room].add(m.id);
    }
    var list = (messages[room] = messages[room] || []);
    var at = list.length;
    while (older && at > 0 && !(list[at - 1].ts <= m.ts)) at -= 1;
    list.splice(at, 0, m);
    if (list.length > 200) list.shift();
    if (room === current) renderMessages();
  }

  function switchRoom(r) {
    stopTyping();
    current = r;
    street.join(r);
    $('chat-error').textContent = '';
    renderAll();
  }

  function stopTyping() {
    clearTimeout(typingTimer);
    if (typingSent && street) street.emit('typing', { channel: current, typing: false });
    typingSent = false;
  }

  function start(token) {
    if (street) street.close();
    var proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    var first = token;
    me = null; // until this login's welcome: a reconnect before it uses the token above
    street = new Street(proto + '//' + location.host + '/ws', {
      // the token from the login first; then, when it expires (an hour) or for a
      // reconnect, a fresh one for the same name (login is open: the name is all it takes)
      getToken: function () {
        if (first || !me) { var t = first || sessionStorage.getItem('street-token'); first = null; return t; }
        return fetch('/api/login', {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ name: me }),
        }).then(function (r) { return r.json(); }).then(function (b) {
          if (!b.token) throw new Error(b.error || 'login failed');
          sessionStorage.setItem('street-token', b.token);
          return b.token;
        });
      },
    });
    street.onLifecycle('state', function (s) {
      if (s.state === 'open') setState('open', 'connected');
      else if (s.state === 'connecting') setState('connecting', 'connecting…');
      else if (s.state === 'reconnecting') {
        setState('reconnecting', s.delayMs != null ? 'reconnecting in ' + Math.ceil(s.delayMs / 1000) + 's…' : 'reconnecting…');
      } else if (s.state === 'closed') {
        setState('closed', 'offline');
        if (s.code === 4001) {
          sessionStorage.removeItem('street-token');
          showLogin('Your session is invalid or has expired (' + (s.reason || 'unauthorized') + '). Please log in again.');
        }
      }
    });
    street.on('welcome', function (w) {
      me = w.memberId;
      open = w.rooms || [];
      closed = w.closedRooms || [];
      $('me').textContent = 'signed in as ' + me;
      showChat();
      street.join(current);
      renderAll();
    });
    street.on('room:joined', function (p) {
      // (the server's own room:joined after a channel lost its past has no members)
      if (Array.isArray(p.members)) {
        presence[p.channel] = new Set(p.members);
        if (p.channel === current) renderPresence();
      }
      // nothing was replayed (a first join, or recovery failed): load the room's recent
      // past (the broker's history: the same on every node); messages already shown are
      // skipped by id
      if (p.recovered !== true) {
        street.history(p.channel, { limit: 50 }).then(function (h) {
          h.publications.forEach(function (env) {
            if (env.type === 'chat') addMessage(h.channel, env.payload, true);
          });
        }, function () { /* nothing to show: the live messages go on */ });
      }
    });
    street.on('presence:join', function (p) {
      (presence[p.channel] = presence[p.channel] || new Set()).add(p.memberId);
      addMessage(p.channel, { system: true, text: p.memberId + ' joined' });
      if (p.channel === current) renderPresence();
    });
    street.on('presence:leave', function (p) {
      if (presence[p.channel]) presence[p.channel].delete(p.memberId);
      if (typing[p.channel]) typing[p.channel].delete(p.memberId);
      addMessage(p.channel, { system: true, text: p.memberId + ' left' });
      if (p.channel === current) { renderPresence(); renderTyping(); }
    });
    street.on('typing', function (p) {
      var set = (typing[p.channel] = typing[p.channel] || new Set());
      if (p.typing) set.add(p.memberId); else set.delete(p.memberId);
      if (p.channel === current) renderTyping();
    });
    street.on('chat', function (m) {
      if (typing[m.channel]) typing[m.channel].delete(m.memberId);
      addMessage(m.channel, m);
      if (m.channel === current) renderTyping();
    });
    street.on('chat:error', function (p) { $('chat-error').textContent = p.reason; });
    street.on('room:error', function (p) {
      $('chat-error').textContent = 'Cannot ' + p.action + ' #' + p.channel + ': ' + p.reason;
    });
  }

  $('login').addEventListener('submit', function (e) {
    e.preventDefault();
    $('login-error').textContent = '';
    fetch('/api/login', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ name: $('name').value }),
    }).then(function (r) {
      return r.json().then(function (body) { return { ok: r.ok, body: body }; });
    }).then(function (res) {
      if (!res.ok) { $('login-error').textContent = res.body.error || 'login failed'; return; }
      sessionStorage.setItem('street-token', res.body.token);
      start(res.body.token);
    }).catch(function (err) { $('login-error').textContent = String(err); });
  });

  $('composer').addEventListener('submit', function (e) {
    e.preventDefault();
    var text = $('text').value;
    if (!text.trim()) return;
    stopTyping();
    street.emit('chat', { channel: current, text: text });
    $('text').value = '';
    $('chat-error').textContent = '';
  });

  $('text').addEventListener('input', function () {
    if (!street) return;
    // once when typing starts, then a refresh every 3 s (the server's indicator clears
    // itself after 5 s without one; refreshes are not broadcast)
    if (!typingSent || Date.now() - typingAt > 3000) {
      typingSent = true;
      typingAt = Date.now();
      street.emit('typing', { channel: current, typing: true });
    }
    clearTimeout(typingTimer);
    typingTimer = setTimeout(stopTyping, 3000);
  });

  var saved = sessionStorage.getItem('street-token');
  if (saved) start(saved); else showLogin('');
})();
