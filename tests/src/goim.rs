//! goim clients for the tests: TCP (plain packets) and WebSocket (`/sub`, one packet per binary
//! message, pushes wrapped in op 9), each plain or over TLS (TLS-TCP and WSS, with a
//! [`tls_connector`] that trusts the test's own certificate). The packet reader here is deliberately independent of the edge's
//! codec and lenient: server→client packets have no size limit.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::edge::Edge;

/// Default wait for something that must happen.
pub const WAIT: Duration = Duration::from_secs(10);

pub const OP_HANDSHAKE: i32 = 0;
pub const OP_HEARTBEAT: i32 = 2;
pub const OP_HEARTBEAT_REPLY: i32 = 3;
pub const OP_SEND_MSG: i32 = 4;
pub const OP_AUTH: i32 = 7;
pub const OP_AUTH_REPLY: i32 = 8;
pub const OP_RAW: i32 = 9;
pub const OP_CHANGE_ROOM: i32 = 12;
pub const OP_CHANGE_ROOM_REPLY: i32 = 13;
pub const OP_SUB: i32 = 14;
pub const OP_SUB_REPLY: i32 = 15;
pub const OP_UNSUB: i32 = 16;
pub const OP_UNSUB_REPLY: i32 = 17;

/// A goim packet as the tests see it.
#[derive(Clone, PartialEq, Eq)]
pub struct Packet {
    pub ver: i16,
    pub op: i32,
    pub seq: i32,
    pub body: Vec<u8>,
}

impl fmt::Debug for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let body = if self.body.len() > 64 {
            format!(
                "{:?}… ({} bytes)",
                String::from_utf8_lossy(&self.body[..64]),
                self.body.len()
            )
        } else {
            format!("{:?}", String::from_utf8_lossy(&self.body))
        };
        write!(
            f,
            "Packet{{ver:{}, op:{}, seq:{}, body:{}}}",
            self.ver, self.op, self.seq, body
        )
    }
}

