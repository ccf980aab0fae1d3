//! HTTPS for the mini-mesh: a server outside the mesh (an address no Service has, a name
//! only the cluster's DNS knows) and the client side of it, with a self-signed certificate
//! the client is given as its only trust anchor.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use http_body_util::{Empty, Full};
use hyper::body::Bytes;
use hyper::header::{HeaderValue, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::client::{exchange_http1, Response, BACKEND_HEADER, REQUEST_TIMEOUT};

/// An HTTPS server answering every request with 200 and `x-backend: <name>`; stops when
/// dropped.
#[derive(Debug)]
pub struct HttpsServer {
    /// The certificate (PEM): what a client trusts.
    pub cert_pem: String,
    task: JoinHandle<()>,
}

impl HttpsServer {
    /// Serves on `addr` with a self-signed certificate for `dns_name`.
    pub async fn start(name: &str, dns_name: &str, addr: SocketAddr) -> Result<HttpsServer> {
        let key = rcgen::KeyPair::generate()?;
        let cert = rcgen::CertificateParams::new(vec![dns_name.to_string()])?.self_signed(&key)?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| anyhow!("{e}"))?,
        )?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the HTTPS server on {addr}"))?;
        let name: Arc<str> = name.into();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, name) = (acceptor.clone(), name.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |_req| {
                        let resp = hyper::Response::builder()
                            .header(BACKEND_HEADER, &*name)
                            .body(Full::new(Bytes::from(name.to_string())));
                        async move { resp }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Ok(HttpsServer {
            cert_pem: cert.pem(),
            task,
        })
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A GET over TLS on a fresh connection to `dest`, verifying the server as `host` against
/// the certificates in `ca_file` only.
pub async fn https_get(
    dest: SocketAddr,
    host: &str,
    path: &str,
    ca_file: &Path,
) -> Result<Response> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file)
        .with_context(|| format!("reading {}", ca_file.display()))?
    {
        roots.add(cert.map_err(|e| anyhow!("{}: {e}", ca_file.display()))?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let server_name = ServerName::try_from(host.to_string())?;
    let req = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(HOST, HeaderValue::from_str(host)?)
        .body(Empty::<Bytes>::new())?;
    tokio::time::timeout(REQUEST_TIMEOUT, async move {
        let tcp = tokio::net::TcpStream::connect(dest).await?;
        let tls = connector.connect(server_name, tcp).await?;
        exchange_http1(tls, req).await
    })
    .await
    .map_err(|_| anyhow!("timed out after {REQUEST_TIMEOUT:?}"))?
    .with_context(|| format!("GET https://{host}{path} via {dest}"))
}
