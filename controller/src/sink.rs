//! Where decoded edges go: the [`EdgeSink`] seam between the gRPC service and whatever
//! keeps the edges (for now [`MemoryEdgeSink`]; later the workload index).

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lazyxds_proto::v1::NamespaceTable;
use tokio::sync::watch;

use crate::counters::Counters;
use crate::edges::store::{EdgeStore, StoredEdge};
use lazyxds_index::ObservedEdge;

/// Who sent a stream, from its `Hello` and the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayInfo {
    pub gateway_id: String,
    pub worker: String,
    pub resync: bool,
    pub peer: Option<SocketAddr>,
}

/// Receives the edges of every applied batch. Called from async tasks: keep it short
/// and non-blocking (take a lock once per call, not per edge).
pub trait EdgeSink: Send + Sync + 'static {
    /// A stream said hello; `resync` streams re-send the worker's known edges.
    fn hello(&self, gateway: &GatewayInfo);
    /// The edges of one applied batch, before it is acked.
    fn record(&self, gateway: &GatewayInfo, edges: Vec<ObservedEdge>);
    /// The namespace table every stream pushes to its gateway worker right after Hello
    /// and again whenever it changes (`None` until there is one). A sink that knows no
    /// mesh returns `None`: nothing is pushed.
    fn namespace_table(&self) -> Option<watch::Receiver<Option<Arc<NamespaceTable>>>> {
        None
    }
}

/// Keeps edges in an [`EdgeStore`] in memory. With room for no edge it is off: it keeps
/// and counts nothing (where an index keeps what was learned, this store only backs
/// `/debug/edges`, at some 200 bytes per distinct edge).
#[derive(Debug)]
pub struct MemoryEdgeSink {
    state: Mutex<MemoryState>,
    counters: Arc<Counters>,
    off: bool,
}

#[derive(Debug)]
struct MemoryState {
    store: EdgeStore,
    last_drop_log: Option<Instant>,
}

/// A full store drops edges on every batch; say so at most this often.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(60);

impl MemoryEdgeSink {
    pub fn new(max_edges: usize, counters: Arc<Counters>) -> Self {
        MemoryEdgeSink {
            state: Mutex::new(MemoryState {
                store: EdgeStore::new(max_edges),
                last_drop_log: None,
            }),
            counters,
            off: max_edges == 0,
        }
    }

    /// Whether edges are kept at all (`max_edges` > 0).
    pub fn keeps_edges(&self) -> bool {
        !self.off
    }

    /// All learned edges, sorted.
    pub fn snapshot(&self) -> Vec<StoredEdge> {
        self.lock().store.snapshot()
    }

    // A panic elsewhere while holding the lock leaves the store consistent enough
    // (each record is a sequence of independent map updates), so keep serving.
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl EdgeSink for MemoryEdgeSink {
    fn hello(&self, _gateway: &GatewayInfo) {}

    fn record(&self, gateway: &GatewayInfo, edges: Vec<ObservedEdge>) {
        if self.off {
            return;
        }
        let mut state = self.lock();
        let outcome = state.store.record(edges);
        if outcome.dropped == 0 {
            return;
        }
        let total = self
            .counters
            .edges_dropped_store_full
            .fetch_add(outcome.dropped as u64, Relaxed)
            + outcome.dropped as u64;
        let now = Instant::now();
        if state
            .last_drop_log
            .is_none_or(|last| now.duration_since(last) >= DROP_LOG_INTERVAL)
        {
            state.last_drop_log = Some(now);
            let stored = state.store.len();
            drop(state);
            tracing::warn!(
                gateway = %gateway.gateway_id,
                worker = %gateway.worker,
                dropped = outcome.dropped,
                dropped_total = total,
                stored,
                "edge store is full (--max-edges), new edges are dropped"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(ip: [u8; 4]) -> ObservedEdge {
        ObservedEdge {
            source_ip: std::net::IpAddr::from(ip),
            host: Some("api".into()),
            cluster: "outbound|80||api.shop.svc.cluster.local".into(),
            principal: None,
            requests: 1,
            last_seen_unix_s: 1,
        }
    }

    #[test]
    fn full_store_counts_drops_and_no_room_keeps_nothing_quietly() {
        let gateway = GatewayInfo {
            gateway_id: "gw".into(),
            worker: "0".into(),
            resync: false,
            peer: None,
        };
        let counters = Arc::new(Counters::default());
        let one = MemoryEdgeSink::new(1, counters.clone());
        one.record(&gateway, vec![edge([10, 0, 0, 1]), edge([10, 0, 0, 2])]);
        assert_eq!(one.snapshot().len(), 1);
        assert_eq!(counters.snapshot().edges_dropped_store_full, 1);

        let counters = Arc::new(Counters::default());
        let off = MemoryEdgeSink::new(0, counters.clone());
        assert!(!off.keeps_edges());
        off.record(&gateway, vec![edge([10, 0, 0, 1])]);
        assert!(off.snapshot().is_empty());
        assert_eq!(counters.snapshot().edges_dropped_store_full, 0);
    }
}