impl Packet {
    pub fn new(ver: i16, op: i32, seq: i32, body: impl Into<Vec<u8>>) -> Packet {
        Packet {
            ver,
            op,
            seq,
            body: body.into(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        raw_packet(
            (16 + self.body.len()) as i32,
            16,
            self.ver,
            self.op,
            self.seq,
            &self.body,
        )
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }

    /// The heartbeat reply's int32 count.
    pub fn body_i32(&self) -> i32 {
        assert_eq!(
            self.body.len(),
            4,
            "expected a 4-byte int32 body in {self:?}"
        );
        i32::from_be_bytes(self.body[..4].try_into().unwrap())
    }
}

/// Arbitrary header fields plus body: for malformed input.
pub fn raw_packet(
    pack_len: i32,
    header_len: i16,
    ver: i16,
    op: i32,
    seq: i32,
    body: &[u8],
) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + body.len());
    v.extend_from_slice(&pack_len.to_be_bytes());
    v.extend_from_slice(&header_len.to_be_bytes());
    v.extend_from_slice(&ver.to_be_bytes());
    v.extend_from_slice(&op.to_be_bytes());
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// Take one complete packet off the front of `buf`, leniently (no size limit; headerLen must be 16 and
/// packLen >= 16, anything else is a server bug and panics).
fn take_packet(buf: &mut BytesMut, who: &str) -> Option<Packet> {
    if buf.len() < 16 {
        return None;
    }
    let pack_len = i32::from_be_bytes(buf[0..4].try_into().unwrap());
    let header_len = i16::from_be_bytes(buf[4..6].try_into().unwrap());
    assert_eq!(header_len, 16, "{who}: server sent headerLen {header_len}");
    assert!(pack_len >= 16, "{who}: server sent packLen {pack_len}");
    let len = pack_len as usize;
    if buf.len() < len {
        buf.reserve(len - buf.len());
        return None;
    }
    let mut h = &buf[6..16];
    let ver = h.get_i16();
    let op = h.get_i32();
    let seq = h.get_i32();
    let body = buf[16..len].to_vec();
    buf.advance(len);
    Some(Packet { ver, op, seq, body })
}

/// Parse one whole WS message as exactly one packet.
fn parse_frame(data: &[u8], who: &str) -> Packet {
    let mut b = BytesMut::from(data);
    let p = take_packet(&mut b, who).unwrap_or_else(|| {
        panic!(
            "{who}: WebSocket message of {} bytes holds no complete packet",
            data.len()
        )
    });
    assert!(
        b.is_empty(),
        "{who}: WebSocket message holds {} bytes after its packet",
        b.len()
    );
    p
}

/// Split an op-9 body into its inner packets (every one complete; panics otherwise).
pub fn unwrap_raw(body: &[u8], who: &str) -> Vec<Packet> {
    let mut b = BytesMut::from(body);
    let mut out = Vec::new();
    while !b.is_empty() {
        match take_packet(&mut b, who) {
            Some(p) => out.push(p),
            None => panic!(
                "{who}: op-9 body ends with a truncated inner packet ({} bytes left)",
                b.len()
            ),
        }
    }
    assert!(!out.is_empty(), "{who}: empty op-9 packet");
    out
}

/// The op-7 body.
#[derive(Debug, Clone)]
pub struct Auth {
    pub mid: i64,
    pub key: String,
    pub room_id: String,
    pub platform: String,
    pub accepts: Vec<i32>,
    /// authsvc token (token mode); omitted from the body when None.
    pub token: Option<String>,
}

impl Auth {
    pub fn new(mid: i64) -> Auth {
        Auth {
            mid,
            key: String::new(),
            room_id: String::new(),
            platform: "web".into(),
            accepts: vec![],
            token: None,
        }
    }
    pub fn token(mut self, t: &str) -> Auth {
        self.token = Some(t.into());
        self
    }
    pub fn key(mut self, k: &str) -> Auth {
        self.key = k.into();
        self
    }
    pub fn room(mut self, r: &str) -> Auth {
        self.room_id = r.into();
        self
    }
    pub fn accepts(mut self, a: &[i32]) -> Auth {
        self.accepts = a.to_vec();
        self
    }
    pub fn platform(mut self, p: &str) -> Auth {
        self.platform = p.into();
        self
    }
    pub fn body(&self) -> Vec<u8> {
        let mut body = json!({
            "mid": self.mid,
            "key": self.key,
            "room_id": self.room_id,
            "platform": self.platform,
            "accepts": self.accepts,
        });
        if let Some(t) = &self.token {
            body["token"] = json!(t);
        }
        body.to_string().into_bytes()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Ws,
}

/// Why no packet was returned.
#[derive(Debug)]
pub enum RecvError {
    Timeout,
    /// The server closed the connection (EOF, reset, or WebSocket close); the text says how.
    Closed(String),
}

/// The byte stream under a client: a `TcpStream`, or a TLS stream over one.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

enum Conn {
    Tcp { stream: Box<dyn Io>, buf: BytesMut },
    Ws(Box<WebSocketStream<Box<dyn Io>>>),
}

/// A TLS client configuration trusting exactly `ca_pem` (the test's self-signed certificate).
pub fn tls_connector(ca_pem: &[u8]) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.expect("test CA PEM")).expect("add test CA");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// TCP connect, then the TLS handshake for `server_name` (Err(text) if either fails).
pub async fn connect_tls_stream(
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
    server_name: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let stream = timeout(WAIT, TcpStream::connect(addr))
        .await
        .map_err(|_| "TCP connect timeout".to_string())?
        .map_err(|e| format!("TCP connect: {e}"))?;
    tls_handshake(stream, connector, server_name).await
}

/// The client side of a TLS handshake over `stream`, for `server_name`.
pub async fn tls_handshake(
    stream: TcpStream,
    connector: &tokio_rustls::TlsConnector,
    server_name: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    stream.set_nodelay(true).ok();
    let name = rustls_pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| format!("server name {server_name:?}: {e}"))?;
    timeout(WAIT, connector.connect(name, stream))
        .await
        .map_err(|_| "TLS handshake timeout".to_string())?
        .map_err(|e| format!("TLS handshake: {e}"))
}

