//! In-process upstream servers: each answers every request with 200, body = its name and
//! header `x-backend: <name>`. Naming a backend after its Envoy cluster tells the test which
//! cluster served a request (a weighted route picks one at random). The Host the request
//! arrived with comes back in `x-request-host`.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::client::{BACKEND_HEADER, REQUEST_HOST_HEADER, REQUEST_XFCC_HEADER};

/// A running backend; stops accepting when dropped.
#[derive(Debug)]
pub struct Backend {
    name: String,
    addr: SocketAddr,
    served: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Backend {
    /// Binds 127.0.0.1:0 and serves on the current tokio runtime.
    pub async fn start(name: &str) -> Result<Backend> {
        Self::start_on(name, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Binds `addr` (a mini-mesh app listens on 0.0.0.0 in its pod's network namespace).
    pub async fn start_on(name: &str, addr: SocketAddr) -> Result<Backend> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding backend {name} on {addr}"))?;
        let addr = listener.local_addr()?;
        let served = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(serve(listener, name.to_string(), served.clone()));
        Ok(Backend {
            name: name.to_string(),
            addr,
            served,
            task,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, name: String, served: Arc<AtomicU64>) {
    let name: Arc<str> = name.into();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // e.g. out of file descriptors: back off instead of spinning.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let name = name.clone();
        let served = served.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            served.fetch_add(1, Ordering::Relaxed);
            let host = req
                .headers()
                .get(hyper::header::HOST)
                .cloned()
                .unwrap_or(hyper::header::HeaderValue::from_static(""));
            let xfcc = req
                .headers()
                .get("x-forwarded-client-cert")
                .cloned()
                .unwrap_or(hyper::header::HeaderValue::from_static(""));
            let resp = Response::builder()
                .header(BACKEND_HEADER, &*name)
                .header(REQUEST_HOST_HEADER, host)
                .header(REQUEST_XFCC_HEADER, xfcc)
                .header("content-type", "text/plain")
                .body(Full::new(Bytes::from(name.to_string())))
                .map_err(|e| e.to_string());
            async move { Ok::<_, Infallible>(resp.unwrap_or_else(|e| Response::new(Full::from(e)))) }
        });
        // Envoy keeps upstream connections alive; each one gets its own task.
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
