//! TLS for the goim transports (WSS and goim over TLS-TCP): the server configuration loaded from the
//! PEM files of `[tls]`, the handshake ([`accept`]), and [`TlsSocket`], the [`Socket`] the connection
//! loop drives once the handshake is done.
//!
//! Why sans-IO rather than `tokio_rustls::TlsStream`: the connection loop is readiness-based (no read
//! or write buffer held while a connection idles, one task, reader and writer side by side) and its
//! backpressure relies on "the socket took n bytes, the rest waits in the outbox, which closes a slow
//! consumer at its byte bound". An `AsyncRead + AsyncWrite` stream would need a second loop (and its
//! buffers).
//!
//! Why rustls's *unbuffered* API ([`UnbufferedServerConnection`]) rather than `ServerConnection`:
//! memory per idle connection. A `ServerConnection` owns its input buffer (the deframer's), which it
//! sizes to 4 KiB before every read and never releases: 4 KiB of every idle TLS connection, over half
//! of the heap rustls keeps per connection (measured, BENCHMARKS.md "S3 over TLS"). With the
//! unbuffered API the caller owns the buffers, so [`TlsSocket`] holds them only while they hold
//! something and frees each once it is drained, as the plain loop holds no buffer between packets:
//!
//! - `incoming`: TLS bytes from the kernel not yet processed (only ever a partial record once the
//!   kernel said `WouldBlock`; freed when empty at that point).
//! - `plaintext`: decrypted bytes the loop's read chunk did not take (a record is up to 16 KiB,
//!   the chunk 4 KiB); freed when taken.
//! - `outgoing`: ciphertext the kernel did not take yet (at most one record of application data,
//!   plus handshake or alert records); freed once written.
//!
//! - read: TLS bytes from the kernel → records → plaintext out; `WouldBlock` only once the kernel
//!   said so (a partial record waits in `incoming`), so the readiness the loop polls is cleared
//!   exactly as for a plain socket. Plaintext still held (a record larger than the loop's read chunk)
//!   makes [`Socket::poll_read_ready`] ready at once.
//! - write: plaintext is taken only while no ciphertext is waiting, in chunks of one TLS record,
//!   each encrypted and handed to the kernel at once; what the kernel does not take stays in
//!   `outgoing` (at most one record, ~16 KiB) and is [`Socket::pending_output`], which the write
//!   loop flushes before it takes the next batch. So a client that stops reading makes the writes
//!   stop and the outbox fill up, and it is closed as `slow_consumer` as over plain TCP.
//!
//! The handshake runs up front in [`accept`] (in the accept task, under the handshake timeout, as
//! the WebSocket upgrade does) over the same session, so nothing of it is left in the connection's
//! task but the session itself. The session sits behind a `std::sync::Mutex`: the reader and the
//! writer run in the same task, so the lock is never contended (it only makes the `&self` socket
//! API possible).

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;

use super::socket::Socket;

/// Plaintext taken per TLS record (the TLS maximum record payload): the most ciphertext a slow
/// client's session holds beyond what the outbox counts.
const RECORD: usize = 16 * 1024;

/// Why the TLS configuration cannot be used (a start-up error naming the file).
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("tls.cert_path {path}: {why}")]
    Cert { path: String, why: String },
    #[error("tls.key_path {path}: {why}")]
    Key { path: String, why: String },
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The rustls server configuration from a PEM certificate chain (leaf first) and a PEM private key
/// (PKCS#8, PKCS#1 or SEC1), with the `ring` provider and its safe default protocol versions
/// (TLS 1.3 and 1.2).
pub fn server_config(cert_path: &Path, key_path: &Path) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
    let cert_err = |why: String| TlsConfigError::Cert { path: cert_path.display().to_string(), why };
    let key_err = |why: String| TlsConfigError::Key { path: key_path.display().to_string(), why };
    let certs = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| cert_err(pem_error(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(pem_error(e)))?;
    if certs.is_empty() {
        return Err(cert_err("no PEM certificate (-----BEGIN CERTIFICATE-----) in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => key_err("no PEM private key in the file".into()),
        e => key_err(pem_error(e)),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        // Also checks that the key is usable and matches the certificate.
        .with_single_cert(certs, key)
        .map_err(|e| key_err(format!("does not fit the certificate in tls.cert_path: {e}")))?;
    Ok(Arc::new(config))
}

fn pem_error(e: rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(e) => e.to_string(),
        e => format!("not valid PEM: {e}"),
    }
}

/// A TLS connection after its handshake: the kernel socket and the rustls session driving it.
pub struct TlsSocket {
    tcp: TcpStream,
    tls: Mutex<Session>,
}

impl std::fmt::Debug for TlsSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSocket").field("tcp", &self.tcp).finish_non_exhaustive()
    }
}

