//! HTTP/1.1 client whose connections come from a chosen 127.0.0.x source address, so one
//! test process can pose as many workloads (the gateway sees a distinct source IP each).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::{HeaderMap, HeaderValue, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Per-request time limit (connect + response).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The response header each test backend sets to its own name (= its Envoy cluster).
pub const BACKEND_HEADER: &str = "x-backend";
/// The response header each test backend sets to the Host its request arrived with.
pub const REQUEST_HOST_HEADER: &str = "x-request-host";
/// The response header each test backend sets to the `x-forwarded-client-cert` its request
/// arrived with (in the mini-mesh: the caller's identity, as its sidecar's inbound saw it).
pub const REQUEST_XFCC_HEADER: &str = "x-request-xfcc";

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The backend that served this request (absent for Envoy's own responses).
    pub fn backend(&self) -> Option<&str> {
        self.header(BACKEND_HEADER)
    }

    /// The Host the backend saw (after the gateway's rewrite, if any).
    pub fn request_host(&self) -> Option<&str> {
        self.header(REQUEST_HOST_HEADER)
    }
}

/// One request on a fresh connection from `source` to `127.0.0.1:port` with `Host: host`.
pub async fn request(source: Ipv4Addr, port: u16, host: &str, path: &str) -> Result<Response> {
    send(
        IpAddr::V4(source),
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Method::GET,
        host,
        path,
    )
    .await
    .with_context(|| format!("GET http://{host}{path} from {source} via 127.0.0.1:{port}"))
}

/// A GET to a local admin/debug endpoint (Envoy admin, controller HTTP).
pub async fn get(port: u16, path: &str) -> Result<Response> {
    local(Method::GET, port, path).await
}

/// A POST with an empty body to a local admin endpoint.
pub async fn post(port: u16, path: &str) -> Result<Response> {
    local(Method::POST, port, path).await
}

async fn local(method: Method, port: u16, path: &str) -> Result<Response> {
    let host = format!("127.0.0.1:{port}");
    send(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        method.clone(),
        &host,
        path,
    )
    .await
    .with_context(|| format!("{method} http://{host}{path}"))
}

/// 198.18.0.0/15 (RFC 2544 benchmarking): the mini-mesh's pod, Service and bridge addresses.
pub fn is_test_range(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    a == 198 && (b & 0xfe) == 18
}

/// One request on a fresh connection to `dest` with `Host: host`, from whatever address the
/// kernel picks: what a workload in a mini-mesh pod sends (its sidecar captures it).
/// Refuses any destination outside loopback and 198.18.0.0/15.
pub async fn request_to(dest: SocketAddr, host: &str, path: &str) -> Result<Response> {
    let allowed = match dest.ip() {
        IpAddr::V4(v4) => v4.is_loopback() || is_test_range(v4),
        IpAddr::V6(_) => false,
    };
    if !allowed {
        return Err(anyhow!(
            "refusing traffic to {dest}: outside the tests' ranges"
        ));
    }
    let req = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(HOST, HeaderValue::from_bytes(host.as_bytes())?)
        .body(Empty::<Bytes>::new())?;
    tokio::time::timeout(REQUEST_TIMEOUT, async move {
        let stream = tokio::net::TcpStream::connect(dest).await?;
        exchange_http1(stream, req).await
    })
    .await
    .map_err(|_| anyhow!("timed out after {REQUEST_TIMEOUT:?}"))?
    .with_context(|| format!("GET http://{host}{path} via {dest}"))
}

async fn send(
    source: IpAddr,
    dest: SocketAddr,
    method: Method,
    host: &str,
    path: &str,
) -> Result<Response> {
    // Loopback only, by construction: never send anything off this machine.
    if !dest.ip().is_loopback() || !source.is_loopback() {
        return Err(anyhow!("refusing non-loopback traffic {source} -> {dest}"));
    }
    // Raw bytes: tests also send Host values that are not ASCII.
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, HeaderValue::from_bytes(host.as_bytes())?)
        .body(Empty::<Bytes>::new())?;
    tokio::time::timeout(REQUEST_TIMEOUT, async move {
        let socket = TcpSocket::new_v4()?;
        // Short-lived connections from a handful of source IPs: let bind reuse TIME_WAIT ports.
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::new(source, 0))?;
        let stream = socket.connect(dest).await?;
        exchange_http1(stream, req).await
    })
    .await
    .map_err(|_| anyhow!("timed out after {REQUEST_TIMEOUT:?}"))?
}

