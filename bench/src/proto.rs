//! The little of goim's wire protocol and of the NATS text protocol a load-generating client needs.

pub const HEADER_LEN: usize = 16;
pub const OP_HEARTBEAT: i32 = 2;
pub const OP_HEARTBEAT_REPLY: i32 = 3;
pub const OP_AUTH: i32 = 7;
pub const OP_AUTH_REPLY: i32 = 8;
pub const OP_RAW: i32 = 9;
pub const OP_RESUME_RESULT: i32 = 20;
/// Pushes are business ops (goim's sample clients accept 1000–1002).
pub const FIRST_PUSH_OP: i32 = 1000;

/// One goim packet: 16-byte big-endian header, then the body.
pub fn packet(ver: i16, op: i32, seq: i32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&((HEADER_LEN + body.len()) as i32).to_be_bytes());
    out.extend_from_slice(&(HEADER_LEN as i16).to_be_bytes());
    out.extend_from_slice(&ver.to_be_bytes());
    out.extend_from_slice(&op.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(body);
    out
}

#[derive(Debug, Clone, Copy)]
pub struct Pkt<'a> {
    pub op: i32,
    #[allow(dead_code)]
    pub seq: i32,
    pub body: &'a [u8],
}

/// The first complete packet of `buf` and its length; `Ok(None)` when more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<(Pkt<'_>, usize)>, String> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let pack_len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let header_len = i16::from_be_bytes([buf[4], buf[5]]);
    if header_len as usize != HEADER_LEN || pack_len < HEADER_LEN as i32 {
        return Err(format!("bad goim header: packLen {pack_len} headerLen {header_len}"));
    }
    let pack_len = pack_len as usize;
    if buf.len() < pack_len {
        return Ok(None);
    }
    let op = i32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
    let seq = i32::from_be_bytes([buf[12], buf[13], buf[14], buf[15]]);
    Ok(Some((Pkt { op, seq, body: &buf[HEADER_LEN..pack_len] }, pack_len)))
}

