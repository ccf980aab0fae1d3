//! The debug and health HTTP server.
//!
//! - `GET /debug/edges`: learned edges and counters as JSON (the end-to-end tests read
//!   this; its shape is [`DebugEdges`]).
//! - `GET /debug/rejections`: rejected batches per reason.
//! - `GET /debug/deps`: learned dependencies per workload (when the index runs).
//! - `GET /debug/plan`: what the Kubernetes writer would change, and its metrics (`run
//!   --kube`; under `--dry-run` the whole plan, with diffs).
//! - `GET /metrics`: Prometheus text ([`crate::metrics`]).
//! - `GET /healthz`: `ok` while the process serves.
//! - `GET /readyz`: `ok`, or 503 with the reason this replica cannot do its job now
//!   ([`crate::ready`]).
//!
//! `/debug/*` shows every pod IP, learned dependency and plan: by default it answers only
//! peers on 127.0.0.1 or ::1 (`--debug-endpoints localhost`: `kubectl port-forward`
//! connects from there). Not 127.0.0.0/8: Istio's sidecar forwards inbound traffic from
//! 127.0.0.6 (`InboundPassthroughBindIpv4`), so anything reaching the pod through its
//! sidecar would pass a "loopback" check. `off` turns them off, `open` opens them to all.
//! The server is bounded like the gRPC one: at most `--max-http-connections`, and a
//! connection that has not sent a whole request head within
//! [`HTTP_HEADER_READ_TIMEOUT`] (also between keep-alive requests) is closed.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::counters::{Counters, CountersSnapshot};
use crate::edges::listen::LogEvery;
use crate::edges::StoredEdge;
use crate::ready::ReadyView;
use crate::sink::MemoryEdgeSink;

/// Read access to learned edges, for debugging.
pub trait EdgeView: Send + Sync + 'static {
    /// All edges, sorted by source IP, host, cluster, principal.
    fn edges(&self) -> Vec<StoredEdge>;
}

impl EdgeView for MemoryEdgeSink {
    fn edges(&self) -> Vec<StoredEdge> {
        self.snapshot()
    }
}

/// Read access to learned dependencies, for debugging.
pub trait DepsView: Send + Sync + 'static {
    /// Workloads with learned deps, sorted.
    fn deps(&self) -> Vec<WorkloadDeps>;
}

/// The writer's plan and metrics, as JSON.
pub trait PlanView: Send + Sync + 'static {
    fn plan(&self) -> serde_json::Value;
}

/// One workload's learned dependencies (an element of `GET /debug/deps`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadDeps {
    pub namespace: String,
    /// `Kind/name`.
    pub workload: String,
    /// Opted in: its Sidecar is scoped to these deps.
    pub enabled: bool,
    /// Host → last seen at the gateway (unix seconds).
    pub deps: std::collections::BTreeMap<String, u64>,
}

/// The body of `GET /debug/edges`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugEdges {
    pub edges: Vec<DebugEdge>,
    pub counters: CountersSnapshot,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugEdge {
    pub source_ip: IpAddr,
    pub host: Option<String>,
    pub cluster: String,
    pub principal: Option<String>,
    pub requests: u64,
    pub last_seen_unix_s: u64,
}

impl From<&StoredEdge> for DebugEdge {
    fn from(edge: &StoredEdge) -> Self {
        DebugEdge {
            source_ip: edge.source_ip,
            host: edge.host.as_deref().map(str::to_string),
            cluster: edge.cluster.to_string(),
            principal: edge.principal.as_deref().map(str::to_string),
            requests: edge.stats.requests,
            last_seen_unix_s: edge.stats.last_seen_unix_s,
        }
    }
}

/// What the HTTP server shows.
#[derive(Clone)]
pub struct Sources {
    pub edges: Arc<dyn EdgeView>,
    pub counters: Arc<Counters>,
    /// With the dependency index (file and Kubernetes mode).
    pub deps: Option<Arc<dyn DepsView>>,
    /// With the Kubernetes writer.
    pub plan: Option<Arc<dyn PlanView>>,
    /// Everything `/metrics` shows.
    pub metrics: Vec<Arc<dyn crate::metrics::MetricsSource>>,
    /// What `/readyz` asks (none: always ready, e.g. the bare edge sink).
    pub ready: Option<Arc<dyn ReadyView>>,
}

impl Sources {
    /// Edges and counters only (the bare edge sink).
    pub fn edges(edges: Arc<dyn EdgeView>, counters: Arc<Counters>) -> Self {
        Sources {
            edges,
            metrics: vec![counters.clone()],
            counters,
            deps: None,
            plan: None,
            ready: None,
        }
    }
}

type AppState = Sources;

pub fn router(sources: Sources) -> Router {
    Router::new()
        .route("/debug/edges", get(debug_edges))
        .route("/debug/rejections", get(debug_rejections))
        .route("/debug/deps", get(debug_deps))
        .route("/debug/plan", get(debug_plan))
        .route("/metrics", get(metrics))
        .route("/healthz", get(ok))
        .route("/readyz", get(readyz))
        .with_state(sources)
}

async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::render(&state.metrics),
    )
}

async fn debug_plan(
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, (axum::http::StatusCode, &'static str)> {
    match &state.plan {
        Some(plan) => Ok(Json(plan.plan())),
        None => Err((
            axum::http::StatusCode::NOT_FOUND,
            "no Kubernetes writer: run with --kube",
        )),
    }
}

async fn debug_deps(
    State(state): State<AppState>,
) -> Result<Json<Vec<WorkloadDeps>>, (axum::http::StatusCode, &'static str)> {
    match &state.deps {
        Some(deps) => Ok(Json(deps.deps())),
        None => Err((
            axum::http::StatusCode::NOT_FOUND,
            "no dependency index: run with --file",
        )),
    }
}

async fn debug_edges(State(state): State<AppState>) -> Json<DebugEdges> {
    let edges = state.edges.edges();
    Json(DebugEdges {
        edges: edges.iter().map(DebugEdge::from).collect(),
        counters: state.counters.snapshot(),
    })
}

async fn debug_rejections(
    State(state): State<AppState>,
) -> Json<std::collections::BTreeMap<&'static str, u64>> {
    Json(state.counters.rejected_by_reason().into_iter().collect())
}