/// TLS bytes asked of the kernel per read (rustls's own read size).
const READ: usize = 4096;

/// The most TLS bytes held unprocessed: a handshake message may span records, and rustls's buffered
/// API bounds that at 64 KiB (`MAX_HANDSHAKE_SIZE`); a record alone is at most ~18 KiB.
const MAX_INCOMING: usize = 0xffff;

/// The rustls session and the buffers it is driven with (see the module doc: each is empty, with no
/// allocation, while the connection idles).
struct Session {
    conn: UnbufferedServerConnection,
    /// TLS bytes read from the kernel, not yet processed (a partial record).
    incoming: Vec<u8>,
    /// Decrypted bytes not yet taken from `plaintext_at` on.
    plaintext: Vec<u8>,
    plaintext_at: usize,
    /// Ciphertext for the kernel from `outgoing_at` on.
    outgoing: Vec<u8>,
    outgoing_at: usize,
    /// The client's close_notify was processed: reads give `Ok(0)` once the plaintext is taken.
    peer_closed: bool,
    /// The session failed (rustls refused what the client sent): every read reports it again, so a
    /// readiness `poll_read_ready` keeps reporting ends the connection instead of spinning.
    failed: bool,
}

/// What a [`Session::process`] pass should do once the handshake allows application data.
#[derive(Clone, Copy)]
enum Want<'a> {
    Nothing,
    Encrypt(&'a [u8]),
    CloseNotify,
}

/// Where a [`Session::process`] pass stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The handshake needs more bytes from the client.
    Handshaking,
    /// Application data may flow (and what was wanted was done).
    Established,
    /// Both sides sent close_notify: nothing more to encrypt.
    Closed,
}

fn rustls_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Append one record to `out`, sized to what `write` says it needs (it leaves `out` untouched when
/// the room is too small).
fn append<E>(out: &mut Vec<u8>, hint: usize, mut write: impl FnMut(&mut [u8]) -> Result<usize, E>, needs: impl Fn(&E) -> Option<usize>) -> Result<(), E> {
    let start = out.len();
    let mut room = hint;
    loop {
        out.resize(start + room, 0);
        match write(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(e) => {
                out.truncate(start);
                match needs(&e) {
                    // Grows strictly, so this ends (rustls asks for the exact size).
                    Some(required) if required > room => room = required,
                    _ => return Err(e),
                }
            }
        }
    }
}

fn encode_needs(e: &EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => Some(*required_size),
        _ => None,
    }
}

impl Session {
    fn new(conn: UnbufferedServerConnection) -> Session {
        Session {
            conn,
            incoming: Vec::new(),
            plaintext: Vec::new(),
            plaintext_at: 0,
            outgoing: Vec::new(),
            outgoing_at: 0,
            peer_closed: false,
            failed: false,
        }
    }