/// A goim client over TCP or WebSocket.
///
/// Replies are matched by seq (requests use seq >= 1); pushes (TCP: ver 1, seq 0; WS: op-9 wrappers)
/// that arrive while waiting for a reply are queued for [`Client::next_push`].
pub struct Client {
    pub transport: Transport,
    pub label: String,
    conn: Conn,
    pending: VecDeque<Packet>,
    next_seq: i32,
    closed: Option<String>,
}

impl Client {
    /// Connect to an edge's TCP or WebSocket listener.
    pub async fn connect(transport: Transport, edge: &Edge) -> Client {
        match transport {
            Transport::Tcp => Self::connect_tcp(edge.tcp_addr()).await,
            Transport::Ws => Self::connect_ws(edge.ws_addr()).await,
        }
    }

    pub async fn connect_tcp(addr: SocketAddr) -> Client {
        let stream = timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("TCP connect {addr}: timeout"))
            .unwrap_or_else(|e| panic!("TCP connect {addr}: {e}"));
        Self::from_tcp(stream)
    }

    /// A TCP client whose socket makes the server's kernel buffers for this connection small: a tiny
    /// receive buffer and a small MSS (the server's send buffer is sized from the MSS), so a client that
    /// stops reading makes the server's own queue grow after a few tens of KB.
    pub async fn connect_tcp_small_buffers(addr: SocketAddr) -> Client {
        Self::from_tcp(small_buffer_stream(addr).await)
    }

    /// [`Client::connect_tcp_small_buffers`] with goim over TLS inside.
    pub async fn connect_tls_small_buffers(
        addr: SocketAddr,
        connector: &tokio_rustls::TlsConnector,
        server_name: &str,
    ) -> Client {
        let tls = tls_handshake(small_buffer_stream(addr).await, connector, server_name)
            .await
            .unwrap_or_else(|e| panic!("TLS connect {addr}: {e}"));
        let port = tls.get_ref().0.local_addr().map(|a| a.port()).unwrap_or(0);
        Self::from_stream(Box::new(tls), format!("tls:{port}"))
    }

    fn from_tcp(stream: TcpStream) -> Client {
        stream.set_nodelay(true).ok();
        let label = format!("tcp:{}", stream.local_addr().map(|a| a.port()).unwrap_or(0));
        Self::from_stream(Box::new(stream), label)
    }

    fn from_stream(stream: Box<dyn Io>, label: String) -> Client {
        Client {
            transport: Transport::Tcp,
            label,
            conn: Conn::Tcp {
                stream,
                buf: BytesMut::with_capacity(8192),
            },
            pending: VecDeque::new(),
            next_seq: 1,
            closed: None,
        }
    }

    /// goim over TLS-TCP: connect, TLS handshake for `server_name` (the certificate's name), then
    /// plain goim packets inside.
    pub async fn connect_tls(
        addr: SocketAddr,
        connector: &tokio_rustls::TlsConnector,
        server_name: &str,
    ) -> Client {
        let tls = connect_tls_stream(addr, connector, server_name)
            .await
            .unwrap_or_else(|e| panic!("TLS connect {addr}: {e}"));
        let port = tls.get_ref().0.local_addr().map(|a| a.port()).unwrap_or(0);
        Self::from_stream(Box::new(tls), format!("tls:{port}"))
    }

    /// WSS: connect, TLS handshake for `server_name`, then the WebSocket upgrade at `/sub`.
    pub async fn connect_wss(
        addr: SocketAddr,
        connector: &tokio_rustls::TlsConnector,
        server_name: &str,
    ) -> Client {
        let tls = connect_tls_stream(addr, connector, server_name)
            .await
            .unwrap_or_else(|e| panic!("WSS connect {addr}: {e}"));
        let port = tls.get_ref().0.local_addr().map(|a| a.port()).unwrap_or(0);
        let url = format!("wss://{server_name}:{}/sub", addr.port());
        Self::upgrade(Box::new(tls), &url, format!("wss:{port}"))
            .await
            .unwrap_or_else(|e| panic!("WSS upgrade {url}: {e}"))
    }

    /// Connect and upgrade to WebSocket at `ws://addr/sub`.
    pub async fn connect_ws(addr: SocketAddr) -> Client {
        Self::connect_ws_path(addr, "/sub")
            .await
            .unwrap_or_else(|e| panic!("WebSocket connect {addr}/sub: {e}"))
    }

    /// Connect and upgrade at an arbitrary path; Err(text) if the upgrade fails.
    pub async fn connect_ws_path(addr: SocketAddr, path: &str) -> Result<Client, String> {
        let stream = timeout(WAIT, TcpStream::connect(addr))
            .await
            .map_err(|_| "TCP connect timeout".to_string())?
            .map_err(|e| format!("TCP connect: {e}"))?;
        stream.set_nodelay(true).ok();
        let port = stream.local_addr().map(|a| a.port()).unwrap_or(0);
        let url = format!("ws://{addr}{path}");
        Self::upgrade(Box::new(stream), &url, format!("ws:{port}")).await
    }

    /// The WebSocket upgrade over an established stream (plain or TLS).
    async fn upgrade(stream: Box<dyn Io>, url: &str, label: String) -> Result<Client, String> {
        let cfg = WebSocketConfig::default()
            .max_message_size(None)
            .max_frame_size(None);
        let (ws, _resp) = timeout(
            WAIT,
            tokio_tungstenite::client_async_with_config(url, stream, Some(cfg)),
        )
        .await
        .map_err(|_| "WebSocket upgrade timeout".to_string())?
        .map_err(|e| format!("WebSocket upgrade: {e}"))?;
        Ok(Client {
            transport: Transport::Ws,
            label,
            conn: Conn::Ws(Box::new(ws)),
            pending: VecDeque::new(),
            next_seq: 1,
            closed: None,
        })
    }

    /// Connect and authenticate; panics unless the edge answers op 8.
    pub async fn connect_auth(transport: Transport, edge: &Edge, auth: Auth) -> Client {
        let mut c = Self::connect(transport, edge).await;
        c.auth(&auth).await;
        c
    }

    pub fn with_label(mut self, label: &str) -> Client {
        self.label = format!("{label}({})", self.label);
        self
    }

    /// Send a packet. Panics if the write fails.
    pub async fn send(&mut self, p: &Packet) {
        self.send_raw(&p.encode()).await;
    }

    /// Send raw bytes: over TCP written as they are, over WebSocket as one binary message.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        if let Err(e) = self.try_send_raw(bytes).await {
            panic!("{}: send failed: {e}", self.label);
        }
    }

    /// Like `send_raw` but returns the error (a closed connection may refuse the write).
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> Result<(), String> {
        match &mut self.conn {
            Conn::Tcp { stream, .. } => stream.write_all(bytes).await.map_err(|e| e.to_string()),
            Conn::Ws(ws) => ws
                .send(Message::Binary(bytes.to_vec().into()))
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// Send a WebSocket message of any kind (WS clients only).
    pub async fn send_ws_message(&mut self, m: Message) -> Result<(), String> {
        match &mut self.conn {
            Conn::Ws(ws) => ws.send(m).await.map_err(|e| e.to_string()),
            Conn::Tcp { .. } => panic!("{}: not a WebSocket client", self.label),
        }
    }

    /// Half-close (TCP: shutdown(Write); WS: send a close frame).
    pub async fn shutdown_write(&mut self) {
        match &mut self.conn {
            Conn::Tcp { stream, .. } => {
                let _ = stream.shutdown().await;
            }
            Conn::Ws(ws) => {
                let _ = ws.send(Message::Close(None)).await;
            }
        }
    }

    /// The next packet on the wire (no queue, no unwrapping), within `t`.
    pub async fn recv_packet(&mut self, t: Duration) -> Result<Packet, RecvError> {
        if let Some(how) = &self.closed {
            return Err(RecvError::Closed(how.clone()));
        }
        let deadline = Instant::now() + t;
        let label = self.label.clone();
        let r = match &mut self.conn {
            Conn::Tcp { stream, buf } => loop {
                if let Some(p) = take_packet(buf, &label) {
                    break Ok(p);
                }
                match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
                    Err(_) => break Err(RecvError::Timeout),
                    Ok(Ok(0)) => {
                        let how = if buf.is_empty() {
                            "EOF".to_string()
                        } else {
                            format!("EOF after {} bytes of a partial packet", buf.len())
                        };
                        break Err(RecvError::Closed(how));
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => break Err(RecvError::Closed(format!("read error: {e}"))),
                }
            },
            Conn::Ws(ws) => loop {
                match tokio::time::timeout_at(deadline, ws.next()).await {
                    Err(_) => break Err(RecvError::Timeout),
                    Ok(None) => break Err(RecvError::Closed("end of WebSocket stream".into())),
                    Ok(Some(Err(e))) => {
                        break Err(RecvError::Closed(format!("WebSocket error: {e}")))
                    }
                    Ok(Some(Ok(Message::Binary(b)))) => break Ok(parse_frame(&b, &label)),
                    Ok(Some(Ok(Message::Text(t)))) => {
                        panic!(
                            "{label}: server sent a text WebSocket message ({} bytes)",
                            t.len()
                        )
                    }
                    Ok(Some(Ok(Message::Close(f)))) => {
                        break Err(RecvError::Closed(format!("WebSocket close frame {f:?}")))
                    }
                    Ok(Some(Ok(_))) => {} // ping/pong/raw frame
                }
            },
        };
        if let Err(RecvError::Closed(how)) = &r {
            self.closed = Some(how.clone());
        }
        r
    }

    fn next_seq(&mut self) -> i32 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// Whether `p` is a push (not a reply) on this transport; pushes are queued (WS: unwrapped).
    fn queue_if_push(&mut self, p: &Packet) -> bool {
        match self.transport {
            Transport::Ws if p.op == OP_RAW && p.seq == 0 => {
                let inner = unwrap_raw(&p.body, &self.label);
                self.pending.extend(inner);
                true
            }
            Transport::Tcp if p.seq == 0 && p.ver == 1 && p.op != OP_RAW => {
                self.pending.push_back(p.clone());
                true
            }
            _ => false,
        }
    }

    /// Send `(ver, op, seq, body)` and return the reply (the first non-push packet, which must echo
    /// `seq`). Pushes received meanwhile are queued.
    pub async fn request_with(&mut self, ver: i16, op: i32, seq: i32, body: &[u8]) -> Packet {
        assert_ne!(
            seq, 0,
            "requests use seq != 0 so that replies are told from pushes"
        );
        self.send(&Packet::new(ver, op, seq, body)).await;
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let p = match self.recv_packet(left).await {
                Ok(p) => p,
                Err(e) => panic!("{}: no reply to op {op} seq {seq}: {e:?}", self.label),
            };
            if self.queue_if_push(&p) {
                continue;
            }
            assert_eq!(
                p.seq, seq,
                "{}: reply to op {op} seq {seq} has another seq: {p:?}",
                self.label
            );
            return p;
        }
    }

    /// Send op with ver 1 and a fresh seq; return the reply.
    pub async fn request(&mut self, op: i32, body: &[u8]) -> Packet {
        let seq = self.next_seq();
        self.request_with(1, op, seq, body).await
    }

    /// Op 7 with `auth`; asserts the op-8 reply (empty body, ver/seq echoed).
    pub async fn auth(&mut self, auth: &Auth) {
        let seq = self.next_seq();
        let r = self.request_with(1, OP_AUTH, seq, &auth.body()).await;
        assert_eq!(
            (r.op, r.ver, r.seq),
            (OP_AUTH_REPLY, 1, seq),
            "{}: bad auth reply {r:?}",
            self.label
        );
        assert!(
            r.body.is_empty(),
            "{}: auth reply has a body: {r:?}",
            self.label
        );
    }

    /// Op 2; asserts op 3 and returns its int32 count.
    pub async fn heartbeat(&mut self) -> i32 {
        let r = self.request(OP_HEARTBEAT, b"").await;
        assert_eq!(
            r.op, OP_HEARTBEAT_REPLY,
            "{}: bad heartbeat reply {r:?}",
            self.label
        );
        r.body_i32()
    }

    /// Op 12; asserts op 13 echoing the room id.
    pub async fn change_room(&mut self, room: &str) {
        let r = self.request(OP_CHANGE_ROOM, room.as_bytes()).await;
        assert_eq!(
            r.op, OP_CHANGE_ROOM_REPLY,
            "{}: bad change-room reply {r:?}",
            self.label
        );
        assert_eq!(
            r.body,
            room.as_bytes(),
            "{}: change-room reply does not echo the room",
            self.label
        );
    }

    /// Op 14 with e.g. "1000,1001"; asserts the op-15 echo.
    pub async fn sub(&mut self, ops: &str) {
        let r = self.request(OP_SUB, ops.as_bytes()).await;
        assert_eq!(
            (r.op, r.body.as_slice()),
            (OP_SUB_REPLY, ops.as_bytes()),
            "{}: bad sub reply {r:?}",
            self.label
        );
    }

    /// Op 16; asserts the op-17 echo.
    pub async fn unsub(&mut self, ops: &str) {
        let r = self.request(OP_UNSUB, ops.as_bytes()).await;
        assert_eq!(
            (r.op, r.body.as_slice()),
            (OP_UNSUB_REPLY, ops.as_bytes()),
            "{}: bad unsub reply {r:?}",
            self.label
        );
    }

    /// The next pushed business packet within `t` (WS: unwrapped from op 9), or None on timeout.
    /// Panics if a non-push packet arrives, if a TCP push is wrapped, or if a WS push is not.
    pub async fn try_next_push(&mut self, t: Duration) -> Option<Packet> {
        if let Some(p) = self.pending.pop_front() {
            return Some(p);
        }
        let deadline = Instant::now() + t;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let p = match self.recv_packet(left).await {
                Ok(p) => p,
                Err(RecvError::Timeout) => return None,
                Err(RecvError::Closed(how)) => {
                    panic!("{}: closed ({how}) while waiting for a push", self.label)
                }
            };
            match self.transport {
                Transport::Tcp => {
                    assert_ne!(
                        p.op, OP_RAW,
                        "{}: TCP clients must never see op 9: {p:?}",
                        self.label
                    );
                    assert_eq!(
                        (p.ver, p.seq),
                        (1, 0),
                        "{}: a TCP push must have ver 1, seq 0: {p:?}",
                        self.label
                    );
                    return Some(p);
                }
                Transport::Ws => {
                    assert_eq!(
                        p.op, OP_RAW,
                        "{}: WebSocket pushes must come as op 9: {p:?}",
                        self.label
                    );
                    assert_eq!(
                        (p.ver, p.seq),
                        (1, 0),
                        "{}: op-9 wrapper must have ver 1, seq 0",
                        self.label
                    );
                    let inner = unwrap_raw(&p.body, &self.label);
                    self.pending.extend(inner);
                    if let Some(p) = self.pending.pop_front() {
                        return Some(p);
                    }
                }
            }
        }
    }

    /// The next push; panics after `WAIT`. Inner packets are checked to be server pushes (ver 1, seq 0).
    pub async fn next_push(&mut self) -> Packet {
        let p = self
            .try_next_push(WAIT)
            .await
            .unwrap_or_else(|| panic!("{}: no push within {WAIT:?}", self.label));
        assert_eq!(
            (p.ver, p.seq),
            (1, 0),
            "{}: a push must have ver 1, seq 0: {p:?}",
            self.label
        );
        p
    }

    /// Asserts the next push has this op and body.
    pub async fn expect_push(&mut self, op: i32, body: &[u8]) {
        let p = self.next_push().await;
        assert_eq!(
            (p.op, p.body.as_slice()),
            (op, body),
            "{}: expected push op {op} body {:?}, got {p:?}",
            self.label,
            String::from_utf8_lossy(body)
        );
    }

    /// Pushes received (and queued) but not yet taken.
    pub fn queued_pushes(&self) -> usize {
        self.pending.len()
    }

    /// Asserts the server closes the connection within `t` without sending any packet first.
    pub async fn expect_closed(&mut self, t: Duration) {
        assert!(
            self.pending.is_empty(),
            "{}: packets were queued before the close: {:?}",
            self.label,
            self.pending
        );
        match self.recv_packet(t).await {
            Err(RecvError::Closed(_)) => {}
            Err(RecvError::Timeout) => panic!(
                "{}: still open after {t:?}, expected the server to close it",
                self.label
            ),
            Ok(p) => panic!("{}: expected a close without reply, got {p:?}", self.label),
        }
    }

    /// Asserts the server closes the connection within `t`, skipping (and counting) any packets that
    /// arrive first. Returns how many were skipped.
    pub async fn expect_closed_after_draining(&mut self, t: Duration) -> usize {
        let deadline = Instant::now() + t;
        let mut n = self.pending.len();
        self.pending.clear();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_packet(left).await {
                Err(RecvError::Closed(_)) => return n,
                Err(RecvError::Timeout) => {
                    panic!(
                        "{}: still open after {t:?} ({n} packets drained), expected a close",
                        self.label
                    )
                }
                Ok(_) => n += 1,
            }
        }
    }

    /// Asserts nothing arrives and the connection stays open for `d` (use only where no later event
    /// can prove the negative).
    pub async fn expect_silence(&mut self, d: Duration) {
        assert!(
            self.pending.is_empty(),
            "{}: unexpected queued packets {:?}",
            self.label,
            self.pending
        );
        match self.recv_packet(d).await {
            Err(RecvError::Timeout) => {}
            Err(RecvError::Closed(how)) => {
                panic!("{}: closed ({how}), expected it to stay open", self.label)
            }
            Ok(p) => panic!("{}: expected silence, got {p:?}", self.label),
        }
    }

    /// Whether the connection was seen closed.
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }
}

/// A TCP connection whose socket makes the server's kernel buffers for it small (see
/// [`Client::connect_tcp_small_buffers`]).
pub async fn small_buffer_stream(addr: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    {
        use std::os::fd::AsRawFd;
        let mss: libc::c_int = 536;
        // SAFETY: setsockopt on a valid fd with a correctly sized int.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_MAXSEG,
                &mss as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(
            rc,
            0,
            "setsockopt(TCP_MAXSEG): {}",
            std::io::Error::last_os_error()
        );
    }
    timeout(WAIT, sock.connect(addr))
        .await
        .unwrap_or_else(|_| panic!("TCP connect {addr}: timeout"))
        .unwrap_or_else(|e| panic!("TCP connect {addr}: {e}"))
}
