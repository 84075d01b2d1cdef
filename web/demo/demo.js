// demo.js — the demo page's logic (index.html): mint a token from goim-authsvc, connect to an edge
// with goim.js, show live pushes, the room's online count and its history, send op-4 messages.
(function () {
  'use strict';

  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const ACCEPTS = [1000, 1001, 1002];
  const HISTORY_PAGE = 20;
  const MAX_ITEMS = 500;

  const authsvc = (params.get('authsvc') || location.origin).replace(/\/+$/, '');
  const defaultWs = (location.protocol === 'https:' ? 'wss://' : 'ws://') + (location.hostname || '127.0.0.1') +
    (location.protocol === 'https:' ? ':3103' : ':3102') + '/sub';
  $('ws').value = params.get('ws') || defaultWs;
  $('room').value = params.get('room') || 'live://1000';
  $('mid').value = params.get('mid') || String(1000 + Math.floor(Math.random() * 9000));
  $('apikey').value = params.get('apikey') || 'dev-api-key';

  let client = null;
  let renewTimer = null;
  let oldestSeq = 0;

  function now() {
    return new Date().toLocaleTimeString();
  }

  function item(list, meta, text, prepend) {
    const ul = $(list);
    const empty = ul.querySelector('.empty');
    if (empty) empty.remove();
    const li = document.createElement('li');
    const m = document.createElement('span');
    m.className = 'meta';
    m.textContent = meta + ' ';
    li.append(m, document.createTextNode(text)); // text, never HTML: bodies come from anyone
    if (prepend) {
      ul.prepend(li);
    } else {
      ul.append(li);
      while (ul.children.length > MAX_ITEMS) ul.firstElementChild.remove();
      ul.scrollTop = ul.scrollHeight;
    }
    return li;
  }

  function log(text) {
    item('log', now(), text);
  }

  function setStatus(text, cls) {
    $('status').textContent = text;
    $('status').className = cls || '';
  }

  function setConnected(on) {
    for (const id of ['disconnect', 'refresh', 'text', 'send', 'older']) $(id).disabled = !on;
    $('connect').disabled = on;
    for (const id of ['ws', 'room', 'mid', 'apikey']) $(id).disabled = on;
  }

  function shellQuote(s) {
    return "'" + s.replace(/'/g, "'\\''") + "'";
  }

  function showTryCommands() {
    const room = $('room').value;
    const subject = Goim.roomSubject(room);
    $('subject').textContent = subject;
    $('try-nats').textContent =
      'nats --user backend --password dev-backend pub -H Goim-Op:1000 ' + subject + " 'hello from nats'";
    const i = room.indexOf('://');
    $('try-http').textContent = i < 0
      ? '(the HTTP API addresses rooms "type://id" only)'
      : 'curl -XPOST ' + shellQuote(authsvc + '/goim/push/room?operation=1000&type=' +
          encodeURIComponent(room.slice(0, i)) + '&room=' + encodeURIComponent(room.slice(i + 3))) +
        " -d 'hello from HTTP'";
  }

  async function mint(mid, room) {
    const grant = { mid: mid, rooms: [room], accepts: ACCEPTS, publish: { ingress: true }, ttl_secs: 3600 };
    const res = await fetch(authsvc + '/auth/token', {
      method: 'POST',
      headers: { 'Authorization': 'Bearer ' + $('apikey').value, 'Content-Type': 'application/json' },
      body: JSON.stringify(grant),
    });
    const answer = await res.json().catch(() => ({}));
    if (!res.ok || !answer.token) {
      throw new Error('token refused by authsvc (HTTP ' + res.status + '): ' + (answer.message || 'no token'));
    }
    return answer;
  }

  // Renew in-band a minute before exp (op 7 {"token"} on the open connection, answered by op 8).
  function scheduleRenew(mid, room, exp) {
    clearTimeout(renewTimer);
    const inMs = Math.max(10000, exp * 1000 - Date.now() - 60000);
    renewTimer = setTimeout(async () => {
      try {
        const t = await mint(mid, room);
        if (client) client.renew(t.token);
        log('token renewed');
        scheduleRenew(mid, room, t.exp);
      } catch (e) {
        log('token renewal failed: ' + e.message);
      }
    }, inMs);
  }

  function showPush(p) {
    const s = Goim.pushSeq(p.seq);
    const meta = now() + ' op ' + p.op + (s.cls ? ' #' + s.seq : '');
    item('messages', meta, Goim.text(p.body));
  }

  function showHistory(page, older) {
    if (page.error) {
      item('history', 'error', page.error);
      return;
    }
    const msgs = page.messages || [];
    if (!older) $('history').replaceChildren();
    if (msgs.length === 0 && !older) {
      const li = document.createElement('li');
      li.className = 'empty';
      li.textContent = 'no stored messages in this room';
      $('history').append(li);
    }
    // Oldest first; an older page goes on top.
    const list = older ? msgs.slice().reverse() : msgs;
    for (const m of list) {
      const body = Uint8Array.from(atob(m.body), (c) => c.charCodeAt(0));
      const time = m.time ? new Date(m.time).toLocaleTimeString() : '';
      item('history', '#' + m.seq + ' ' + time + ' op ' + m.op, Goim.text(body), older);
    }
    if (msgs.length > 0 && (!older || msgs[0].seq < oldestSeq)) oldestSeq = msgs[0].seq;
    $('older').disabled = !page.more;
  }

  async function readHistory(older) {
    if (!client) return;
    const q = { target: 'room', limit: HISTORY_PAGE };
    if (older && oldestSeq) q.before = oldestSeq;
    try {
      showHistory(await client.history(q), older);
    } catch (e) {
      log('history: ' + e.message);
    }
  }

  async function connect() {
    const ws = $('ws').value.trim();
    const room = $('room').value.trim();
    const mid = parseInt($('mid').value, 10);
    if (!ws || !room || !(mid > 0)) {
      setStatus('fill in the edge URL, a room and a mid > 0', 'error');
      return;
    }
    setConnected(true);
    $('online').textContent = '–';
    setStatus('minting a token…');
    let token;
    try {
      token = await mint(mid, room);
    } catch (e) {
      setStatus(e.message, 'error');
      setConnected(false);
      return;
    }
    setStatus('connecting to ' + ws + '…');
    const c = new Goim.Client(ws, { mid: mid, key: '', room_id: room, platform: 'web', accepts: ACCEPTS, token: token.token });
    c.onpush = showPush;
    c.ononline = (n) => {
      $('online').textContent = String(n);
    };
    c.onreply = (p) => {
      if (p.op === Goim.OP.SEND_MSG) log('op 4 #' + p.seq + ' taken by the edge');
      else if (p.op === Goim.OP.AUTH_REPLY) log('op 8: token accepted');
      else log('reply op ' + p.op);
    };
    c.onclose = (ev) => {
      if (client !== c) return;
      client = null;
      clearTimeout(renewTimer);
      setConnected(false);
      setStatus('disconnected (code ' + ev.code + ')', ev.code === 1000 ? '' : 'error');
      log('connection closed, code ' + ev.code);
    };
    client = c;
    try {
      await c.connect();
    } catch (e) {
      if (client === c) client = null;
      setStatus(e.message, 'error');
      setConnected(false);
      return;
    }
    setStatus('connected as mid ' + mid + ' in ' + room, 'connected');
    log('op 8: in room ' + room + ' as mid ' + mid);
    scheduleRenew(mid, room, token.exp);
    oldestSeq = 0;
    readHistory(false);
  }

  $('settings').addEventListener('submit', (ev) => {
    ev.preventDefault();
    connect();
  });
  $('disconnect').addEventListener('click', () => {
    if (client) client.close();
  });
  $('refresh').addEventListener('click', () => {
    if (client) client.heartbeat();
  });
  $('older').addEventListener('click', () => readHistory(true));
  $('send-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const text = $('text').value;
    if (!client || text === '') return;
    const seq = client.send(text);
    log('op 4 #' + seq + ' sent: ' + text);
    $('text').value = '';
  });
  $('room').addEventListener('input', showTryCommands);
  showTryCommands();

  if (params.get('connect') === '1') connect();
})();
