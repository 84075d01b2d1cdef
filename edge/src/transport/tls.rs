//! TLS for the goim transports (WSS and goim over TLS-TCP): the server configuration loaded from the
//! PEM files of `[tls]`, and [`TlsSocket`], the [`Socket`] the connection loop drives once the
//! handshake is done.
//!
//! Why sans-IO rather than `tokio_rustls::TlsStream` all the way: the connection loop is
//! readiness-based (no read or write buffer held while a connection idles, one task, reader and
//! writer side by side) and its backpressure relies on "the socket took n bytes, the rest waits in
//! the outbox, which closes a slow consumer at its byte bound". An `AsyncRead + AsyncWrite` stream
//! would need a second loop (and its buffers). So the handshake runs up front with
//! `tokio_rustls::TlsAcceptor` (in the accept task, under the handshake timeout, as the WebSocket
//! upgrade does), and its `into_inner()` gives back the `TcpStream` and the `ServerConnection`,
//! which [`TlsSocket`] drives itself:
//!
//! - read: TLS bytes from the kernel → `process_new_packets` → plaintext out; `WouldBlock` only
//!   once the kernel said so (a partial record waits inside rustls), so the readiness the loop polls
//!   is cleared exactly as for a plain socket. Plaintext rustls still holds (a record larger than the
//!   loop's read chunk) makes [`Socket::poll_read_ready`] ready at once.
//! - write: plaintext is taken only while no ciphertext is waiting, in chunks of one TLS record,
//!   each encrypted and handed to the kernel at once; what the kernel does not take stays inside
//!   rustls (at most one record, ~16 KiB) and is [`Socket::pending_output`], which the write loop
//!   flushes before it takes the next batch. So a client that stops reading makes the writes stop
//!   and the outbox fill up, and it is closed as `slow_consumer` as over plain TCP: rustls never
//!   buffers more than that one record for it.
//!
//! The session sits behind a `std::sync::Mutex`: the reader and the writer run in the same task,
//! so the lock is never contended (it only makes the `&self` socket API possible).

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use rustls::ServerConnection;
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
    tls: Mutex<ServerConnection>,
}

impl std::fmt::Debug for TlsSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSocket").field("tcp", &self.tcp).finish_non_exhaustive()
    }
}

/// `std::io` over the non-blocking `TcpStream`, for rustls's `read_tls`/`write_tls`.
struct Kernel<'a>(&'a TcpStream);

impl Read for Kernel<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for Kernel<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TlsSocket {
    /// The parts of a completed `tokio_rustls` server handshake (`TlsStream::into_inner`); whatever
    /// the client sent after its Finished is inside the session and is read first.
    pub fn new(tcp: TcpStream, tls: ServerConnection) -> TlsSocket {
        TlsSocket { tcp, tls: Mutex::new(tls) }
    }

    fn session(&self) -> MutexGuard<'_, ServerConnection> {
        // A poisoned lock means a panic in rustls mid-call on this connection's own task, which
        // ended that task; the session is not used after it. Still usable for a best-effort close.
        self.tls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hand the session's ciphertext to the kernel: `WouldBlock` if some of it must wait.
    fn flush(&self, tls: &mut ServerConnection) -> io::Result<()> {
        while tls.wants_write() {
            if tls.write_tls(&mut Kernel(&self.tcp))? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }

    /// Send what the session produced while reading (an alert, a key update), if the kernel takes
    /// it now; otherwise it goes with the next write.
    fn flush_opportunistically(&self, tls: &mut ServerConnection) {
        let _ = self.flush(tls);
    }
}

impl Socket for TlsSocket {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        {
            let mut tls = self.session();
            // Cheap without new bytes; also processes records read during the handshake.
            match tls.process_new_packets() {
                Ok(state) if state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed() => {}
                // Plaintext, the client's close_notify, or an error: `try_read` reports it now.
                _ => return Poll::Ready(Ok(())),
            }
        }
        self.tcp.poll_read_ready(cx)
    }

    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut tls = self.session();
        loop {
            // Decrypt what was read (during the handshake, or below). An error stays the session's
            // state: reported every time, so a readiness `poll_read_ready` keeps reporting for it
            // ends the connection instead of spinning.
            let processed = tls.process_new_packets();
            if tls.wants_write() {
                // An alert for the error, or an answer to a key update.
                self.flush_opportunistically(&mut tls);
            }
            if let Err(e) = processed {
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            match tls.reader().read(buf) {
                // Plaintext, or Ok(0): the client's close_notify (a clean end).
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // UnexpectedEof: the TCP stream ended without close_notify.
                Err(e) => return Err(e),
            }
            // Nothing decrypted yet: more TLS bytes from the kernel. Its WouldBlock (a partial record
            // waits inside rustls) clears the readiness, as for a plain socket.
            if tls.read_tls(&mut Kernel(&self.tcp))? == 0 {
                // End of the TCP stream: the reader says how (close_notify or not), never "later".
                if let Err(e) = tls.process_new_packets() {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
                return match tls.reader().read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                    other => other,
                };
            }
        }
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp.poll_write_ready(cx)
    }

    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        let mut tls = self.session();
        // Nothing new while a record still waits: the kernel sets the pace, as for plain TCP.
        self.flush(&mut tls)?;
        let mut taken = 0;
        while taken < buf.len() {
            let end = buf.len().min(taken + RECORD);
            let n = tls.writer().write(&buf[taken..end])?;
            if n == 0 {
                // rustls's own buffer limit (not reached: at most one record waits).
                break;
            }
            taken += n;
            match self.flush(&mut tls) {
                Ok(()) => {}
                // Taken, but its record waits: `pending_output`, flushed before the next batch.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if taken == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }

    fn pending_output(&self) -> bool {
        self.session().wants_write()
    }

    fn try_flush(&self) -> io::Result<()> {
        let mut tls = self.session();
        self.flush(&mut tls)
    }

    fn close(&self) {
        let mut tls = self.session();
        tls.send_close_notify();
        self.flush_opportunistically(&mut tls);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
