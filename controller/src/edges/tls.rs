//! `--edge-auth mtls`: the gRPC listener speaks TLS with client certificates. The chain
//! is verified against `--edge-client-ca` during the handshake (a certificate from another
//! CA fails it); a connection without a client certificate is let through the handshake
//! so its stream can be refused with a status that says why ([`super::auth`]). Which
//! identity the certificate carries (its URI SANs) is the stream's check.
//!
//! Handshakes run in tasks of their own, so a slow one never holds up `accept`; each is
//! bounded by the connection's handshake timeout ([`super::listen`]).

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::auth::Refusal;
use super::listen::{self, Conn, ConnInfo, ConnLimits, LimitLogs};
use crate::counters::Counters;

/// The files of `--edge-auth mtls`.
#[derive(Debug, Clone, Copy)]
pub struct TlsFiles<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    pub client_ca: &'a Path,
}

/// The server's TLS configuration: its certificate chain and key, client certificates
/// from `client_ca` (optional at the handshake), ALPN `h2` (gRPC).
pub fn server_config(files: TlsFiles<'_>) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let read_certs = |path: &Path, flag: &str| -> Result<Vec<CertificateDer<'static>>, String> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{flag} {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "{flag} {}: no PEM certificate in it",
                path.display()
            ));
        }
        Ok(certs)
    };
    let chain = read_certs(files.cert, "--edge-tls-cert")?;
    let key = PrivateKeyDer::from_pem_file(files.key)
        .map_err(|e| format!("--edge-tls-key {}: {e}", files.key.display()))?;
    let mut roots = RootCertStore::empty();
    for ca in read_certs(files.client_ca, "--edge-client-ca")? {
        roots
            .add(ca)
            .map_err(|e| format!("--edge-client-ca {}: {e}", files.client_ca.display()))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("--edge-client-ca {}: {e}", files.client_ca.display()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            format!(
                "--edge-tls-cert {} / --edge-tls-key {}: {e}",
                files.cert.display(),
                files.key.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The URI SANs of a DER certificate (none when it does not parse or has none).
pub fn uri_sans(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some((*uri).to_string()),
            _ => None,
        })
        .collect()
}

/// A TLS connection, its handshake done.
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<Conn>,
    info: ConnInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// [`listen::incoming`], each connection through a TLS handshake (in a task of its own)
/// before tonic sees it. A failed handshake is counted as an auth refusal
/// (`tls_handshake`) and logged, rate-limited.
pub fn incoming(
    listener: TcpListener,
    limits: ConnLimits,
    counters: Arc<Counters>,
    logs: Arc<LimitLogs>,
    config: Arc<ServerConfig>,
) -> impl Stream<Item = Result<TlsConn, io::Error>> + Send + 'static {
    let acceptor = TlsAcceptor::from(config);
    let (tx, rx) = mpsc::channel::<TlsConn>(64);
    let plain = listen::incoming(listener, limits, counters.clone(), logs.clone());
    tokio::spawn(async move {
        let mut plain = std::pin::pin!(plain);
        loop {
            // The server stopped (the receiver is gone): stop accepting.
            let conn = tokio::select! {
                () = tx.closed() => return,
                next = plain.next() => match next {
                    Some(Ok(conn)) => conn,
                    _ => return,
                },
            };
            let (tx, acceptor) = (tx.clone(), acceptor.clone());
            let (counters, logs) = (counters.clone(), logs.clone());
            tokio::spawn(async move {
                let info = conn.info.clone();
                match acceptor.accept(conn).await {
                    Ok(stream) => {
                        let uris = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|certs| certs.first())
                            .map(|leaf| uri_sans(leaf.as_ref()))
                            .unwrap_or_default();
                        let info = info.with_client_cert_uris(uris);
                        let _ = tx.send(TlsConn { stream, info }).await;
                    }
                    Err(error) => {
                        counters.auth_refused(Refusal::TLS_HANDSHAKE);
                        if let Some(unlogged) = logs.tls_handshake.hit() {
                            tracing::warn!(
                                peer = %info.peer, unlogged, %error,
                                "gRPC TLS handshake failed (--edge-auth mtls: a client \
                                 certificate from --edge-client-ca is needed)"
                            );
                        }
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx).map(Ok)
}
