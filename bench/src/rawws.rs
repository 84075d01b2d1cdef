//! A minimal goim WebSocket client for the load generator, framing RFC 6455 itself so that it can
//! offer permessage-deflate (RFC 7692; tungstenite does not implement it) and count the bytes on the
//! wire: S1's `ws-raw` and `ws-deflate` phases, which compare the edge's CPU and bytes per delivery
//! with and without the extension.
//!
//! Client side of the extension: it offers `permessage-deflate; client_max_window_bits` (what browsers
//! send), requires the edge to agree (else the connection fails: a run must not silently measure the
//! uncompressed path), inflates every RSV1 message on its own (the edge agrees to
//! `server_no_context_takeover`) with one decompressor per worker thread, and sends uncompressed.
//! Every loop is bounded by the caller's deadlines; a message is bounded by [`MAX_MESSAGE`].

use std::cell::RefCell;

use bytes::{Buf, BytesMut};
use flate2::{Decompress, FlushDecompress, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest message (compressed or inflated) the client accepts from the edge.
const MAX_MESSAGE: usize = 16 << 20;
const SYNC_TAIL: [u8; 4] = [0, 0, 0xFF, 0xFF];

thread_local! {
    static INFLATER: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

pub struct RawWs {
    stream: TcpStream,
    rbuf: BytesMut,
    /// Bytes read from the socket since the last [`RawWs::take_wire_bytes`].
    wire: u64,
}

impl RawWs {
    /// Upgrade at `path`, offering permessage-deflate if `deflate`.
    pub async fn connect(mut stream: TcpStream, host: &str, path: &str, deflate: bool) -> Result<RawWs, String> {
        let offer = if deflate { "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" } else { "" };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{offer}\r\n"
        );
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("ws upgrade write: {e}"))?;
        let mut rbuf = BytesMut::with_capacity(1024);
        let end = loop {
            if let Some(i) = rbuf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if rbuf.len() > 8192 {
                return Err("ws upgrade: answer too long".into());
            }
            match stream.read_buf(&mut rbuf).await {
                Ok(0) => return Err("ws upgrade: EOF".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("ws upgrade read: {e}")),
            }
        };
        let head = String::from_utf8_lossy(&rbuf[..end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 101") {
            return Err(format!("ws upgrade refused: {}", head.lines().next().unwrap_or("")));
        }
        let agreed = head.lines().any(|l| l.starts_with("sec-websocket-extensions:") && l.contains("permessage-deflate"));
        if agreed != deflate {
            return Err(format!("ws upgrade: permessage-deflate offered {deflate}, agreed {agreed}"));
        }
        rbuf.advance(end);
        Ok(RawWs { stream, rbuf, wire: 0 })
    }

    /// Bytes read off the socket (frames, headers included) since the last call.
    pub fn take_wire_bytes(&mut self) -> u64 {
        std::mem::take(&mut self.wire)
    }

    /// Append the next data message's payload (inflated if compressed) to `out`; Ok(false) at EOF
    /// or a close frame.
    pub async fn read(&mut self, out: &mut BytesMut) -> Result<bool, String> {
        loop {
            if let Some(done) = self.take_message(out)? {
                return Ok(done);
            }
            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(4096);
            }
            match self.stream.read_buf(&mut self.rbuf).await {
                Ok(0) => return Ok(false),
                Ok(n) => self.wire += n as u64,
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    /// One whole frame off `rbuf`: Some(true) for a data message appended to `out`, Some(false) for
    /// a close, None if more bytes are needed (control frames are skipped).
    fn take_message(&mut self, out: &mut BytesMut) -> Result<Option<bool>, String> {
        loop {
            let b = &self.rbuf;
            if b.len() < 2 {
                return Ok(None);
            }
            let (len, at) = match b[1] & 0x7F {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => (u64::from_be_bytes([b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9]]) as usize, 10),
                126 | 127 => return Ok(None),
                n => (n as usize, 2),
            };
            if len > MAX_MESSAGE {
                return Err(format!("ws frame of {len} bytes"));
            }
            if b.len() < at + len {
                return Ok(None);
            }
            let (fin, rsv1, opcode) = (b[0] & 0x80 != 0, b[0] & 0x40 != 0, b[0] & 0x0F);
            self.rbuf.advance(at);
            let payload = self.rbuf.split_to(len);
            match opcode {
                0x1 | 0x2 if !fin => return Err("fragmented message from the edge".into()),
                0x1 | 0x2 if rsv1 => {
                    inflate(&payload, out)?;
                    return Ok(Some(true));
                }
                0x1 | 0x2 => {
                    out.extend_from_slice(&payload);
                    return Ok(Some(true));
                }
                0x8 => return Ok(Some(false)),
                _ => continue,
            }
        }
    }

    /// One binary message, masked, uncompressed.
    pub async fn send(&mut self, data: &[u8]) -> Result<(), String> {
        let mut v = Vec::with_capacity(data.len() + 14);
        v.push(0x82);
        match data.len() {
            n if n < 126 => v.push(0x80 | n as u8),
            n if n <= 65535 => {
                v.push(0x80 | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(0x80 | 127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x12, 0x34, 0x56, 0x78];
        v.extend_from_slice(&mask);
        v.extend(data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&v).await.map_err(|e| format!("ws write: {e}"))
    }
}

/// One compressed message (no context takeover): the sync tail appended, inflated into `out`.
fn inflate(payload: &[u8], out: &mut BytesMut) -> Result<(), String> {
    INFLATER.with(|d| {
        let mut d = d.borrow_mut();
        d.reset(false);
        let mut chunk = vec![0u8; 16384];
        for input in [payload, &SYNC_TAIL[..]] {
            let mut pos = 0;
            // Bounded: each round consumes input or produces output, up to MAX_MESSAGE.
            loop {
                let (i0, o0) = (d.total_in(), d.total_out());
                let status = d.decompress(&input[pos..], &mut chunk, FlushDecompress::Sync).map_err(|e| format!("inflate: {e}"))?;
                pos += (d.total_in() - i0) as usize;
                let produced = (d.total_out() - o0) as usize;
                out.extend_from_slice(&chunk[..produced]);
                if out.len() > MAX_MESSAGE {
                    return Err("inflated message too large".into());
                }
                if status == Status::StreamEnd || (pos == input.len() && produced < chunk.len()) {
                    break;
                }
                if produced == 0 && d.total_in() == i0 {
                    return Err("inflate made no progress".into());
                }
            }
        }
        Ok(())
    })
}
