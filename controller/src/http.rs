//! The debug and health HTTP server.
//!
//! - `GET /debug/edges`: learned edges and counters as JSON (the end-to-end tests read
//!   this; its shape is [`DebugEdges`]).
//! - `GET /debug/rejections`: rejected batches per reason.
//! - `GET /debug/deps`: learned dependencies per workload (when the index runs).
//! - `GET /debug/plan`: what the Kubernetes writer would change, with diffs, and its
//!   metrics (`run --kube`; the whole plan under `--dry-run`).
//! - `GET /metrics`: Prometheus text ([`crate::metrics`]).
//! - `GET /healthz`: `ok` while the process serves.
//! - `GET /readyz`: `ok`, or 503 with the reason this replica cannot do its job now
//!   ([`crate::ready`]).

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::counters::{Counters, CountersSnapshot};
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