async fn ok() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> (axum::http::StatusCode, String) {
    match state.ready.as_ref().map_or(Ok(()), |r| r.ready()) {
        Ok(()) => (axum::http::StatusCode::OK, "ok".into()),
        Err(reason) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

/// Who may read `/debug/*` (`--debug-endpoints`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DebugAccess {
    /// Only peers on 127.0.0.1 or ::1 (kubectl port-forward), not the sidecar's 127.0.0.6.
    Localhost,
    /// Anyone who reaches the HTTP port.
    Open,
    /// 404 for everyone.
    Off,
}

/// May `peer` read a `/debug/*` path? `Err` with the status and a body saying how to get it.
pub fn debug_allowed(
    access: DebugAccess,
    peer: Option<IpAddr>,
) -> Result<(), (StatusCode, &'static str)> {
    let local = peer.is_some_and(|ip| match ip {
        IpAddr::V4(v4) => v4 == Ipv4Addr::LOCALHOST,
        IpAddr::V6(v6) => {
            v6 == Ipv6Addr::LOCALHOST || v6.to_ipv4_mapped() == Some(Ipv4Addr::LOCALHOST)
        }
    });
    match access {
        DebugAccess::Open => Ok(()),
        DebugAccess::Localhost if local => Ok(()),
        DebugAccess::Localhost => Err((
            StatusCode::FORBIDDEN,
            "/debug/* answers only 127.0.0.1 and ::1 (--debug-endpoints localhost); use \
             kubectl port-forward, or --debug-endpoints open\n",
        )),
        DebugAccess::Off => Err((
            StatusCode::NOT_FOUND,
            "/debug/* is off (--debug-endpoints off)\n",
        )),
    }
}

/// Connections the HTTP server holds at once (probes, a Prometheus scrape, a port-forward).
pub const DEFAULT_MAX_HTTP_CONNECTIONS: usize = 64;
/// A connection must send a whole request head this soon after it opens or after its
/// last response (hyper's `header_read_timeout`, which also runs while a keep-alive
/// connection waits for its next request).
pub const HTTP_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP server's limits and who may read `/debug/*`.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub debug: DebugAccess,
}

/// Rate limits of the HTTP server's log lines.
#[derive(Debug, Default)]
struct HttpLogs {
    cap: LogEvery,
    accept: LogEvery,
}

/// Serves `router` on `listener` within `limits` until `stop` resolves, then lets open
/// connections finish their request.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    counters: Arc<Counters>,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let logs = Arc::new(HttpLogs::default());
    let (closing_tx, closing) = watch::channel(false);
    let mut stop = std::pin::pin!(stop);
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                if let Some(unlogged) = logs.accept.hit() {
                    tracing::warn!(%error, unlogged, "cannot accept HTTP connections; backing off");
                }
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(10);
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            counters
                .http_connections_refused_at_cap
                .fetch_add(1, Relaxed);
            if let Some(unlogged) = logs.cap.hit() {
                tracing::warn!(
                    %peer, unlogged, max = limits.max_connections,
                    "HTTP connection closed: --max-http-connections are open"
                );
            }
            continue;
        };
        let router = router.clone();
        let debug = limits.debug;
        let service = hyper::service::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                let router = router.clone();
                async move {
                    if request.uri().path().starts_with("/debug") {
                        if let Err((status, body)) = debug_allowed(debug, Some(peer.ip())) {
                            let mut response =
                                axum::response::Response::new(axum::body::Body::from(body));
                            *response.status_mut() = status;
                            return Ok::<_, std::convert::Infallible>(response);
                        }
                    }
                    request.extensions_mut().insert(ConnectInfo(peer));
                    use tower::ServiceExt;
                    router.oneshot(request).await
                }
            },
        );
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        let mut closing = closing.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let conn = builder.serve_connection(TokioIo::new(tcp), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = closing.wait_for(|c| *c) => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
    }
    let _ = closing_tx.send(true);
    // Until every connection has ended (the caller bounds the wait).
    let _ = slots
        .acquire_many(u32::try_from(limits.max_connections).unwrap_or(u32::MAX))
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_endpoints_answer_only_who_they_may() {
        let v4 = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let cases = [
            (DebugAccess::Localhost, v4("127.0.0.1"), true),
            (DebugAccess::Localhost, v4("::1"), true),
            (DebugAccess::Localhost, v4("::ffff:127.0.0.1"), true),
            // Istio's sidecar forwards inbound traffic from 127.0.0.6.
            (DebugAccess::Localhost, v4("127.0.0.6"), false),
            (DebugAccess::Localhost, v4("10.0.0.7"), false),
            (DebugAccess::Localhost, None, false),
            (DebugAccess::Open, v4("10.0.0.7"), true),
            (DebugAccess::Off, v4("127.0.0.1"), false),
        ];
        for (access, peer, want) in cases {
            assert_eq!(
                debug_allowed(access, peer).is_ok(),
                want,
                "{access:?} {peer:?}"
            );
        }
        assert_eq!(
            debug_allowed(DebugAccess::Off, None).unwrap_err().0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            debug_allowed(DebugAccess::Localhost, None).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
    }
}