    /// Run rustls over `incoming` until it needs bytes from the client (or, established, until
    /// `want` is done): decrypted data goes to `plaintext`, records to send to `outgoing`.
    fn process(&mut self, want: Want<'_>) -> io::Result<Stop> {
        let Session { conn, incoming, plaintext, outgoing, peer_closed, .. } = self;
        loop {
            let UnbufferedStatus { mut discard, state } = conn.process_tls_records(&mut incoming[..]);
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    // The session keeps the error (and has queued its alert, see `fail`).
                    incoming.drain(..discard.min(incoming.len()));
                    return Err(rustls_error(e));
                }
            };
            let stop = match state {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = record.map_err(rustls_error)?;
                        discard += record.discard;
                        plaintext.extend_from_slice(record.payload);
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut data) => {
                    append(outgoing, 0, |out| data.encode(out), encode_needs).map_err(rustls_error)?;
                    None
                }
                // What was encoded is in `outgoing`, which is always written in order before anything
                // newer: for rustls it is as good as sent.
                ConnectionState::TransmitTlsData(sent) => {
                    sent.done();
                    None
                }
                ConnectionState::PeerClosed => {
                    *peer_closed = true;
                    None
                }
                ConnectionState::Closed => {
                    *peer_closed = true;
                    Some(Stop::Closed)
                }
                ConnectionState::BlockedHandshake => Some(Stop::Handshaking),
                ConnectionState::WriteTraffic(mut traffic) => {
                    let needs = |e: &EncryptError| match e {
                        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => Some(*required_size),
                        _ => None,
                    };
                    match want {
                        Want::Nothing => {}
                        // A record's overhead is at most 29 bytes (TLS 1.2 AES-GCM); rustls asks for more if not.
                        Want::Encrypt(data) => append(outgoing, data.len() + 32, |out| traffic.encrypt(data, out), needs).map_err(rustls_error)?,
                        Want::CloseNotify => append(outgoing, 32, |out| traffic.queue_close_notify(out), needs).map_err(rustls_error)?,
                    }
                    Some(Stop::Established)
                }
                // Early data is not enabled (`max_early_data_size` 0), and nothing else exists today.
                _ => return Err(rustls_error("unexpected TLS state (early data)")),
            };
            incoming.drain(..discard.min(incoming.len()));
            if let Some(stop) = stop {
                return Ok(stop);
            }
        }
    }

    /// Note a failure, and send what rustls has for it (its fatal alert) if the kernel takes it now.
    fn fail(&mut self, tcp: &TcpStream) {
        self.failed = true;
        // One pass only: rustls hands out queued records before it looks at the input again, and the
        // input that failed must not be processed a second time (rustls asserts it never sends a
        // second fatal alert). The alert is the one record queued by the failing pass.
        let Session { conn, incoming, outgoing, .. } = self;
        if let Ok(ConnectionState::EncodeTlsData(mut data)) = conn.process_tls_records(&mut incoming[..]).state {
            let _ = append(outgoing, 0, |out| data.encode(out), encode_needs);
        }
        let _ = self.flush(tcp);
    }

    /// Read TLS bytes from the kernel into `incoming`: `Ok(0)` at the end of the stream.
    fn read_kernel(&mut self, tcp: &TcpStream) -> io::Result<usize> {
        let start = self.incoming.len();
        if start >= MAX_INCOMING {
            return Err(rustls_error("TLS message too large"));
        }
        self.incoming.resize(start + READ, 0);
        let read = tcp.try_read(&mut self.incoming[start..]);
        self.incoming.truncate(start + *read.as_ref().unwrap_or(&0));
        if self.incoming.is_empty() {
            // Idle (WouldBlock) or ended: no buffer kept for it.
            self.incoming = Vec::new();
        }
        read
    }

    /// Hand `outgoing` to the kernel: `WouldBlock` if some of it must wait. Freed once written.
    fn flush(&mut self, tcp: &TcpStream) -> io::Result<()> {
        while self.outgoing_at < self.outgoing.len() {
            match tcp.try_write(&self.outgoing[self.outgoing_at..])? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => self.outgoing_at += n,
            }
        }
        self.outgoing = Vec::new();
        self.outgoing_at = 0;
        Ok(())
    }

    fn pending_output(&self) -> bool {
        self.outgoing_at < self.outgoing.len()
    }

    fn has_plaintext(&self) -> bool {
        self.plaintext_at < self.plaintext.len()
    }

    /// Plaintext into `buf` (0 if none); the buffer is freed once taken.
    fn take_plaintext(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.plaintext.len() - self.plaintext_at);
        buf[..n].copy_from_slice(&self.plaintext[self.plaintext_at..self.plaintext_at + n]);
        self.plaintext_at += n;
        if self.plaintext_at == self.plaintext.len() {
            self.plaintext = Vec::new();
            self.plaintext_at = 0;
        }
        n
    }
}

/// The TLS handshake of a new connection (under the caller's timeout): `InvalidData` if rustls
/// refused what the client sent (with its alert sent if possible), another error if the client went
/// away. Whatever the client sent after its Finished is kept and read first.
pub async fn accept(tcp: TcpStream, config: Arc<rustls::ServerConfig>) -> io::Result<TlsSocket> {
    let mut session = Session::new(UnbufferedServerConnection::new(config).map_err(rustls_error)?);
    loop {
        match session.process(Want::Nothing) {
            Ok(Stop::Handshaking) => {}
            Ok(Stop::Established) => break,
            Ok(Stop::Closed) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Err(e) => {
                session.fail(&tcp);
                return Err(e);
            }
        }
        // Our flight first: the client answers it.
        write_out(&mut session, &tcp).await?;
        loop {
            match session.read_kernel(&tcp) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => tcp.readable().await?,
                Err(e) => return Err(e),
            }
        }
    }
    // The last of the handshake (TLS 1.3 session tickets) goes now, so that the connection starts
    // with nothing pending.
    write_out(&mut session, &tcp).await?;
    session.incoming.shrink_to_fit();
    Ok(TlsSocket { tcp, tls: Mutex::new(session) })
}