/// One HTTP/1.1 request and its whole response on an open connection (plain or TLS),
/// which is closed after.
pub(crate) async fn exchange_http1<S>(io: S, req: Request<Empty<Bytes>>) -> Result<Response>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let exchange = async move {
        let resp = sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        // Dropping the sender lets `conn` close the connection and finish.
        drop(sender);
        Ok::<_, anyhow::Error>(Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    let (resp, _conn) = tokio::join!(exchange, conn);
    resp
}

/// One HTTP/2 request without TLS (h2c, prior knowledge) on a fresh connection from `source`
/// to `127.0.0.1:port`, with `:authority` = `authority`.
pub async fn request_h2c(
    source: Ipv4Addr,
    port: u16,
    authority: &str,
    path: &str,
) -> Result<Response> {
    let dest = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let req = Request::builder()
        .method(Method::GET)
        .uri(format!("http://{authority}{path}"))
        .body(Empty::<Bytes>::new())?;
    tokio::time::timeout(REQUEST_TIMEOUT, async move {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
        let stream = socket.connect(dest).await?;
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await?;
        let conn = tokio::spawn(conn);
        let resp = sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        drop(sender);
        conn.abort();
        Ok::<_, anyhow::Error>(Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    })
    .await
    .map_err(|_| anyhow!("timed out after {REQUEST_TIMEOUT:?}"))?
    .with_context(|| format!("h2c GET http://{authority}{path} from {source} via {dest}"))
}

/// One request of a load run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub source: Ipv4Addr,
    pub host: String,
    pub path: String,
}

impl Planned {
    pub fn new(source: Ipv4Addr, host: &str) -> Planned {
        Planned {
            source,
            host: host.to_string(),
            path: "/".to_string(),
        }
    }
}

/// What happened to one planned request.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub source: Ipv4Addr,
    pub host: String,
    /// None when the request failed (error) or was not sent before the deadline.
    pub status: Option<u16>,
    /// The `x-backend` response header: the cluster that served the request.
    pub backend: Option<String>,
    pub error: Option<String>,
    /// When the response was complete.
    pub done_at: Option<Instant>,
}

/// Sends `plan` to the gateway on `port`, at most `concurrency` at a time; requests not started
/// within `budget` are reported as not sent. Outcomes are in plan order.
pub async fn run_load(
    port: u16,
    plan: &[Planned],
    concurrency: usize,
    budget: Duration,
) -> Vec<Outcome> {
    let deadline = tokio::time::Instant::now() + budget;
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for (i, p) in plan.iter().cloned().enumerate() {
        let permits = permits.clone();
        tasks.spawn(async move {
            let outcome = match tokio::time::timeout_at(deadline, permits.acquire_owned()).await {
                Ok(Ok(_permit)) => {
                    let r = request(p.source, port, &p.host, &p.path).await;
                    outcome(&p, r)
                }
                _ => outcome(
                    &p,
                    Err(anyhow!("not sent: load budget of {budget:?} exhausted")),
                ),
            };
            (i, outcome)
        });
    }
    let mut out: Vec<Option<Outcome>> = vec![None; plan.len()];
    while let Some(joined) = tasks.join_next().await {
        if let Ok((i, o)) = joined {
            out[i] = Some(o);
        }
    }
    out.into_iter()
        .zip(plan)
        .map(|(o, p)| o.unwrap_or_else(|| outcome(p, Err(anyhow!("request task panicked")))))
        .collect()
}

fn outcome(p: &Planned, r: Result<Response>) -> Outcome {
    match r {
        Ok(resp) => Outcome {
            source: p.source,
            host: p.host.clone(),
            status: Some(resp.status),
            backend: resp.backend().map(str::to_string),
            error: None,
            done_at: Some(Instant::now()),
        },
        Err(e) => Outcome {
            source: p.source,
            host: p.host.clone(),
            status: None,
            backend: None,
            error: Some(format!("{e:#}")),
            done_at: None,
        },
    }
}

/// `127.0.0.{first}..=127.0.0.{last}`.
pub fn sources(first: u8, last: u8) -> Vec<Ipv4Addr> {
    (first..=last)
        .map(|d| Ipv4Addr::new(127, 0, 0, d))
        .collect()
}
