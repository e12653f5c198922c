//! The gRPC listener: plain TCP and TLS on one port, and the checks every API request passes.
//!
//! Each connection's first byte tells a TLS handshake (0x16) from plain HTTP/2. With TLS
//! configured, plain connections are still accepted so that the kubelet's gRPC health probe
//! (which cannot speak TLS) works, but the agent API answers them `UNAUTHENTICATED`: a client
//! that forgot TLS gets a clear status instead of a broken connection. With a client CA, a
//! client must also present a certificate it signed, else `UNAUTHENTICATED` too.
//!
//! The bearer token (`authorization: Bearer TOKEN`) is compared in constant time; neither it nor
//! the token a client sent is ever logged.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use zeroize::Zeroizing;

use super::error::Error;
use super::metrics::Metrics;

/// How long a client may take to send its first byte and finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS material, as PEM.
#[derive(Clone)]
pub struct TlsSettings {
    /// The server's certificate chain.
    pub cert_pem: Vec<u8>,
    /// The server's private key. Secret.
    pub key_pem: Zeroizing<Vec<u8>>,
    /// CA whose signature client certificates must carry; `None`: no client certificates.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings").field("client_ca", &self.client_ca_pem.is_some()).finish_non_exhaustive()
    }
}

/// TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// The PEM holds nothing usable.
    #[error("invalid TLS {what}: {reason}")]
    Invalid {
        /// certificate, key or client CA.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

impl TlsSettings {
    /// Reads the certificate, key and optional client CA from (mounted) files.
    pub fn from_files(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, TlsError> {
        let read =
            |p: &Path| std::fs::read(p).map_err(|source| TlsError::Read { path: p.display().to_string(), source });
        Ok(TlsSettings {
            cert_pem: read(cert)?,
            key_pem: Zeroizing::new(read(key)?),
            client_ca_pem: client_ca.map(read).transpose()?,
        })
    }

    /// The rustls server configuration (ring, TLS 1.2 and 1.3, ALPN h2).
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let invalid = |what, reason: String| TlsError::Invalid { what, reason };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| invalid("certificate", e.to_string()))?;
        if certs.is_empty() {
            return Err(invalid("certificate", "no certificate in the PEM".into()));
        }
        // The key's parse error says nothing of the key itself.
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(|e| invalid("key", e.to_string()))?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("configuration", e.to_string()))?;
        let builder = match &self.client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(pem) {
                    roots
                        .add(c.map_err(|e| invalid("client CA", e.to_string()))?)
                        .map_err(|e| invalid("client CA", e.to_string()))?;
                }
                // Anonymous clients finish the handshake and are refused per request, with a
                // gRPC status rather than a broken connection.
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| invalid("client CA", e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config =
            builder.with_single_cert(certs, key).map_err(|e| invalid("certificate or key", e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// What the API knows of a request's connection (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The peer.
    pub remote: Option<SocketAddr>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// Whether the client presented a certificate the client CA verified.
    pub client_cert: bool,
}

/// An accepted connection.
#[derive(Debug)]
pub enum Conn {
    /// Plain TCP.
    Plain(TcpStream, ConnInfo),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>, ConnInfo),
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        match self {
            Conn::Plain(_, i) | Conn::Tls(_, i) => *i,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s, _) => s.is_write_vectored(),
            Conn::Tls(s, _) => s.is_write_vectored(),
        }
    }
}

/// Accepts connections until the returned stream is dropped; handshakes run concurrently, and
/// a connection that fails its handshake is dropped (logged at debug level).
pub fn incoming(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Conn>>(32);
    tokio::spawn(async move {
        loop {
            let (stream, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let _ = stream.set_nodelay(true);
            let (tx, tls) = (tx.clone(), tls.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept(stream, remote, tls)).await {
                    Ok(Ok(conn)) => {
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %remote, error = %e, "connection dropped before the first request")
                    }
                    Err(_) => tracing::debug!(peer = %remote, "connection dropped: no handshake in time"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn accept(stream: TcpStream, remote: SocketAddr, tls: Option<TlsAcceptor>) -> io::Result<Conn> {
    let plain = ConnInfo { remote: Some(remote), tls: false, client_cert: false };
    let Some(tls) = tls else { return Ok(Conn::Plain(stream, plain)) };
    let mut first = [0u8; 1];
    let n = stream.peek(&mut first).await?;
    if n == 0 || first[0] != 0x16 {
        return Ok(Conn::Plain(stream, plain));
    }
    let s = tls.accept(stream).await?;
    let client_cert = s.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
    Ok(Conn::Tls(Box::new(s), ConnInfo { remote: Some(remote), tls: true, client_cert }))
}

/// The checks every API request passes: TLS when configured, a client certificate when a
/// client CA is configured, the bearer token when one is configured.
#[derive(Clone)]
pub struct Auth {
    /// The token callers must present. Secret.
    pub token: Option<Arc<Zeroizing<String>>>,
    /// Refuse plain connections.
    pub require_tls: bool,
    /// Refuse TLS connections without a verified client certificate.
    pub require_client_cert: bool,
    /// Where refusals are counted.
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("token", &self.token.is_some())
            .field("require_tls", &self.require_tls)
            .field("require_client_cert", &self.require_client_cert)
            .finish()
    }
}

/// Equality that takes the same time wherever the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    /// Checks a request; the error says what is missing, never what was sent.
    pub fn check<T>(&self, req: &tonic::Request<T>) -> Result<(), Error> {
        let info = req.extensions().get::<ConnInfo>().copied();
        let refuse = |why: &'static str| {
            self.metrics.rejected("unauthenticated");
            tracing::warn!(peer = ?info.and_then(|i| i.remote), reason = why, "request refused");
            Err(Error::Unauthenticated(why))
        };
        if self.require_tls && !info.is_some_and(|i| i.tls) {
            return refuse("this agent accepts requests only over TLS");
        }
        if self.require_client_cert && !info.is_some_and(|i| i.client_cert) {
            return refuse("a client certificate signed by the agent's client CA is required");
        }
        if let Some(token) = &self.token {
            let sent = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
            match sent {
                None => return refuse("missing bearer token (authorization: Bearer TOKEN)"),
                Some(s) if !constant_time_eq(s.trim().as_bytes(), token.as_bytes()) => {
                    return refuse("wrong bearer token");
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        self.check(&req)?;
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
