//! The learning sink: every applied batch goes into the dependency [`Index`]; workloads
//! whose Sidecar changes wake the writer. Also keeps the raw edges for `/debug/edges`.
// Handles input from gateways, files and flags: no panics by construction (as in
// `filter/core`; a stream task that panics anyway is supervised, see `edges::stream`).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use lazyxds_index::{namespace_table, Index, ObservedEdge, RefusedEdge, RenderConfig, WorkloadId};
use lazyxds_proto::v1::NamespaceTable;
use tokio::sync::{watch, Notify};

use crate::edges::StoredEdge;
use crate::http::{DepsView, EdgeView, WorkloadDeps};
use crate::metrics::{register_fields, register_gauges, MetricsSource};
use crate::sink::{EdgeSink, GatewayInfo, MemoryEdgeSink};
use prometheus_client::registry::Registry;

/// Seconds since the epoch: the index's clock (coarse on purpose: last-seen is coarse).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The index behind a lock, plus a wake-up for whoever writes the desired state, and the
/// namespace table gateways get.
#[derive(Debug)]
pub struct Learner {
    index: Mutex<Index>,
    edges: MemoryEdgeSink,
    changed: Notify,
    table: watch::Sender<Option<Arc<NamespaceTable>>>,
    /// When refused edges were last logged (unix seconds): at most one sample a window.
    refused_logged_at: AtomicU64,
}

/// Seconds between two logged samples of refused edges (a hostile or broken client
/// would otherwise fill the log; the counters count every edge).
const REFUSED_LOG_WINDOW_S: u64 = 10;

impl Learner {
    pub fn new(index: Index, edges: MemoryEdgeSink) -> Self {
        Learner {
            index: Mutex::new(index),
            edges,
            changed: Notify::new(),
            table: watch::channel(None).0,
            refused_logged_at: AtomicU64::new(0),
        }
    }

    /// Recomputes the namespace table (pod IPs, namespaces, outbound policies) and
    /// [`publish`](Self::publish)es it.
    pub fn publish_namespace_table(&self, render: &RenderConfig) -> bool {
        let table = namespace_table(&self.index(), render);
        self.publish(table)
    }

    /// Hands the namespace table to every gateway stream if it changed. The loop calls
    /// it on each pass, once the index reflects the mesh (in Kubernetes mode: after the
    /// watches synced).
    pub fn publish(&self, table: NamespaceTable) -> bool {
        let changed = self.table.send_if_modified(|current| {
            if current.as_deref() == Some(&table) {
                return false;
            }
            *current = Some(Arc::new(table));
            true
        });
        if changed {
            let t = self.table.borrow();
            let (namespaces, ips) = t.as_deref().map_or((0, 0), |t| {
                (
                    t.namespaces.len(),
                    t.ipv4.len().saturating_add(t.ipv6.len() / 3),
                )
            });
            tracing::info!(
                namespaces,
                pod_ips = ips,
                "namespace table updated for gateways"
            );
        }
        changed
    }

    /// The index, for reads and for applying watched objects. A panic while holding it
    /// leaves map updates complete enough to keep serving.
    pub fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the writer (after objects changed or time moved deps).
    pub fn mark_changed(&self) {
        self.changed.notify_one();
    }

    /// Resolves when something changed since the last call.
    pub async fn wait_changed(&self) {
        self.changed.notified().await;
    }

    /// Held edges and TTL: call periodically.
    pub fn tick(&self) {
        let (changed, refused) = {
            let mut index = self.index();
            (index.tick(unix_now()), index.take_refused())
        };
        self.log_refused("(held)", &refused);
        if !changed.is_empty() {
            self.mark_changed();
        }
    }

    /// Logs the sample of edges the index refused (a few per batch, one sample per
    /// [`REFUSED_LOG_WINDOW_S`]; the `lazyxds_index_*` counters count every one), naming
    /// what was wrong with each.
    fn log_refused(&self, gateway: &str, refused: &[RefusedEdge]) {
        if refused.is_empty() {
            return;
        }
        let now = unix_now();
        let last = self.refused_logged_at.load(Relaxed);
        if now < last.saturating_add(REFUSED_LOG_WINDOW_S)
            || self
                .refused_logged_at
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_err()
        {
            return;
        }
        for r in refused {
            tracing::warn!(
                gateway,
                source_ip = %r.edge.source_ip,
                host = r.edge.host.as_deref().unwrap_or("-"),
                cluster = &*r.edge.cluster,
                principal = r.edge.principal.as_deref().unwrap_or("-"),
                reason = r.reason,
                "edge refused, not a dependency (one sample per {REFUSED_LOG_WINDOW_S} s; \
                 lazyxds_index_* counters count all)"
            );
        }
    }

    /// Ticks every `period` until the task is aborted.
    pub fn tick_every(self: Arc<Self>, period: std::time::Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(period);
            loop {
                every.tick().await;
                self.tick();
            }
        })
    }
}

impl EdgeSink for Learner {
    fn hello(&self, gateway: &GatewayInfo) {
        self.edges.hello(gateway);
    }

    fn record(&self, gateway: &GatewayInfo, edges: Vec<ObservedEdge>) {
        // Clones are reference counts; the debug store needs its own copy.
        if self.edges.keeps_edges() {
            self.edges.record(gateway, edges.clone());
        }
        let (changed, refused) = {
            let mut index = self.index();
            let changed = index.record_edges(edges, unix_now());
            (changed, index.take_refused())
        };
        self.log_refused(&gateway.gateway_id, &refused);
        if !changed.is_empty() {
            self.mark_changed();
        }
    }

    fn namespace_table(&self) -> Option<watch::Receiver<Option<Arc<NamespaceTable>>>> {
        Some(self.table.subscribe())
    }
}

impl EdgeView for Learner {
    fn edges(&self) -> Vec<StoredEdge> {
        self.edges.snapshot()
    }
}

impl DepsView for Learner {
    fn deps(&self) -> Vec<WorkloadDeps> {
        let index = self.index();
        index
            .workloads_with_deps()
            .into_iter()
            .map(|id: WorkloadId| WorkloadDeps {
                namespace: id.namespace.to_string(),
                workload: format!("{}/{}", id.kind.as_str(), id.name),
                enabled: index.is_enabled(&id),
                deps: index
                    .deps(&id)
                    .into_iter()
                    .map(|(h, t)| (h.to_string(), t))
                    .collect(),
            })
            .collect()
    }
}

/// A learner shared by the gRPC service, the HTTP server and the writer.
pub type SharedLearner = Arc<Learner>;

impl MetricsSource for Learner {
    fn collect(&self, registry: &mut Registry) {
        let index = self.index();
        register_fields(
            registry,
            "index",
            index.counters(),
            &[],
            "dependency index; stuck on the gateway = known_dep_requests / attributed_requests",
        );
        let deps: Vec<_> = index
            .workloads_with_deps()
            .into_iter()
            .map(|id| {
                let n = index.deps(&id).len() as i64;
                let labels = vec![
                    ("namespace".to_string(), id.namespace.to_string()),
                    (
                        "workload".to_string(),
                        format!("{}/{}", id.kind.as_str(), id.name),
                    ),
                ];
                (labels, n)
            })
            .collect();
        drop(index);
        register_gauges(
            registry,
            "workload_deps",
            "learned dependencies per workload",
            deps,
        );
    }
}