/// Write all of `outgoing`, waiting for writability as needed.
async fn write_out(session: &mut Session, tcp: &TcpStream) -> io::Result<()> {
    loop {
        match session.flush(tcp) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => tcp.writable().await?,
            Err(e) => return Err(e),
        }
    }
}

impl TlsSocket {
    fn session(&self) -> MutexGuard<'_, Session> {
        // A poisoned lock means a panic in rustls mid-call on this connection's own task, which
        // ended that task; the session is not used after it. Still usable for a best-effort close.
        self.tls.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Socket for TlsSocket {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        {
            let tls = self.session();
            if tls.has_plaintext() || tls.peer_closed || tls.failed {
                // `try_read` reports it now.
                return Poll::Ready(Ok(()));
            }
        }
        self.tcp.poll_read_ready(cx)
    }

    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut tls = self.session();
        loop {
            if tls.has_plaintext() {
                return Ok(tls.take_plaintext(buf));
            }
            if tls.failed {
                return Err(rustls_error("TLS session failed"));
            }
            if tls.peer_closed {
                // The client's close_notify: a clean end.
                return Ok(0);
            }
            // Decrypt what was read (during the handshake, or below).
            if let Err(e) = tls.process(Want::Nothing) {
                tls.fail(&self.tcp);
                return Err(e);
            }
            if tls.pending_output() {
                // What rustls queued while reading: sent if the kernel takes it now, else before the
                // next write. (The answer to a client's key update is queued inside rustls and goes
                // ahead of the next application data record, in either rustls API.)
                let _ = tls.flush(&self.tcp);
            }
            if tls.has_plaintext() || tls.peer_closed {
                continue;
            }
            // Nothing decrypted yet: more TLS bytes from the kernel. Its WouldBlock (a partial record
            // waits in `incoming`) clears the readiness, as for a plain socket.
            if tls.read_kernel(&self.tcp)? == 0 {
                // The TCP stream ended without close_notify (possibly mid-record).
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp.poll_write_ready(cx)
    }

    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        let mut tls = self.session();
        if tls.failed {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        // Nothing new while a record still waits: the kernel sets the pace, as for plain TCP.
        tls.flush(&self.tcp)?;
        let mut taken = 0;
        while taken < buf.len() {
            let end = buf.len().min(taken + RECORD);
            match tls.process(Want::Encrypt(&buf[taken..end])) {
                Ok(Stop::Established) => taken = end,
                // Both sides closed (or, not reached, the handshake again): nothing more is sent.
                Ok(_) => return Err(io::ErrorKind::BrokenPipe.into()),
                Err(e) => {
                    tls.fail(&self.tcp);
                    return Err(e);
                }
            }
            match tls.flush(&self.tcp) {
                Ok(()) => {}
                // Taken, but its record waits: `pending_output`, flushed before the next batch.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(taken)
    }

    fn pending_output(&self) -> bool {
        self.session().pending_output()
    }

    fn try_flush(&self) -> io::Result<()> {
        self.session().flush(&self.tcp)
    }

    fn close(&self) {
        let mut tls = self.session();
        if !tls.failed && tls.process(Want::CloseNotify).is_ok() {
            let _ = tls.flush(&self.tcp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A self-signed ECDSA P-256 certificate for `localhost` (rcgen, valid until 4096) and its key.
    const TEST_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBXzCCAQSgAwIBAgIUQekEd8RcGy2ftG0G3hAqEctkJj0wCgYIKoZIzj0EAwIw
ITEfMB0GA1UEAwwWcmNnZW4gc2VsZiBzaWduZWQgY2VydDAgFw03NTAxMDEwMDAw
MDBaGA80MDk2MDEwMTAwMDAwMFowITEfMB0GA1UEAwwWcmNnZW4gc2VsZiBzaWdu
ZWQgY2VydDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABE98DHGJWf4BTOHO2Ovk
Kb6w+n9QTcAWBXCqFM7YyKZDnAXLQCKH7wtj/O1uYlv0xOo8kKMoMq8p+VQGij2P
snCjGDAWMBQGA1UdEQQNMAuCCWxvY2FsaG9zdDAKBggqhkjOPQQDAgNJADBGAiEA
l0NJZ47k8Ftn+s/BNMA4vj15DGCLFskOeqpB0ldBWWgCIQD/M+9HdLJrBu8mmV0g
ES5nq2iqI/Pj55yZtlf5UxNWWQ==
-----END CERTIFICATE-----
";
    const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgOZRHkKY6xgBj6Gb5
Ejr/XVsIkUBjcGSnijDNmXriVl+hRANCAARPfAxxiVn+AUzhztjr5Cm+sPp/UE3A
FgVwqhTO2MimQ5wFy0Aih+8LY/ztbmJb9MTqPJCjKDKvKflUBoo9j7Jw
-----END PRIVATE KEY-----
";

    /// The server configuration from the test PEMs, and a client trusting only that certificate.
    fn configs(tag: &str) -> (Arc<rustls::ServerConfig>, tokio_rustls::TlsConnector) {
        let dir = std::env::temp_dir().join(format!("goim-edge-tls-unit-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, TEST_CERT).unwrap();
        std::fs::write(&key, TEST_KEY).unwrap();
        let server = server_config(&cert, &key).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(TEST_CERT.as_bytes()).unwrap()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (server, tokio_rustls::TlsConnector::from(Arc::new(client)))
    }

    /// Read as the connection loop does: wait for readiness, then `try_read` until it gives bytes.
    async fn read(socket: &TlsSocket, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            poll_fn(|cx| socket.poll_read_ready(cx)).await?;
            match socket.try_read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return other,
            }
        }
    }

    /// What an idle connection must not hold: any buffer of its own.
    fn assert_idle(socket: &TlsSocket, when: &str) {
        assert!(matches!(socket.try_read(&mut [0u8; 64]), Err(e) if e.kind() == io::ErrorKind::WouldBlock), "{when}: nothing to read");
        assert!(!socket.pending_output(), "{when}: nothing to write");
        let s = socket.session();
        let held = (s.incoming.capacity(), s.plaintext.capacity(), s.outgoing.capacity());
        assert_eq!(held, (0, 0, 0), "{when}: buffers (incoming, plaintext, outgoing) held while idle");
    }

    #[tokio::test]
    async fn traffic_both_ways_then_idle_holds_no_buffer() {
        let (server, connector) = configs("idle");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Larger than a record (16 KiB) and than the loop's read chunk (4 KiB), both ways.
        let big: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let sent = big.clone();
        // The client closes only once the server has looked at its idle state.
        let (checked, may_close) = tokio::sync::oneshot::channel::<()>();
        let client = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let mut tls = connector.connect(rustls_pki_types::ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
            tls.write_all(&sent).await.unwrap();
            tls.flush().await.unwrap();
            let mut echoed = vec![0u8; sent.len()];
            tls.read_exact(&mut echoed).await.unwrap();
            assert!(echoed == sent, "the echo differs");
            may_close.await.unwrap();
            // close_notify, then the end of the stream.
            tls.shutdown().await.unwrap();
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let socket = accept(tcp, server).await.unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while got.len() < big.len() {
            let n = read(&socket, &mut chunk).await.unwrap();
            assert!(n > 0, "end of stream after {} bytes", got.len());
            got.extend_from_slice(&chunk[..n]);
        }
        assert!(got == big, "the bytes read differ");
        assert_idle(&socket, "after reading");
        crate::transport::socket::write_all(&socket, &big).await.unwrap();
        assert_idle(&socket, "after writing");
        checked.send(()).unwrap();
        // The client's close_notify: a clean end.
        assert_eq!(read(&socket, &mut chunk).await.unwrap(), 0);
        socket.close();
        client.await.unwrap();
    }

    #[tokio::test]
    async fn plaintext_instead_of_a_client_hello_is_refused() {
        let (server, _) = configs("refused");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
            let mut answer = Vec::new();
            let _ = tcp.read_to_end(&mut answer).await;
            answer
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let e = accept(tcp, server).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        // The dropped socket closes; at most a TLS alert record (content type 21) came before.
        let answer = client.await.unwrap();
        assert!(answer.is_empty() || answer[0] == 21, "answered {answer:?}");
    }

    #[test]
    fn missing_files_are_named() {
        let e = server_config(Path::new("/nonexistent/cert.pem"), Path::new("/nonexistent/key.pem")).unwrap_err().to_string();
        assert!(e.contains("tls.cert_path /nonexistent/cert.pem"), "{e}");
    }

    #[test]
    fn a_file_without_pem_is_refused() {
        let dir = std::env::temp_dir().join(format!("goim-edge-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let e = server_config(&junk, &junk).unwrap_err().to_string();
        assert!(e.contains("tls.cert_path") && e.contains("no PEM certificate"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
