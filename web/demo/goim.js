// goim.js — a small goim v2 protocol client for browsers, over WebSocket. No dependencies, no build
// step: load it with <script src="goim.js"> and use the global `Goim`.
//
// Wire format (README "Protocol"): every packet is a 16-byte big-endian header — packLen (int32,
// 16 + body length), headerLen (int16, always 16), ver (int16), op (int32), seq (int32) — and a body.
// One WebSocket binary message carries one packet; pushes arrive wrapped in an op-9 packet whose
// body holds one or more complete inner packets.
//
//   const c = new Goim.Client('ws://127.0.0.1:3102/sub', {mid: 42, room_id: 'live://1000', token});
//   c.onpush = (p) => console.log(p.op, Goim.text(p.body));
//   c.ononline = (n) => console.log(n, 'online');
//   await c.connect();                 // resolves on op 8 (auth reply)
//   c.send('hello');                   // op 4, published by the edge on ingress.<room subject>
//   const page = await c.history({target: 'room', limit: 20});   // op 18 -> op 19
(function (global) {
  'use strict';

  const HEADER_LEN = 16;
  const OP = Object.freeze({
    HEARTBEAT: 2,
    HEARTBEAT_REPLY: 3,
    SEND_MSG: 4,
    AUTH: 7,
    AUTH_REPLY: 8,
    RAW: 9,
    CHANGE_ROOM: 12,
    CHANGE_ROOM_REPLY: 13,
    SUB: 14,
    SUB_REPLY: 15,
    UNSUB: 16,
    UNSUB_REPLY: 17,
    HISTORY: 18,
    HISTORY_REPLY: 19,
    RESUME_REPLY: 20,
  });
  // goim's JS demo beats every 30 s; the edge's idle timeout is 8 minutes.
  const HEARTBEAT_MS = 30000;

  const utf8 = new TextEncoder();
  const fromUtf8 = new TextDecoder('utf-8');

  function bytesOf(body) {
    if (body === undefined || body === null) return new Uint8Array(0);
    if (typeof body === 'string') return utf8.encode(body);
    if (body instanceof Uint8Array) return body;
    if (body instanceof ArrayBuffer) return new Uint8Array(body);
    return utf8.encode(JSON.stringify(body));
  }

  /** One packet as an ArrayBuffer. `body`: string (UTF-8), Uint8Array, ArrayBuffer or an object (JSON). */
  function encode(op, body, seq, ver) {
    const b = bytesOf(body);
    const buf = new ArrayBuffer(HEADER_LEN + b.length);
    const v = new DataView(buf);
    v.setInt32(0, HEADER_LEN + b.length);
    v.setInt16(4, HEADER_LEN);
    v.setInt16(6, ver === undefined ? 1 : ver);
    v.setInt32(8, op);
    v.setInt32(12, seq || 0);
    new Uint8Array(buf, HEADER_LEN).set(b);
    return buf;
  }

  /**
   * Decode the packet at `offset` of `buf` (ArrayBuffer or Uint8Array):
   * {packLen, headerLen, ver, op, seq, body: Uint8Array}. Throws on a malformed packet.
   */
  function decode(buf, offset) {
    const bytes = buf instanceof Uint8Array ? buf : new Uint8Array(buf);
    const at = offset || 0;
    if (bytes.length - at < HEADER_LEN) throw new Error('goim: short packet');
    const v = new DataView(bytes.buffer, bytes.byteOffset + at, bytes.length - at);
    const packLen = v.getInt32(0);
    const headerLen = v.getInt16(4);
    if (headerLen !== HEADER_LEN || packLen < HEADER_LEN || packLen > bytes.length - at) {
      throw new Error('goim: bad packet header (packLen ' + packLen + ', headerLen ' + headerLen + ')');
    }
    return {
      packLen: packLen,
      headerLen: headerLen,
      ver: v.getInt16(6),
      op: v.getInt32(8),
      seq: v.getInt32(12),
      body: bytes.subarray(at + headerLen, at + packLen),
    };
  }

  /** The packets an op-9 (raw) packet carries, in order; any other packet as a list of itself. */
  function unwrap(packet) {
    if (packet.op !== OP.RAW) return [packet];
    const inner = [];
    for (let at = 0; at < packet.body.length; ) {
      const p = decode(packet.body, at);
      inner.push(p);
      at += p.packLen;
    }
    return inner;
  }

  /** A body as text (UTF-8, invalid bytes replaced). */
  function text(body) {
    return fromUtf8.decode(body);
  }

  /**
   * History sequence of a push (README "History ops"): goim-history's stream sequence rides in the
   * header seq, class in the top two bits (1 room, 2 user, 3 broadcast). {cls: 0} = not stored.
   */
  function pushSeq(seq) {
    const u = seq >>> 0;
    return { cls: u >>> 30, seq: u & 0x3fffffff };
  }

  // subjects.md §2: keep A-Z a-z 0-9 _ -, every other UTF-8 byte is "=" + two upper-case hex digits.
  function escapeToken(s) {
    const b = utf8.encode(s);
    if (b.length === 0) return '=';
    let out = '';
    for (const c of b) {
      const ch = String.fromCharCode(c);
      out += /[A-Za-z0-9_-]/.test(ch) ? ch : '=' + c.toString(16).toUpperCase().padStart(2, '0');
    }
    return out;
  }

  /** The NATS subject of a goim room id: `live://1000` -> `room.live.1000`, `lobby` -> `room.lobby`. */
  function roomSubject(room) {
    const i = room.indexOf('://');
    if (i < 0) return 'room.' + escapeToken(room);
    return 'room.' + escapeToken(room.slice(0, i)) + '.' + escapeToken(room.slice(i + 3));
  }

  /**
   * One goim connection. `auth` is the op-7 body: {mid, key, room_id, platform, accepts, token}.
   * Callbacks (all optional): onpush(packet) for every pushed (inner) packet, ononline(count) for each
   * heartbeat reply, onreply(packet) for other replies (op 4 echo, 13, 15, 17, 20), onclose(event).
   */
  class Client {
    constructor(url, auth, opts) {
      this.url = url;
      this.auth = auth;
      this.heartbeatMs = (opts && opts.heartbeatMs) || HEARTBEAT_MS;
      this.ws = null;
      this.seq = 0;
      this.pending = new Map(); // seq -> {resolve, reject} of op-18 requests
      this.timer = null;
      this.onpush = null;
      this.ononline = null;
      this.onreply = null;
      this.onclose = null;
    }

    /** Open the WebSocket and authenticate; resolves on op 8, rejects when closed before it. */
    connect() {
      return new Promise((resolve, reject) => {
        let authed = false;
        const ws = new WebSocket(this.url);
        ws.binaryType = 'arraybuffer';
        this.ws = ws;
        ws.onopen = () => ws.send(encode(OP.AUTH, JSON.stringify(this.auth), this.nextSeq()));
        ws.onmessage = (ev) => {
          if (!(ev.data instanceof ArrayBuffer)) return;
          let packet;
          try {
            packet = decode(ev.data);
          } catch (e) {
            console.warn(e);
            return;
          }
          if (packet.op === OP.AUTH_REPLY && !authed) {
            authed = true;
            this.heartbeat();
            this.timer = setInterval(() => this.heartbeat(), this.heartbeatMs);
            resolve();
            return;
          }
          this.dispatch(packet);
        };
        ws.onclose = (ev) => {
          clearInterval(this.timer);
          this.timer = null;
          for (const p of this.pending.values()) p.reject(new Error('connection closed'));
          this.pending.clear();
          if (!authed) reject(new Error('closed before auth (code ' + ev.code + '): refused token or unreachable edge'));
          if (this.onclose) this.onclose(ev);
        };
      });
    }

    dispatch(packet) {
      switch (packet.op) {
        case OP.RAW:
          for (const p of unwrap(packet)) if (this.onpush) this.onpush(p);
          break;
        case OP.HEARTBEAT_REPLY:
          if (this.ononline && packet.body.length >= 4) {
            const v = new DataView(packet.body.buffer, packet.body.byteOffset, 4);
            this.ononline(v.getInt32(0));
          }
          break;
        case OP.HISTORY_REPLY: {
          const p = this.pending.get(packet.seq);
          this.pending.delete(packet.seq);
          if (!p) break;
          try {
            p.resolve(JSON.parse(text(packet.body)));
          } catch (e) {
            p.reject(e);
          }
          break;
        }
        default:
          // Pushes are always op-9 wrapped on WebSocket; anything else is a reply.
          if (packet.op >= 1000) {
            if (this.onpush) this.onpush(packet);
          } else if (this.onreply) {
            this.onreply(packet);
          }
      }
    }

    nextSeq() {
      this.seq = (this.seq + 1) & 0x7fffffff;
      return this.seq;
    }

    write(op, body) {
      const seq = this.nextSeq();
      if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(encode(op, body, seq));
      return seq;
    }

    /** op 2; the edge answers op 3 with the room's online count (-> ononline). */
    heartbeat() {
      return this.write(OP.HEARTBEAT, '');
    }

    /** op 4: a message to the room (the edge publishes it on ingress.<room subject>). */
    send(body) {
      return this.write(OP.SEND_MSG, body);
    }

    /** op 12: move to another room (the token must allow it); the edge answers op 13. */
    changeRoom(room) {
      return this.write(OP.CHANGE_ROOM, room);
    }

    /** op 7 on the open connection with a fresh token (renewal before exp); answered by op 8. */
    renew(token) {
      return this.write(OP.AUTH, JSON.stringify({ token: token }));
    }

    /** op 18 {target, before, limit}; resolves with goim-history's answer (op 19). */
    history(query) {
      return new Promise((resolve, reject) => {
        if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
          reject(new Error('not connected'));
          return;
        }
        const seq = this.nextSeq();
        this.pending.set(seq, { resolve: resolve, reject: reject });
        this.ws.send(encode(OP.HISTORY, JSON.stringify(query), seq));
      });
    }

    close() {
      if (this.ws) this.ws.close();
    }
  }

  const Goim = { OP, HEADER_LEN, encode, decode, unwrap, text, pushSeq, escapeToken, roomSubject, Client };
  global.Goim = Goim;
  if (typeof module !== 'undefined' && module.exports) module.exports = Goim;
})(typeof window !== 'undefined' ? window : globalThis);