/// Call `f` for every packet of `body` (an op-9 wrapper's body: complete packets back to back).
pub fn for_each_inner(mut body: &[u8], f: &mut impl FnMut(Pkt<'_>)) -> Result<(), String> {
    while !body.is_empty() {
        match parse(body)? {
            Some((p, n)) => {
                f(p);
                body = &body[n..];
            }
            None => return Err("truncated packet inside op 9".into()),
        }
    }
    Ok(())
}

/// Nanoseconds since the Unix epoch (CLOCK_REALTIME: the same clock in every process of the machine).
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// goim's benchmark body with the publish time: `{"test":1,"ts":<unix ns>}`.
pub fn push_body(ts_ns: u64) -> Vec<u8> {
    format!("{{\"test\":1,\"ts\":{ts_ns}}}").into_bytes()
}

/// A push body of about `size` bytes: 0 = [`push_body`]; else a chat-like JSON message (sender,
/// room, a text of common words picked pseudo-randomly from `ts_ns`, the publish time) — what a chat
/// app pushes, compressible as such text is, not as a repeated string would be.
pub fn push_body_sized(ts_ns: u64, size: usize) -> Vec<u8> {
    const WORDS: [&str; 48] = [
        "the", "meeting", "is", "at", "three", "today", "please", "bring", "your", "notes", "and", "we", "will",
        "review", "last", "week", "numbers", "before", "lunch", "thanks", "everyone", "for", "joining", "great",
        "stream", "tonight", "who", "wants", "to", "play", "again", "tomorrow", "I", "think", "so", "yes", "no",
        "maybe", "later", "link", "here", "check", "out", "this", "new", "song", "haha", "ok",
    ];
    if size == 0 {
        return push_body(ts_ns);
    }
    let mut x = ts_ns | 1;
    let mut text = String::new();
    let head = format!("{{\"type\":\"chat\",\"room\":\"test://0\",\"from\":{{\"mid\":{},\"name\":\"user-{}\"}},\"text\":\"", 1_000_000 + x % 15_000, x % 15_000);
    let tail = format!("\",\"ts\":{ts_ns}}}");
    while head.len() + text.len() + tail.len() < size {
        // xorshift64: a different sentence per message.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(WORDS[(x % WORDS.len() as u64) as usize]);
    }
    format!("{head}{text}{tail}").into_bytes()
}

/// The `"ts":` value of a push body, if present.
pub fn body_ts(body: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"ts\":";
    let at = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let mut v: u64 = 0;
    let mut any = false;
    for &b in &body[at..] {
        if b.is_ascii_digit() {
            v = v.wrapping_mul(10).wrapping_add((b - b'0') as u64);
            any = true;
        } else {
            break;
        }
    }
    any.then_some(v)
}

/// One parsed unit of the NATS server→client protocol.
#[derive(Debug)]
pub enum NatsIn<'a> {
    Msg { payload: &'a [u8] },
    Ping,
    Pong,
    Info,
    Ok,
    Err(String),
}

/// The first complete NATS protocol unit of `buf` and its length; `Ok(None)` when more is needed.
pub fn parse_nats(buf: &[u8]) -> Result<Option<(NatsIn<'_>, usize)>, String> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() > 64 * 1024 {
            return Err("NATS control line too long".into());
        }
        return Ok(None);
    };
    let line = &buf[..eol];
    let after = eol + 2;
    if line.starts_with(b"MSG ") || line.starts_with(b"HMSG ") {
        let text = std::str::from_utf8(line).map_err(|_| "non-UTF-8 MSG line")?;
        let size: usize = text
            .rsplit(' ')
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad MSG line {text:?}"))?;
        if buf.len() < after + size + 2 {
            return Ok(None);
        }
        let payload = &buf[after..after + size];
        // HMSG: the payload starts with the header block; the ts search works on it all the same.
        return Ok(Some((NatsIn::Msg { payload }, after + size + 2)));
    }
    let unit = if line == b"PING" {
        NatsIn::Ping
    } else if line == b"PONG" {
        NatsIn::Pong
    } else if line.starts_with(b"INFO") {
        NatsIn::Info
    } else if line == b"+OK" {
        NatsIn::Ok
    } else if line.starts_with(b"-ERR") {
        NatsIn::Err(String::from_utf8_lossy(line).into_owned())
    } else {
        return Err(format!("unexpected NATS line {:?}", String::from_utf8_lossy(line)));
    };
    Ok(Some((unit, after)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_round_trip() {
        let p = packet(1, 1000, 5, b"hello");
        let (q, n) = parse(&p).unwrap().unwrap();
        assert_eq!((q.op, q.seq, q.body, n), (1000, 5, &b"hello"[..], p.len()));
        assert!(parse(&p[..10]).unwrap().is_none());
        let mut wrapped = p.clone();
        wrapped.extend_from_slice(&packet(1, 1001, 0, b""));
        let mut ops = Vec::new();
        for_each_inner(&wrapped, &mut |p| ops.push(p.op)).unwrap();
        assert_eq!(ops, vec![1000, 1001]);
    }

    #[test]
    fn ts_is_found() {
        assert_eq!(body_ts(&push_body(1234567)), Some(1234567));
        assert_eq!(body_ts(b"{\"test\":1}"), None);
    }

    #[test]
    fn nats_units() {
        let buf = b"INFO {}\r\nMSG room.test.1 1 3\r\nabc\r\nPING\r\nMSG a 1 5\r\nab";
        let (u, n) = parse_nats(buf).unwrap().unwrap();
        assert!(matches!(u, NatsIn::Info));
        let rest = &buf[n..];
        let (u, m) = parse_nats(rest).unwrap().unwrap();
        assert!(matches!(u, NatsIn::Msg { payload } if payload == b"abc"));
        let rest = &rest[m..];
        let (u, k) = parse_nats(rest).unwrap().unwrap();
        assert!(matches!(u, NatsIn::Ping));
        assert!(parse_nats(&rest[k..]).unwrap().is_none());
    }
}
